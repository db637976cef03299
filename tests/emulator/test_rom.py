"""The virtual ROM bootloader byte by byte (SLIP, status codes, baud, link speed) and the boot checks."""

from __future__ import annotations

import hashlib
import struct
import time
from pathlib import Path

import pytest
import serial
from auxilio import partitions
from auxilio.chips import CHIP_DETECT_MAGIC_REG
from auxilio.emulator import FlashImage, State, VirtualBoard, load_board
from auxilio.emulator.board import LINK_FAITHFUL
from auxilio.emulator.rom import SlipDecoder, slip_encode
from auxilio.flash.images import checksum
from auxilio.testing.wait import wait_for

pytestmark = [
    pytest.mark.emulator,
    pytest.mark.filterwarnings("ignore::DeprecationWarning:serial.rfc2217"),
]

SYNC = b"\x07\x07\x12\x20" + 32 * b"\x55"


class Rom:
    """A minimal client of the ROM protocol over the board's RFC 2217 port."""

    def __init__(self, vb: VirtualBoard, baud: int = 115200) -> None:
        self.vb = vb
        self.ser = serial.serial_for_url(vb.rfc2217_url, baudrate=baud, timeout=0.5)
        self.slip = SlipDecoder()
        self.frames: list[bytes] = []

    def enter_download(self) -> None:
        self.ser.dtr, self.ser.rts = False, True  # EN low (the USB-JTAG reset on a C3)
        time.sleep(0.1)  # the reset pulse's width: the stimulus, as esptool gives it
        self.ser.dtr = True  # IO0 low as EN rises: download mode
        self.ser.rts = False
        wait_for(lambda: self.vb.state is State.DOWNLOAD, 5, f"download mode ({self.vb.state})")
        self.ser.dtr = False
        self.ser.reset_input_buffer()

    def send(self, op: int, data: bytes = b"", chk: int = 0) -> None:
        self.ser.write(slip_encode(struct.pack("<BBHI", 0, op, len(data), chk) + data))

    def read(self, timeout: float = 3.0) -> bytes | None:
        deadline = time.monotonic() + timeout
        while not self.frames and time.monotonic() < deadline:
            self.frames += self.slip.feed(self.ser.read(self.ser.in_waiting or 1))
        return self.frames.pop(0) if self.frames else None

    def command(self, op: int, data: bytes = b"", chk: int = 0) -> tuple[int, bytes]:
        self.send(op, data, chk)
        resp = self.read()
        assert resp is not None, f"no answer to {op:#x}"
        direction, rop, _size, value = struct.unpack_from("<BBHI", resp)
        assert (direction, rop) == (1, op)
        return value, resp[8:]

    def close(self) -> None:
        self.ser.close()


def _board(tmp_path: Path, name: str, **kw: object) -> VirtualBoard:
    img = FlashImage(tmp_path / f"{name}.img", load_board(name)).create()
    vb = VirtualBoard(img.board, img.path, **kw)  # type: ignore[arg-type]
    return vb.start()


@pytest.mark.parametrize("name", ["devkit-esp32", "bracelet-c3", "button-s3"])
def test_rom_answers_sync_registers_and_refuses_bad_packets(tmp_path: Path, name: str) -> None:
    vb = _board(tmp_path, name)
    rom = Rom(vb)
    try:
        rom.enter_download()
        value, status = rom.command(0x08, SYNC)  # SYNC: eight answers, a non-zero value
        assert value != 0 and status == b"\x00\x00\x00\x00"
        assert all(rom.read() is not None for _ in range(7))
        chip = vb.board.chip_info
        value, _ = rom.command(0x0A, struct.pack("<I", CHIP_DETECT_MAGIC_REG))  # READ_REG
        assert value == chip.magic_value
        # GET_SECURITY_INFO: the chip id where the ROM has the command, "invalid" where not.
        _, body = rom.command(0x14)
        if chip.security_info:
            assert (
                struct.unpack_from("<I", body, 12)[0] == chip.image_chip_id
                and body[20:22] == b"\x00\x00"
            )
        else:
            assert body[:2] == b"\x01\x05"
        # A stub-only command from the ROM, and a FLASH_DATA with a wrong checksum.
        assert rom.command(0xD0)[1][:2] == b"\x01\x05"
        words = 5 if chip.rom_flash_begin_words == 5 else 4
        begin = struct.pack("<IIII", 0x1000, 1, 0x400, 0x200000) + (
            b"\0" * 4 if words == 5 else b""
        )
        assert rom.command(0x02, begin)[1][:2] == b"\x00\x00"  # FLASH_BEGIN erases the block
        block = b"\x42" * 0x400
        bad = rom.command(
            0x03, struct.pack("<IIII", len(block), 0, 0, 0) + block, checksum(block) ^ 1
        )
        assert bad[1][:2] == b"\x01\x07"  # 0x107: checksum error
        good = rom.command(0x03, struct.pack("<IIII", len(block), 0, 0, 0) + block, checksum(block))
        assert good[1][:2] == b"\x00\x00"
        assert vb.image.path.read_bytes()[0x200000:0x200400] == block
        _, md5 = rom.command(0x13, struct.pack("<IIII", 0x200000, 0x400, 0, 0))  # SPI_FLASH_MD5
        assert md5[:32] == hashlib.md5(block).hexdigest().encode()  # the ROM answers hex text
    finally:
        rom.close()
        vb.close()


def test_a_changed_baud_rate_that_the_host_does_not_follow_does_not_frame(tmp_path: Path) -> None:
    vb = _board(tmp_path, "devkit-esp32")
    rom = Rom(vb)
    try:
        rom.enter_download()
        rom.command(0x08, SYNC)
        assert all(rom.read() is not None for _ in range(7))
        assert rom.command(0x0F, struct.pack("<II", 230400, 0))[1][:2] == b"\x00\x00"
        time.sleep(0.1)  # the ROM switches speed after its reply; esptool waits too (protocol)
        rom.frames.clear()
        rom.ser.reset_input_buffer()
        rom.send(
            0x0A, struct.pack("<I", CHIP_DETECT_MAGIC_REG)
        )  # still at 115200: garbage to the chip
        assert rom.read(timeout=1.0) is None
        rom.ser.baudrate = 230400
        assert rom.command(0x0A, struct.pack("<I", CHIP_DETECT_MAGIC_REG))[0] == 0x00F01D83
    finally:
        rom.close()
        vb.close()


def test_faithful_link_moves_bytes_at_the_baud_rate(tmp_path: Path) -> None:
    baud, rounds = 19200, 8
    vb = _board(tmp_path, "devkit-esp32", link=LINK_FAITHFUL)
    rom = Rom(vb, baud=baud)
    try:
        rom.enter_download()
        rom.command(0x08, SYNC)
        while rom.read(timeout=0.5) is not None:
            pass
        t0 = time.monotonic()
        rx0, tx0 = vb.rx_bytes, vb.tx_bytes
        for _ in range(rounds):
            rom.command(0x0A, struct.pack("<I", CHIP_DETECT_MAGIC_REG))
        elapsed = time.monotonic() - t0
        moved = (vb.rx_bytes - rx0) + (vb.tx_bytes - tx0)
        floor = moved * 10 / baud  # 10 bits per byte on an 8N1 UART
        assert floor * 0.9 <= elapsed <= floor * 2 + 0.5, (elapsed, floor)
    finally:
        rom.close()
        vb.close()


def test_boot_needs_a_partition_table_with_vfs_and_formats_an_erased_filesystem(
    tmp_path: Path,
) -> None:
    board = load_board("bracelet-c3")
    img = FlashImage(tmp_path / "c3.img", board).create()
    # An erased vfs partition: MicroPython's first boot formats it and writes boot.py.
    with open(img.path, "r+b") as f:
        f.seek(board.vfs.offset)
        f.write(b"\xff" * 0x10000)
    with VirtualBoard(board, img.path, rfc2217_port=None) as vb:
        assert b"Performing initial setup" in vb.console()
    assert "boot.py" in img.listdir("/")
    # A table without a vfs partition: the board never reaches the REPL.
    table = partitions.build_table([p for p in board.partitions if p.name != "vfs"])
    with open(img.path, "r+b") as f:
        f.seek(0x8000)
        f.write(table)
    vb = VirtualBoard(board, img.path, rfc2217_port=None)
    try:
        vb.start(wait=False)
        vb.wait_output(b"no 'vfs' partition", timeout=10)
        assert vb.state is State.BOOT_LOOP
        with pytest.raises(Exception, match="does not boot"):
            vb.wait_ready(1)
    finally:
        vb.close()
