"""ESP32 firmware images: parse and check them, and build synthetic MicroPython-like ones.

The format is ESP-IDF's app image format (docs: api-reference/system/app_image_format):
a 24-byte header (8 common + 16 extended, with the chip id), segments of
(load address, length, data), 0-15 bytes of padding and a one-byte XOR
checksum so the length is a multiple of 16, then an optional SHA-256 of all
of that. An app's first flash-mapped data segment starts with esp_app_desc_t
(magic 0xABCD5432: version, project name, build time, IDF version); a
bootloader's first DRAM segment starts with esp_bootloader_desc_t (magic 0x50).

MicroPython's ESP32 downloads are one merged file flashed at the chip's
bootloader offset: bootloader, the partition table at 0x8000 and the app at the
factory partition, 0xFF in between. `check_firmware` validates such a file
against a board before any board is touched; `build_firmware` makes one (no
download is possible here, and tests need one per chip that `esptool
image-info` accepts).
"""

from __future__ import annotations

import hashlib
import random
import struct
import subprocess
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING

from auxilio import partitions
from auxilio.chips import (
    BY_IMAGE_ID,
    ESP_CHECKSUM_MAGIC,
    ESP_IMAGE_MAGIC,
    PARTITION_TABLE_OFFSET,
    Chip,
    chip_title,
    get_chip,
)
from auxilio.errors import UsageError
from auxilio.paths import find_micropython

if TYPE_CHECKING:
    from auxilio.boards import Board

_COMMON = struct.Struct("<BBBBI")  # magic, segment count, flash mode, size|freq, entry
_EXTENDED = struct.Struct(
    "<BBBBHBHH4sB"
)  # wp pin, 3x drive, chip id, min rev, min/max full, _, hash
_SEGMENT = struct.Struct("<II")  # load address, length
HEADER_LEN = _COMMON.size + _EXTENDED.size  # 24
SHA256_LEN = 32
MAX_SEGMENTS = 16  # the ROM and the bootloader refuse more
APP_DESC_MAGIC = 0xABCD5432  # esp_app_desc_t.magic_word
BOOTLOADER_DESC_MAGIC = 0x50  # esp_bootloader_desc_t.magic_byte
# esp_app_desc_t: magic, secure_version, reserved[2], version[32], project_name[32],
# time[16], date[16], idf_ver[32], app_elf_sha256[32], min/max efuse blk rev, mmu page, ...
_APP_DESC = struct.Struct("<II8s32s32s16s16s32s32sHHB3s72s")  # 256 bytes
# esp_bootloader_desc_t: magic, reserved[3], version, idf_ver[32], date_time[24], reserved[16]
_BOOT_DESC = struct.Struct("<B3sI32s24s16s")  # 80 bytes
WP_PIN_DISABLED = 0xEE  # the ROM skips the WP pin when the header says 0xEE
FLASH_MODE_DIO = 2  # header byte 2: QIO 0, QOUT 1, DIO 2, DOUT 3
FLASH_SIZE_CODES = {1 << 20: 0x00, 2 << 20: 0x10, 4 << 20: 0x20, 8 << 20: 0x30, 16 << 20: 0x40}
FLASH_FREQ_40M = 0x0  # low nibble of header byte 3
MMU_PAGE = 0x10000  # flash-mapped segments sit at file offset == address (mod 64 KB)
# Tunables of the synthetic images (sizes of the filler "code" and "data").
SYNTH_BOOTLOADER_CODE = 12 * 1024
SYNTH_APP_CODE = 48 * 1024
SYNTH_IDF_VERSION = "v5.2.2"  # what MicroPython 1.2x release builds use
SYNTH_PROJECT = "micropython"


class ImageError(UsageError):
    """A firmware file or flash region that is not a valid image; str() is one line."""


@dataclass
class Segment:
    addr: int
    offset: int  # of the data, from the image start
    data: bytes = field(repr=False)


@dataclass
class EspImage:
    """One parsed image (bootloader or app)."""

    chip_id: int
    entry: int
    flash_mode: int
    flash_size_freq: int
    segments: list[Segment]
    length: int  # bytes from the image start up to and including the SHA-256 (if any)
    hash_appended: bool
    app: dict[str, str] | None = None  # esp_app_desc_t fields
    bootloader: dict[str, str] | None = None  # esp_bootloader_desc_t fields

    @property
    def chip(self) -> str:
        return chip_title(self.chip_id)

    @property
    def version(self) -> str | None:
        return (self.app or {}).get("version")


def _cstr(raw: bytes) -> str:
    return raw.split(b"\x00", 1)[0].decode("utf-8", "replace")


def _xor(data: bytes, state: int) -> int:
    # XOR folds to a byte: fold the buffer as big integers, 8 bytes at a time is slow in
    # Python, so reduce with int.from_bytes over the whole buffer instead.
    if not data:
        return state
    n = int.from_bytes(data, "little")
    while n > 0xFF:
        width = (n.bit_length() + 7) // 8
        half = (width // 2) * 8
        n = (n >> half) ^ (n & ((1 << half) - 1))
    return state ^ n


def checksum(data: bytes, state: int = ESP_CHECKSUM_MAGIC) -> int:
    """The ROM's XOR checksum (esptool ESPLoader.checksum), used by images and the protocol."""
    return _xor(data, state)


def parse_image(buf: bytes | memoryview, what: str = "image") -> EspImage:
    """Parse and verify one image at the start of buf; ImageError says what is wrong."""
    buf = memoryview(buf)
    if len(buf) < HEADER_LEN:
        raise ImageError(f"{what} is truncated ({len(buf)} bytes, no image header)")
    magic, nseg, mode, size_freq, entry = _COMMON.unpack_from(buf, 0)
    if magic != ESP_IMAGE_MAGIC:
        raise ImageError(
            f"{what} has invalid magic byte {magic:#04x} (expected {ESP_IMAGE_MAGIC:#x})"
        )
    ext = _EXTENDED.unpack_from(buf, _COMMON.size)
    chip_id, hash_flag = ext[4], ext[-1]
    if hash_flag not in (0, 1):
        raise ImageError(f"{what} has an invalid extended header (hash flag {hash_flag})")
    if not 0 < nseg <= MAX_SEGMENTS:
        raise ImageError(f"{what} has {nseg} segments (1..{MAX_SEGMENTS} allowed)")
    pos = HEADER_LEN
    segments = []
    state = ESP_CHECKSUM_MAGIC
    for i in range(nseg):
        if pos + _SEGMENT.size > len(buf):
            raise ImageError(f"{what} is truncated in the header of segment {i}")
        addr, length = _SEGMENT.unpack_from(buf, pos)
        pos += _SEGMENT.size
        if pos + length > len(buf):
            raise ImageError(f"{what} is truncated in segment {i} ({length} bytes at {addr:#x})")
        data = bytes(buf[pos : pos + length])
        segments.append(Segment(addr, pos, data))
        state = checksum(data, state)
        pos += length
    pos += 15 - (pos % 16)  # padding so that the checksum byte ends a 16-byte block
    if pos >= len(buf):
        raise ImageError(f"{what} is truncated before its checksum")
    if buf[pos] != state:
        raise ImageError(f"{what} checksum failed (calculated {state:#04x}, read {buf[pos]:#04x})")
    pos += 1
    if hash_flag:
        if pos + SHA256_LEN > len(buf):
            raise ImageError(f"{what} is truncated before its SHA-256")
        if hashlib.sha256(buf[:pos]).digest() != bytes(buf[pos : pos + SHA256_LEN]):
            raise ImageError(f"{what} hash failed: the image is corrupt")
        pos += SHA256_LEN
    img = EspImage(chip_id, entry, mode, size_freq, segments, pos, bool(hash_flag))
    chip = BY_IMAGE_ID.get(chip_id)
    for seg in segments:
        if chip and chip.drom[0] <= seg.addr < chip.drom[1] and img.app is None:
            img.app = _app_desc(seg.data)
            break
    if img.app is None and chip is not None:
        for seg in segments:
            if chip.dram[0] <= seg.addr < chip.dram[1]:
                img.bootloader = _boot_desc(seg.data)
                break
    return img


def _app_desc(data: bytes) -> dict[str, str] | None:
    if len(data) < _APP_DESC.size:
        return None
    f = _APP_DESC.unpack_from(data, 0)
    if f[0] != APP_DESC_MAGIC:
        return None
    return {
        "version": _cstr(f[3]),
        "project": _cstr(f[4]),
        "time": _cstr(f[5]),
        "date": _cstr(f[6]),
        "idf": _cstr(f[7]),
        "elf_sha256": f[8].hex(),
    }


def _boot_desc(data: bytes) -> dict[str, str] | None:
    if len(data) < _BOOT_DESC.size or data[0] != BOOTLOADER_DESC_MAGIC:
        return None
    f = _BOOT_DESC.unpack_from(data, 0)
    return {"version": str(f[2]), "idf": _cstr(f[3]), "date_time": _cstr(f[4])}


# -- whole firmware files -------------------------------------------------------


@dataclass
class FirmwareInfo:
    """A merged firmware file checked against a board: what `auxilio flash` writes."""

    data: bytes = field(repr=False)
    sha256: str
    offset: int  # where it goes: the chip's bootloader offset
    chip: str
    version: str | None
    bootloader: EspImage
    app: EspImage
    table: list[partitions.Partition] = field(default_factory=list)

    @property
    def size(self) -> int:
        return len(self.data)


def check_firmware(board: Board, data: bytes, name: str = "firmware") -> FirmwareInfo:
    """Validate a merged image for `board` before touching any board; ImageError if not."""
    chip = board.chip_info
    boot = board.bootloader_offset
    if not data:
        raise ImageError(f"{name} is empty")
    if data[0] != ESP_IMAGE_MAGIC:
        raise ImageError(
            f"{name} is not an ESP32 firmware image (first byte {data[0]:#04x}, expected {ESP_IMAGE_MAGIC:#x})"
        )
    first = parse_image(data, name)
    if first.app is not None:
        raise ImageError(
            f"{name} is an app image only; give the merged firmware (bootloader, partition "
            "table and app, as micropython.org ships it)"
        )
    if first.chip_id != chip.image_chip_id:
        raise ImageError(
            f"{name} is built for {first.chip}, but {board.name} has an {chip.title}: wrong image"
        )
    if len(data) + boot > board.flash_size:
        raise ImageError(
            f"{name} is {len(data)} bytes: too large for {board.name}'s "
            f"{board.flash_size // (1 << 20)} MB flash at {boot:#x}"
        )
    pt_at = PARTITION_TABLE_OFFSET - boot
    try:
        table = partitions.parse_table(data[pt_at : pt_at + partitions.TABLE_MAX_LEN])
    except UsageError as exc:
        raise ImageError(
            f"{name}: no valid partition table at {PARTITION_TABLE_OFFSET:#x} ({exc})"
        ) from None
    for want in (board.vfs, board.factory):
        got = next((p for p in table if p.name == want.name), None)
        if got is None or (got.offset, got.size) != (want.offset, want.size):
            raise ImageError(
                f"{name}: its partition table does not match {board.name}'s layout "
                f"({want.name} at {want.offset:#x}, {want.size:#x} bytes)"
            )
    app_at = board.factory.offset - boot
    app = parse_image(memoryview(data)[app_at:], f"{name}'s app at {board.factory.offset:#x}")
    if app.chip_id != chip.image_chip_id:
        raise ImageError(f"{name}'s app is built for {app.chip}, not {chip.title}")
    if app.length > board.factory.size:
        raise ImageError(f"{name}'s app ({app.length} bytes) does not fit the factory partition")
    digest = hashlib.sha256(data).hexdigest()
    pin = board.firmware_sha256
    if pin and pin != digest:
        raise ImageError(
            f"{name} has sha256 {digest[:16]}..., but boards/{board.name}.json pins {pin[:16]}..."
        )
    return FirmwareInfo(data, digest, boot, chip.title, app.version, first, app, table)


def read_firmware(board: Board, path: str) -> FirmwareInfo:
    """Read and check a firmware file; a missing or unreadable file is one clear line."""
    from pathlib import Path

    from auxilio.errors import read_input

    data = read_input(path, "firmware file", ImageError)
    return check_firmware(board, data, Path(path).name)


# -- synthetic images -------------------------------------------------------------


@lru_cache(maxsize=1)
def micropython_version() -> str:
    """The version the local unix port prints in its banner (what a virtual board reports)."""
    exe = find_micropython()
    if exe:
        try:
            out = subprocess.run(
                [exe, "-c", "import sys; print(sys.version)"],
                capture_output=True,
                text=True,
                timeout=30,
            ).stdout
            # "3.4.0; MicroPython v1.24.0 on 2024-10-25" -> "v1.24.0"
            parts = out.split("MicroPython", 1)
            if len(parts) == 2 and parts[1].split():
                return parts[1].split()[0]
        except (OSError, subprocess.SubprocessError):
            pass
    return "v1.24.0"


def _filler(seed: str, size: int, compressible: float = 0.5) -> bytes:
    """Deterministic bytes that compress about like machine code (seeded by name)."""
    rnd = random.Random(seed)
    out = bytearray()
    while len(out) < size:
        if rnd.random() < compressible:
            out += bytes([rnd.randrange(4)]) * rnd.randrange(4, 24)  # zeroed/padded runs
        else:
            out += rnd.randbytes(rnd.randrange(8, 48))  # dense instruction-like bytes
    return bytes(out[:size])


def _image(chip: Chip, entry: int, segments: list[tuple[int, bytes]], flash_size: int) -> bytes:
    """Serialize an image: headers, segments in order, checksum, SHA-256 (always appended)."""
    out = bytearray(
        _COMMON.pack(
            ESP_IMAGE_MAGIC,
            len(segments),
            FLASH_MODE_DIO,
            FLASH_SIZE_CODES.get(flash_size, 0x20) | FLASH_FREQ_40M,
            entry,
        )
    )
    out += _EXTENDED.pack(
        WP_PIN_DISABLED, 0, 0, 0, chip.image_chip_id, 0, 0, 0xFFFF, b"\x00" * 4, 1
    )
    state = ESP_CHECKSUM_MAGIC
    for addr, data in segments:
        if len(data) % 4:
            data += b"\x00" * (4 - len(data) % 4)  # segments are word aligned
        out += _SEGMENT.pack(addr, len(data)) + data
        state = checksum(data, state)
    out += b"\x00" * (15 - len(out) % 16)
    out.append(state)
    out += hashlib.sha256(out).digest()
    return bytes(out)


def build_bootloader(chip: Chip | str, flash_size: int = 4 << 20) -> bytes:
    """A second-stage bootloader image: bootloader description + DRAM data + IRAM code."""
    chip = get_chip(chip) if isinstance(chip, str) else chip
    desc = _BOOT_DESC.pack(
        BOOTLOADER_DESC_MAGIC,
        b"\x00" * 3,
        1,
        SYNTH_IDF_VERSION.encode(),
        b"Jun  2 2024 00:00:00",
        b"\x00" * 16,
    )
    dram = chip.dram[0] + 0x4000
    iram = chip.iram[0] + 0x8000
    segs = [
        (dram, desc + _filler(chip.name + "bl-data", 1024)),
        (iram, _filler(chip.name + "bl-code", SYNTH_BOOTLOADER_CODE)),
    ]
    return _image(chip, iram + 0x100, segs, flash_size)


def build_app(
    chip: Chip | str,
    version: str | None = None,
    code_size: int = SYNTH_APP_CODE,
    project: str = SYNTH_PROJECT,
    flash_size: int = 4 << 20,
    seed: str = "",
) -> bytes:
    """A MicroPython-like app image: app description in DROM, RAM segments, IROM code."""
    chip = get_chip(chip) if isinstance(chip, str) else chip
    version = version or micropython_version()
    desc = _APP_DESC.pack(
        APP_DESC_MAGIC,
        0,
        b"\x00" * 8,
        version.encode()[:31],
        project.encode()[:31],
        b"00:00:00",
        b"Jun  2 2024",
        SYNTH_IDF_VERSION.encode(),
        hashlib.sha256((chip.name + version + seed).encode()).digest(),
        0,
        0xFFFF,
        16,  # mmu_page_size: log2(64 KB)
        b"\x00" * 3,
        b"\x00" * 72,
    )
    tag = chip.name + version + seed
    drom = desc + _filler(tag + "rodata", code_size // 4)
    dram = _filler(tag + "data", 2048)
    iram = _filler(tag + "iram", 8192)
    code = _filler(tag + "text", code_size)
    # Flash-mapped segments must sit at file offset == address (mod 64 KB): the
    # first one right after the headers (+0x20), the code on a later page.
    pos = HEADER_LEN
    drom_addr = chip.drom[0] + pos + _SEGMENT.size
    pos += _SEGMENT.size + len(drom) + _SEGMENT.size + len(dram) + _SEGMENT.size + len(iram)
    irom_addr = chip.irom[0] + MMU_PAGE * (1 + pos // MMU_PAGE) + (pos + _SEGMENT.size) % MMU_PAGE
    segs = [
        (drom_addr, drom),
        (chip.dram[0] + 0x8000, dram),
        (chip.iram[0] + 0x10000, iram),
        (irom_addr, code),
    ]
    return _image(chip, chip.iram[0] + 0x10100, segs, flash_size)


@dataclass
class Firmware:
    """The parts of a synthetic MicroPython build for one board, and the merged file."""

    bootloader: bytes
    partition_table: bytes
    app: bytes
    merged: bytes
    offset: int  # where `merged` is flashed


def build_firmware(
    board: Board,
    version: str | None = None,
    code_size: int = SYNTH_APP_CODE,
    chip: str | None = None,
    seed: str = "",
) -> Firmware:
    """Bootloader + the board's partition table + app, and the merged image (like a download).

    `chip` builds for another chip than the board's (a wrong image, for tests).
    """
    c = get_chip(chip) if chip else board.chip_info
    boot = board.bootloader_offset
    bl = build_bootloader(c, board.flash_size)
    table = partitions.build_table(board.partitions)
    app = build_app(c, version, code_size, flash_size=board.flash_size, seed=seed)
    merged = bytearray(b"\xff" * (board.factory.offset - boot))
    merged[0 : len(bl)] = bl
    merged[PARTITION_TABLE_OFFSET - boot : PARTITION_TABLE_OFFSET - boot + len(table)] = table
    merged += app
    return Firmware(bl, table, app, bytes(merged), boot)


# -- what a board's boot path checks in its flash --------------------------------


@dataclass
class BootCheck:
    """What the ROM and the 2nd-stage bootloader find in a flash image."""

    ok: bool
    lines: list[str]  # what the chip prints (loads on success, errors on failure)
    rom_ok: bool = True  # False: the ROM itself found no bootloader ("invalid header")
    vfs: partitions.Partition | None = None
    app: EspImage | None = None


def boot_check(flash: bytes | memoryview, chip: Chip, flash_size: int) -> BootCheck:
    """Follow the boot path: bootloader at the chip's offset, table at 0x8000, app, vfs.

    The messages are the ones ESP-IDF's bootloader prints for each failure.
    """
    flash = memoryview(flash)
    boot = chip.bootloader_offset
    head = bytes(flash[boot : boot + 4])
    if not head or head[0] != ESP_IMAGE_MAGIC:
        word = int.from_bytes(head.ljust(4, b"\xff"), "little")
        return BootCheck(False, [f"invalid header: 0x{word:08x}"], rom_ok=False)
    try:
        bl = parse_image(flash[boot:PARTITION_TABLE_OFFSET], "bootloader")
    except ImageError:
        word = int.from_bytes(head, "little")
        return BootCheck(False, [f"invalid header: 0x{word:08x}"], rom_ok=False)
    if bl.chip_id != chip.image_chip_id:
        return BootCheck(
            False,
            [
                f"E (0) boot_comm: mismatch chip ID, expected {chip.image_chip_id}, found {bl.chip_id}"
            ],
            rom_ok=False,
        )
    lines = list(chip.pre_load_lines)
    lines += [chip.load_line.format(addr=s.addr, size=len(s.data)) for s in bl.segments]
    lines.append(f"entry 0x{bl.entry:08x}")
    try:
        table = partitions.parse_table(
            bytes(flash[PARTITION_TABLE_OFFSET : PARTITION_TABLE_OFFSET + partitions.TABLE_MAX_LEN])
        )
    except UsageError:
        return BootCheck(
            False,
            lines
            + [
                "E (56) flash_parts: partition 0 invalid magic number 0xffff",
                "E (56) boot: Failed to verify partition table",
                "E (61) boot: load partition table error!",
            ],
        )
    apps = [p for p in table if p.type == partitions.TYPES["app"]]
    app_part = next((p for p in apps if p.name == "factory"), apps[0] if apps else None)
    if app_part is None or app_part.offset + app_part.size > flash_size:
        return BootCheck(
            False, lines + ["E (70) boot: No bootable app partitions in the partition table"]
        )
    at = app_part.offset
    first = bytes(flash[at : at + 1])
    if not first or first[0] != ESP_IMAGE_MAGIC:
        return BootCheck(
            False,
            lines
            + [
                f"E (79) esp_image: image at 0x{at:x} has invalid magic byte (nothing flashed here?)",
                "E (86) boot: Factory app partition is not bootable",
                "E (91) boot: No bootable app partitions in the partition table",
            ],
        )
    try:
        app = parse_image(flash[at : at + app_part.size], f"image at 0x{at:x}")
    except ImageError as exc:
        return BootCheck(
            False,
            lines
            + [
                f"E (79) esp_image: {exc}",
                "E (86) boot: Factory app partition is not bootable",
                "E (91) boot: No bootable app partitions in the partition table",
            ],
        )
    if app.chip_id != chip.image_chip_id:
        return BootCheck(
            False,
            lines
            + [
                f"E (79) boot_comm: mismatch chip ID, expected {chip.image_chip_id}, found {app.chip_id}",
                "E (86) boot: Factory app partition is not bootable",
            ],
        )
    vfs = next((p for p in table if p.name == "vfs"), None)
    if vfs is None or vfs.offset + vfs.size > flash_size:
        return BootCheck(
            False,
            lines + ["E (120) boot: no 'vfs' partition for the MicroPython filesystem"],
            app=app,
        )
    return BootCheck(True, lines, vfs=vfs, app=app)


def main(argv: list[str] | None = None) -> int:
    """`python -m auxilio.flash.images BOARD OUT`: write a synthetic merged image for BOARD."""
    import argparse
    import sys

    from auxilio.boards import load_board
    from auxilio.errors import AuxilioError

    p = argparse.ArgumentParser(
        prog="python -m auxilio.flash.images",
        description="a MicroPython-like merged image (bootloader, table, app) for virtual boards",
    )
    p.add_argument("board", help="board name in boards/")
    p.add_argument("out", help="file to write")
    p.add_argument(
        "--version",
        help="app version (default: the local micropython's, as a virtual board reports)",
    )
    p.add_argument("--chip", help="build for another chip (a wrong image, for tests)")
    args = p.parse_args(argv)
    try:
        fw = build_firmware(load_board(args.board), version=args.version, chip=args.chip)
    except AuxilioError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return exc.exit_code
    with open(args.out, "wb") as f:
        f.write(fw.merged)
    print(f"{args.out}: {len(fw.merged)} bytes for {args.board}, flash at {fw.offset:#x}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
