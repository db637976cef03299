"""Which serial ports are boards: USB bridges and native USB by VID/PID, virtual boards included.

A port counts as a board when its USB VID/PID is one of the bridges ESP32
boards carry (CP210x, CH340/CH9102, FTDI) or Espressif's own USB-Serial-JTAG.
Bluetooth serial, modems, on-board UARTs (no USB identity) and anything else
are listed with `--all-ports` only, and never chosen automatically. Running
virtual boards appear as they publish themselves on the virtual USB bus
(auxilio.emulator.usb); for them the URL to open is their rfc2217:// one,
which carries DTR/RTS (a pty cannot).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Any

from auxilio.boards import RESET_USB_JTAG, Board
from auxilio.errors import NotFoundError, UsageError

# (VID, PID) -> bridge family, for the USB-UART bridges found on ESP32 boards.
BRIDGES: dict[tuple[int, int], str] = {
    (0x10C4, 0xEA60): "cp210x",  # Silicon Labs CP2102/CP2102N/CP2104
    (0x10C4, 0xEA70): "cp210x",  # CP2105 (dual)
    (0x10C4, 0xEA71): "cp210x",  # CP2108 (quad)
    (0x1A86, 0x7523): "ch340",  # WCH CH340/CH341
    (0x1A86, 0x7522): "ch340",  # CH340K
    (0x1A86, 0x55D4): "ch9102",  # WCH CH9102F
    (0x1A86, 0x55D3): "ch9102",  # CH343P
    (0x0403, 0x6001): "ftdi",  # FT232R
    (0x0403, 0x6010): "ftdi",  # FT2232H
    (0x0403, 0x6011): "ftdi",  # FT4232H
    (0x0403, 0x6014): "ftdi",  # FT232H
    (0x0403, 0x6015): "ftdi",  # FT231X
    (0x303A, 0x1001): "usb-serial-jtag",  # Espressif ESP32-C3/S3/C6 native USB
}
UART_BRIDGES = ("cp210x", "ch340", "ch9102", "ftdi")
# What to tell someone whose port does not answer, per bridge family.
DRIVER_HINTS = {
    "cp210x": "the CP210x driver (built into Linux as cp210x; Silicon Labs VCP on Windows/macOS)",
    "ch340": "the CH340 driver (ch341 on Linux; WCH's CH34x driver on Windows/macOS)",
    "ch9102": "the CH9102/CH343 driver (cdc_acm on Linux; WCH's CH9102 driver on macOS)",
    "ftdi": "the FTDI driver (ftdi_sio on Linux)",
    "usb-serial-jtag": "nothing extra (cdc_acm on Linux); use a data cable on the chip's own USB port",
}


@dataclass
class Port:
    """One serial port as the tools see it."""

    device: str  # what a person names (/dev/ttyUSB0, a virtual board's pty path)
    url: str  # what esptool/mpremote open (the device, or rfc2217:// for virtual boards)
    vid: int | None = None
    pid: int | None = None
    serial: str = ""
    manufacturer: str = ""
    product: str = ""
    virtual: bool = False
    name: str = ""  # a virtual board's name
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def bridge(self) -> str | None:
        if self.vid is None or self.pid is None:
            return None
        return BRIDGES.get((self.vid, self.pid))

    @property
    def is_board(self) -> bool:
        return self.bridge is not None

    @property
    def usb_id(self) -> str:
        return (
            f"{self.vid:04x}:{self.pid:04x}"
            if self.vid is not None and self.pid is not None
            else ""
        )

    @property
    def key(self) -> str:
        """Stable identity across runs: the USB serial number, else the port."""
        return self.serial or self.device

    def label(self) -> str:
        return f"{self.device} ({self.serial})" if self.serial else self.device

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("extra")
        d["bridge"] = self.bridge
        d["usb_id"] = self.usb_id
        return d

    def matches(self, board: Board) -> bool:
        """Could this port be that board? Native-USB boards need USB-Serial-JTAG; others a bridge."""
        if self.bridge is None:
            return False
        if board.reset_circuit == RESET_USB_JTAG:
            return self.bridge == "usb-serial-jtag"
        return self.bridge in UART_BRIDGES


def _real_ports() -> list[Port]:
    from serial.tools import list_ports

    out = []
    for p in list_ports.comports():
        out.append(
            Port(
                device=p.device,
                url=p.device,
                vid=p.vid,
                pid=p.pid,
                serial=p.serial_number or "",
                manufacturer=p.manufacturer or "",
                product=p.product or p.description or "",
            )
        )
    return out


def _virtual_ports() -> list[Port]:
    from auxilio.emulator.usb import virtual_ports

    return [
        Port(
            device=v.device,
            url=v.url or v.device,
            vid=v.vid,
            pid=v.pid,
            serial=v.serial,
            manufacturer=v.manufacturer,
            product=v.product,
            virtual=True,
            name=v.name,
            extra={"board": v.board},
        )
        for v in virtual_ports()
    ]


def list_ports(all_ports: bool = False) -> list[Port]:
    """Ports that look like boards (all serial ports with all_ports), real then virtual."""
    ports = _real_ports() + _virtual_ports()
    return ports if all_ports else [p for p in ports if p.is_board]


def resolve_port(spec: str, known: list[Port] | None = None) -> Port:
    """A --port value: a device path, a virtual board's pty, an rfc2217:// URL or a serial number."""
    if not spec:
        raise UsageError("empty --port")
    ports = known if known is not None else list_ports(all_ports=True)
    for p in ports:
        if spec in (p.device, p.url, p.serial, p.name) or (
            os.path.exists(spec) and os.path.realpath(spec) == os.path.realpath(p.device)
        ):
            return p
    if spec.startswith(("rfc2217://", "socket://")):
        return Port(device=spec, url=spec)
    if spec.startswith("/") or spec.upper().startswith("COM"):
        if not os.path.exists(spec) and not spec.upper().startswith("COM"):
            raise NotFoundError(
                f"port {spec} does not exist (unplugged? `auxilio ports` lists boards)"
            )
        return Port(device=spec, url=spec)
    raise NotFoundError(f"no port or board serial number {spec!r} (`auxilio ports` lists boards)")


def pick_single(ports: list[Port], what: str = "board") -> Port:
    """The one board port when exactly one is plugged in; otherwise a clear error."""
    if not ports:
        raise NotFoundError(f"no {what} port found: plug a board in (`auxilio ports` lists them)")
    if len(ports) > 1:
        names = ", ".join(p.label() for p in ports)
        raise UsageError(f"several {what}s are plugged in ({names}); choose one with --port")
    return ports[0]
