"""Board definitions (boards/<name>.json): the one loader for flashing, enrolment and the emulator.

A board file is data: chip, flash layout, pins, feedback hardware, role
defaults, and what the host tools need to flash and test it (the USB bridge's
VID/PID, its reset circuit, the flashing baud rate, an optional firmware pin
and the factory-test ranges). The firmware reads the same file as board.json;
`Board.device_data()` is the copy it gets, without the host-only sections.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from typing import Any

from auxilio import partitions
from auxilio.chips import Chip, get_chip
from auxilio.errors import AuxilioError, NotFoundError, UsageError
from auxilio.paths import boards_dir

log = logging.getLogger(__name__)

MIB = 1024 * 1024

# The two reset circuits esptool knows: a USB-UART bridge's DTR/RTS driving IO0/EN
# through two transistors (DevKit boards), or the chip's own USB-Serial-JTAG.
RESET_CLASSIC = "classic"
RESET_USB_JTAG = "usb-serial-jtag"
RESET_CIRCUITS = (RESET_CLASSIC, RESET_USB_JTAG)
# esptool's own default (cmds.write_flash runs at whatever --baud is; 460800 is
# what Espressif's IDF uses for UART bridges).
DEFAULT_FLASH_BAUD = 460800
# Sections of the board file only host tools read; the device's board.json goes
# without them (parsing JSON costs device heap, see firmware/config.py).
HOST_ONLY_KEYS = ("description", "flash", "vfs", "usb", "reset", "firmware", "factory_test")


@dataclass(frozen=True)
class UsbIdentity:
    """How the board shows up on USB: the bridge chip or the native USB peripheral."""

    vid: int
    pid: int
    bridge: str  # "cp210x", "ch340", "ch9102", "ftdi", "usb-serial-jtag"
    manufacturer: str = ""
    product: str = ""


@dataclass
class Board:
    """One board definition, parsed and checked."""

    name: str
    chip: str
    flash_size: int
    partitions: list[partitions.Partition]
    role: str
    data: dict[str, Any] = field(default_factory=dict)  # the whole JSON

    @property
    def vfs(self) -> partitions.Partition:
        return partitions.find(self.partitions, "vfs")

    @property
    def chip_info(self) -> Chip:
        return get_chip(self.chip)

    @property
    def flash(self) -> dict[str, Any]:
        f = self.data.get("flash")
        return f if isinstance(f, dict) else {}

    @property
    def bootloader_offset(self) -> int:
        off = self.flash.get("bootloader_offset")
        return (
            _size(off, "bootloader_offset") if off is not None else self.chip_info.bootloader_offset
        )

    @property
    def factory(self) -> partitions.Partition:
        """The app partition MicroPython boots (factory, else the first app)."""
        apps = [p for p in self.partitions if p.type == partitions.TYPES["app"]]
        for p in apps:
            if p.name == "factory":
                return p
        if not apps:
            raise UsageError(f"board {self.name}: no app partition in its layout")
        return apps[0]

    @property
    def flash_baud(self) -> int:
        return int(self.flash.get("baud") or DEFAULT_FLASH_BAUD)

    @property
    def reset_circuit(self) -> str:
        return str(self.data.get("reset") or RESET_CLASSIC)

    @property
    def usb(self) -> UsbIdentity | None:
        u = self.data.get("usb")
        if not isinstance(u, dict):
            return None
        return UsbIdentity(
            vid=_int(u.get("vid"), "usb.vid"),
            pid=_int(u.get("pid"), "usb.pid"),
            bridge=str(u.get("bridge", "")),
            manufacturer=str(u.get("manufacturer", "")),
            product=str(u.get("product", "")),
        )

    @property
    def firmware_sha256(self) -> str | None:
        """The pinned firmware image hash, when the board file pins one."""
        pin = (self.data.get("firmware") or {}).get("sha256")
        return str(pin).lower() if pin else None

    @property
    def factory_test(self) -> dict[str, Any]:
        ft = self.data.get("factory_test")
        return ft if isinstance(ft, dict) else {}

    @property
    def modem(self) -> dict[str, Any] | None:
        m = self.data.get("modem")
        return m if isinstance(m, dict) else None

    @property
    def roles(self) -> list[str]:
        """The device kinds this board can be (the keys of its `roles` section)."""
        r = self.data.get("roles")
        return sorted(r) if isinstance(r, dict) and r else [self.role]

    def device_data(self) -> dict[str, Any]:
        """The board.json a device gets: this file without the host-only sections."""
        return {k: v for k, v in self.data.items() if k not in HOST_ONLY_KEYS}


def _int(value: Any, what: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        try:
            return int(value, 0)
        except ValueError:
            pass
    raise UsageError(f"board {what} is not a number: {value!r}")


def _size(value: Any, what: str) -> int:
    """Accept 4194304, "0x400000", "4MB", "4MiB"."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        text = value.strip()
        m = re.fullmatch(r"(\d+)\s*(K|M)i?B?", text, re.IGNORECASE)
        if m:
            return int(m.group(1)) * (1024 if m.group(2).upper() == "K" else MIB)
        try:
            return int(text, 0)
        except ValueError:
            pass
    raise UsageError(f"board {what} is not a size: {value!r}")


def _partitions_from(data: dict[str, Any], flash_size: int) -> list[partitions.Partition]:
    """Read the layout from the board file in whichever reasonable shape it uses."""
    layout = data.get("partitions") or (data.get("flash") or {}).get("partitions")
    if isinstance(layout, list) and layout:
        parts = []
        for entry in layout:
            ptype = entry.get("type", "data")
            ptype = partitions.TYPES.get(ptype, ptype) if isinstance(ptype, str) else ptype
            sub = entry.get("subtype", "fat" if ptype == 1 else "factory")
            if isinstance(sub, str):
                sub = partitions.SUBTYPES.get(ptype, {}).get(sub, 0x81)
            parts.append(
                partitions.Partition(
                    str(entry["name"]),
                    int(ptype),
                    int(sub),
                    _size(entry["offset"], "partition offset"),
                    _size(entry["size"], "partition size"),
                )
            )
        return parts
    vfs = data.get("vfs") or (data.get("flash") or {}).get("vfs")
    parts = partitions.micropython_layout(flash_size)
    if isinstance(vfs, dict) and "offset" in vfs:
        off = _size(vfs["offset"], "vfs offset")
        size = _size(vfs.get("size", flash_size - off), "vfs size")
        parts[-1] = partitions.Partition("vfs", 0x01, 0x81, off, size)
    return parts


def board_names() -> list[str]:
    return sorted(p.stem for p in boards_dir().glob("*.json"))


def load_board(name: str) -> Board:
    """The board named `name`; NotFoundError names the known boards."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name or ""):
        raise UsageError(f"board name {name!r} is not valid")
    path = boards_dir() / f"{name}.json"
    if not path.is_file():
        raise NotFoundError(f"unknown board {name!r} (known: {', '.join(board_names())})")
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UsageError(f"board file {path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise UsageError(f"board file {path} must hold a JSON object")
    flash = data.get("flash")
    raw_size = data.get("flash_size") or (
        (flash.get("size_bytes") or flash.get("size")) if isinstance(flash, dict) else flash
    )
    if not raw_size:
        raise UsageError(f"board {name}: flash size missing")
    flash_size = _size(raw_size, "flash size")
    board = Board(
        name=name,
        chip=str(data.get("chip", "esp32")),
        flash_size=flash_size,
        partitions=_partitions_from(data, flash_size),
        role=str(data.get("role") or (data.get("defaults") or {}).get("role") or "bracelet"),
        data=data,
    )
    try:
        get_chip(board.chip)
    except AuxilioError as exc:
        raise UsageError(f"board {name}: {exc}") from None
    if board.reset_circuit not in RESET_CIRCUITS:
        raise UsageError(
            f"board {name}: reset must be one of {', '.join(RESET_CIRCUITS)}, "
            f"not {board.reset_circuit!r}"
        )
    vfs = board.vfs
    if vfs.offset + vfs.size > flash_size:
        raise UsageError(f"board {name}: vfs partition runs past the end of flash")
    _ = board.usb  # parse it now: a bad VID/PID is an error at load, not mid-flash
    return board


def board_for(name: str, kind: str) -> Board:
    """The board `name` checked for a device of `kind` (enrolment, import, fleets).

    NotFoundError for a board that is not in boards/ (naming the known ones),
    UsageError for one that cannot be that kind of device (a bracelet on the
    street button's board would run with the button's gesture and feedback).
    """
    board = load_board(name)
    if kind not in board.roles:
        raise UsageError(
            f"board {name} is for a {' or '.join(board.roles)}, not a {kind} "
            f"(boards for a {kind}: {', '.join(boards_with_role(kind)) or 'none'})"
        )
    return board


def boards_with_role(kind: str) -> list[str]:
    """Names of the boards in boards/ that can be this kind of device."""
    out = []
    for name in board_names():
        try:
            if kind in load_board(name).roles:
                out.append(name)
        except AuxilioError:
            continue  # a broken board file is reported where it is named
    return out
