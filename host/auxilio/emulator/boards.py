"""Board definitions for virtual boards: boards/<name>.json, with fallbacks until it exists."""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from typing import Any

from auxilio.emulator import partitions
from auxilio.errors import NotFoundError, UsageError
from auxilio.paths import boards_dir

log = logging.getLogger(__name__)

MIB = 1024 * 1024

# Used only while boards/<name>.json is missing (the firmware data is authoritative).
FALLBACK_BOARDS: dict[str, dict[str, Any]] = {
    "bracelet-c3": {"chip": "esp32c3", "flash_size": 4 * MIB, "role": "bracelet"},
    "button-s3": {"chip": "esp32s3", "flash_size": 8 * MIB, "role": "button"},
    "devkit-esp32": {"chip": "esp32", "flash_size": 4 * MIB, "role": "bracelet"},
}


@dataclass
class Board:
    """What the emulator needs from a board definition."""

    name: str
    chip: str
    flash_size: int
    partitions: list[partitions.Partition]
    role: str
    data: dict[str, Any] = field(default_factory=dict)  # the whole JSON, copied to board.json

    @property
    def vfs(self) -> partitions.Partition:
        return partitions.find(self.partitions, "vfs")


def _size(value: Any, what: str) -> int:
    """Accept 4194304, "0x400000", "4MB", "4MiB"."""
    if isinstance(value, int):
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


def load_board(name: str) -> Board:
    """The board named `name`; NotFoundError names the known boards."""
    path = boards_dir() / f"{name}.json"
    if path.is_file():
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise UsageError(f"board file {path} is not valid JSON: {exc}") from None
    elif name in FALLBACK_BOARDS:
        log.info("boards/%s.json not found; using emulator defaults", name)
        data = dict(FALLBACK_BOARDS[name], name=name)
    else:
        known = sorted({p.stem for p in boards_dir().glob("*.json")} | set(FALLBACK_BOARDS))
        raise NotFoundError(f"unknown board {name!r} (known: {', '.join(known)})")
    flash = data.get("flash")
    flash_size = _size(
        data.get("flash_size") or (flash.get("size") if isinstance(flash, dict) else flash) or 0,
        "flash_size",
    )
    if not flash_size:
        flash_size = FALLBACK_BOARDS.get(name, {}).get("flash_size", 4 * MIB)
    parts = _partitions_from(data, flash_size)
    board = Board(
        name=name,
        chip=str(data.get("chip", "esp32")),
        flash_size=flash_size,
        partitions=parts,
        role=str(data.get("role") or (data.get("defaults") or {}).get("role") or "bracelet"),
        data=data,
    )
    vfs = board.vfs
    if vfs.offset + vfs.size > flash_size:
        raise UsageError(f"board {name}: vfs partition runs past the end of flash")
    return board
