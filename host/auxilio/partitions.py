"""ESP32 partition tables in the binary format of esptool's gen_esp32part.py."""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

from auxilio.errors import UsageError

# Where the ESP-IDF bootloader looks for the table (CONFIG_PARTITION_TABLE_OFFSET).
TABLE_OFFSET = 0x8000
# The table may span at most this many bytes (gen_esp32part MAX_PARTITION_LENGTH).
TABLE_MAX_LEN = 0xC00
# One entry: magic, type, subtype, offset, size, label[16], flags (little endian).
_ENTRY = struct.Struct("<2sBBLL16sL")
ENTRY_LEN = _ENTRY.size  # 32 bytes
MAGIC = b"\xaa\x50"  # 0x50AA little endian: a partition entry
MD5_MAGIC = b"\xeb\xeb" + b"\xff" * 14  # an MD5 entry: 16 magic bytes then the digest

TYPES = {"app": 0x00, "data": 0x01}
SUBTYPES = {
    0x00: {"factory": 0x00, "ota_0": 0x10, "ota_1": 0x11, "test": 0x20},
    0x01: {
        "ota": 0x00,
        "phy": 0x01,
        "nvs": 0x02,
        "coredump": 0x03,
        "nvs_keys": 0x04,
        "efuse": 0x05,
        "undefined": 0x06,
        "esphttpd": 0x80,
        "fat": 0x81,
        "spiffs": 0x82,
        "littlefs": 0x83,
    },
}

# MicroPython's ESP32 layouts (ports/esp32/partitions-4MiB.csv, -8MiB.csv): the
# filesystem partition is "vfs", data/fat, right after a 0x1F0000 factory app.
_VFS_OFFSET = 0x200000


@dataclass(frozen=True)
class Partition:
    name: str
    type: int
    subtype: int
    offset: int
    size: int
    flags: int = 0


def micropython_layout(flash_size: int) -> list[Partition]:
    """The partition list MicroPython's ESP32 port uses for this flash size."""
    if flash_size <= _VFS_OFFSET:
        raise UsageError(f"flash size {flash_size:#x} is too small for MicroPython's layout")
    return [
        Partition("nvs", 0x01, 0x02, 0x9000, 0x6000),
        Partition("phy_init", 0x01, 0x01, 0xF000, 0x1000),
        Partition("factory", 0x00, 0x00, 0x10000, 0x1F0000),
        Partition("vfs", 0x01, 0x81, _VFS_OFFSET, flash_size - _VFS_OFFSET),
    ]


def build_table(parts: list[Partition]) -> bytes:
    """Binary table + MD5 entry, padded with 0xFF to TABLE_MAX_LEN (as gen_esp32part)."""
    body = b""
    for p in parts:
        label = p.name.encode()
        if len(label) > 16:
            raise UsageError(f"partition label too long: {p.name}")
        body += _ENTRY.pack(MAGIC, p.type, p.subtype, p.offset, p.size, label, p.flags)
    body += MD5_MAGIC + hashlib.md5(body).digest()
    if len(body) > TABLE_MAX_LEN - ENTRY_LEN:
        raise UsageError("partition table too long")
    return body + b"\xff" * (TABLE_MAX_LEN - len(body))


def parse_table(data: bytes) -> list[Partition]:
    """Parse and verify a binary table; raises UsageError when it is not a valid one."""
    parts: list[Partition] = []
    for pos in range(0, min(len(data), TABLE_MAX_LEN), ENTRY_LEN):
        entry = data[pos : pos + ENTRY_LEN]
        if len(entry) < ENTRY_LEN or entry == b"\xff" * ENTRY_LEN:
            break
        if entry[:16] == MD5_MAGIC:
            if hashlib.md5(data[:pos]).digest() != entry[16:]:
                raise UsageError("partition table MD5 does not match")
            return _checked(parts)
        magic, ptype, subtype, offset, size, label, flags = _ENTRY.unpack(entry)
        if magic != MAGIC:
            raise UsageError(f"no partition table entry at {TABLE_OFFSET + pos:#x}")
        name = label.rstrip(b"\x00").decode(errors="replace")
        parts.append(Partition(name, ptype, subtype, offset, size, flags))
    return _checked(parts)


def _checked(parts: list[Partition]) -> list[Partition]:
    if not parts:
        raise UsageError(f"no partition table at {TABLE_OFFSET:#x}")
    return parts


def find(parts: list[Partition], name: str) -> Partition:
    for p in parts:
        if p.name == name:
            return p
    raise UsageError(f"no {name!r} partition in the partition table")
