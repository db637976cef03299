"""Firmware images: synthetic builds esptool accepts, and every refusal before a board is touched."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
from auxilio.boards import load_board
from auxilio.flash import images
from auxilio.flash.images import ImageError, boot_check, build_firmware, check_firmware

ESPTOOL = str(Path(sys.executable).parent / "esptool")
BOARDS = ("devkit-esp32", "bracelet-c3", "button-s3")


@pytest.mark.parametrize("name", BOARDS)
def test_synthetic_images_are_what_esptool_image_info_accepts(name: str, tmp_path: Path) -> None:
    board = load_board(name)
    fw = build_firmware(board, version="v1.24.0")
    for part, data in (("bootloader", fw.bootloader), ("app", fw.app)):
        path = tmp_path / f"{part}.bin"
        path.write_bytes(data)
        out = subprocess.run(
            [ESPTOOL, "image-info", str(path)], capture_output=True, text=True, timeout=60
        )
        assert out.returncode == 0, out.stdout + out.stderr
        assert f"Chip ID: {board.chip_info.image_chip_id} ({board.chip_info.title})" in out.stdout
        assert "Checksum:" in out.stdout and "(valid)" in out.stdout
        assert "Validation hash:" in out.stdout and "invalid" not in out.stdout
    info = check_firmware(board, fw.merged)
    assert (info.chip, info.version, info.offset) == (
        board.chip_info.title,
        "v1.24.0",
        board.bootloader_offset,
    )
    assert info.sha256 == hashlib.sha256(fw.merged).hexdigest()
    # The merged file lays the parts out where the board's flash expects them.
    assert (
        fw.merged[0x8000 - fw.offset : 0x8000 - fw.offset + len(fw.partition_table)]
        == fw.partition_table
    )
    assert fw.merged[board.factory.offset - fw.offset :] == fw.app


def test_checksum_is_the_rom_xor() -> None:
    data = bytes(range(256)) * 3 + b"\x5a"
    want = 0xEF
    for b in data:
        want ^= b
    assert images.checksum(data) == want


def _corrupt(data: bytes, at: int) -> bytes:
    b = bytearray(data)
    b[at] ^= 0x01
    return bytes(b)


def test_refusals_name_the_problem() -> None:
    c3 = load_board("bracelet-c3")
    fw = build_firmware(c3).merged
    cases = {
        "empty": (b"", "empty"),
        "not an image": (b"\x00" * 64, "not an ESP32 firmware image"),
        "wrong chip": (build_firmware(c3, chip="esp32s3").merged, "built for ESP32-S3"),
        "app only": (build_firmware(c3).app, "app image only"),
        "truncated": (fw[: len(fw) - 100], "truncated"),
        "corrupt app": (_corrupt(fw, c3.factory.offset + 0x200), "checksum failed"),
        "too large": (fw + b"\xff" * c3.flash_size, "too large"),
    }
    for what, (data, message) in cases.items():
        with pytest.raises(ImageError, match=message):
            check_firmware(c3, data, what)


def test_partition_table_must_match_the_board(tmp_path: Path) -> None:
    # An S3 image built for an 8 MB layout does not fit a board whose vfs is elsewhere.
    s3 = load_board("button-s3")
    other = load_board("button-s3")
    other.partitions = [
        p if p.name != "vfs" else type(p)("vfs", p.type, p.subtype, p.offset, p.size // 2)
        for p in other.partitions
    ]
    with pytest.raises(ImageError, match="does not match button-s3's layout"):
        check_firmware(s3, build_firmware(other).merged)


def test_sha256_pin_in_the_board_file(tmp_path: Path) -> None:
    board = load_board("devkit-esp32")
    fw = build_firmware(board).merged
    board.data = json.loads(json.dumps(board.data))
    board.data["firmware"] = {"sha256": "00" * 32}
    with pytest.raises(ImageError, match="pins"):
        check_firmware(board, fw)
    board.data["firmware"] = {"sha256": hashlib.sha256(fw).hexdigest().upper()}
    assert check_firmware(board, fw).sha256 == hashlib.sha256(fw).hexdigest()


def test_boot_check_follows_the_boot_path() -> None:
    board = load_board("devkit-esp32")
    chip = board.chip_info
    fw = build_firmware(board)
    flash = bytearray(b"\xff" * board.flash_size)
    erased = boot_check(flash, chip, board.flash_size)
    assert not erased.ok and erased.lines == ["invalid header: 0xffffffff"]
    flash[fw.offset : fw.offset + len(fw.merged)] = fw.merged
    ok = boot_check(flash, chip, board.flash_size)
    assert ok.ok and ok.vfs == board.vfs and ok.lines[-1].startswith("entry 0x")
    no_table = bytearray(flash)
    no_table[0x8000:0x9000] = b"\xff" * 0x1000
    assert "Failed to verify partition table" in "\n".join(
        boot_check(no_table, chip, board.flash_size).lines
    )
    half_app = bytearray(flash)
    half_app[board.factory.offset + 0x3000 : board.factory.offset + 0x6000] = b"\xff" * 0x3000
    bad = boot_check(half_app, chip, board.flash_size)
    assert not bad.ok and "Factory app partition is not bootable" in bad.lines[-2]
