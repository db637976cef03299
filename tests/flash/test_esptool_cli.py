"""The unmodified esptool command line against virtual boards' rfc2217:// ports, for the three chips."""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import pytest
from auxilio.emulator import FlashImage, State, VirtualBoard, load_board
from auxilio.flash.images import build_firmware
from auxilio.testing.wait import wait_for

from tests.flash.conftest import QUIET, esptool, ok, parallel

pytestmark = [pytest.mark.emulator, pytest.mark.slow, QUIET]

CHIPS = {"devkit-esp32": "ESP32", "bracelet-c3": "ESP32-C3", "button-s3": "ESP32-S3"}
BOOT_S = 30


def _board(tmp_path: Path, name: str, tag: str = "", blank: bool = False) -> VirtualBoard:
    img = FlashImage(tmp_path / f"{name}{tag}.img", load_board(name))
    img.erase() if blank else img.create()
    vb = VirtualBoard(img.board, img.path, name=f"{name}{tag}")
    vb.start(wait=not blank)
    return vb


def _wait_state(vb: VirtualBoard, state: State, timeout: float = BOOT_S) -> None:
    wait_for(lambda: vb.state is state, timeout, f"{vb.name} {state} (it is {vb.state})")


def test_chip_id_and_flash_id_report_each_chip(tmp_path: Path) -> None:
    # Two boards per chip so that every esptool run goes at once (each spends its time
    # waiting on pyserial's RFC 2217 client), and a C3 for the USB-Serial-JTAG sequence.
    jobs = [(name, cmd) for name in CHIPS for cmd in ("chip-id", "flash-id")]
    jobs.append(("bracelet-c3", "usb-reset"))
    boards = [_board(tmp_path, name, f"-{i}") for i, (name, _cmd) in enumerate(jobs)]
    try:

        def check(i: int) -> None:
            (name, cmd), vb = jobs[i], boards[i]
            title = CHIPS[name]
            args = ["--before", "usb-reset", "chip-id"] if cmd == "usb-reset" else [cmd]
            out = ok(esptool(vb.rfc2217_url, *args))
            assert re.search(rf"Detecting chip type\.\.\. {re.escape(title)}\n", out), out
            assert f"Connected to {title} on" in out
            mac = ":".join(f"{b:02x}" for b in vb.mac)
            assert f"MAC:                {mac}" in out
            if cmd == "flash-id":
                assert f"Detected flash size: {vb.board.flash_size >> 20}MB" in out
                assert "Manufacturer: c8" in out
            if cmd == "usb-reset":
                assert (
                    b"rst:0x15 (USB_UART_CHIP_RESET),boot:0x4 (DOWNLOAD(USB/UART0/1))"
                    in vb.console()
                )
            # After esptool's hard reset (RTS), the board boots MicroPython again.
            _wait_state(vb, State.RUNNING)

        parallel(check, range(len(jobs)))
    finally:
        for vb in boards:
            vb.close()


VARIANTS = [
    # (board, esptool options, write options, what): the full firmware with the stub...
    ("bracelet-c3", [], [], "firmware"),
    ("button-s3", [], ["--no-compress"], "firmware"),
    # ...and a small block with the ROM loader alone (its 1 KB packets are slow over RFC 2217).
    ("devkit-esp32", ["--no-stub"], [], "blob"),
    ("bracelet-c3", ["--no-stub"], ["--no-compress"], "blob"),
]


def test_write_flash_stub_and_rom_compressed_or_not_then_verify(tmp_path: Path) -> None:
    boards = [_board(tmp_path, name, f"-{i}") for i, (name, *_rest) in enumerate(VARIANTS)]
    stranger = _board(tmp_path, "devkit-esp32", "-stranger")
    blob = os.urandom(2048) + bytes(2048) + b"auxilio" * 300
    blob_path = tmp_path / "blob.bin"
    blob_path.write_bytes(blob)
    blob_addr = hex(stranger.board.vfs.offset + 0x10000)
    try:

        def write(i: int) -> None:
            if i == len(VARIANTS):
                # verify-flash on a board that never got the data fails: it is not vacuous.
                bad = esptool(
                    stranger.rfc2217_url, "--no-stub", "verify-flash", blob_addr, str(blob_path)
                )
                assert bad.returncode != 0 and "Verification failed" in bad.stdout + bad.stderr
                return
            name, opts, wopts, what = VARIANTS[i]
            vb = boards[i]
            if what == "firmware":
                data = build_firmware(vb.board, code_size=16 * 1024, seed=f"w{i}").merged
                addr = vb.board.bootloader_offset
                path = tmp_path / f"fw{i}.bin"
                path.write_bytes(data)
            else:
                data, addr, path = blob, int(blob_addr, 16), blob_path
            out = ok(esptool(vb.rfc2217_url, *opts, "write-flash", *wopts, hex(addr), str(path)))
            assert "Hash of data verified" in out, out
            written = vb.image.path.read_bytes()[addr : addr + len(data)]
            assert hashlib.sha256(written).digest() == hashlib.sha256(data).digest()
            ok(esptool(vb.rfc2217_url, *opts, "verify-flash", hex(addr), str(path)))
            if what == "firmware":
                _wait_state(vb, State.RUNNING)  # the new firmware boots

        parallel(write, range(len(VARIANTS) + 1))
    finally:
        for vb in boards + [stranger]:
            vb.close()


def test_read_flash_gives_back_the_bytes_and_erase_flash_leaves_a_boot_loop(tmp_path: Path) -> None:
    s3 = _board(tmp_path, "button-s3")
    esp32 = _board(tmp_path, "devkit-esp32")
    c3 = _board(tmp_path, "bracelet-c3")
    try:

        def read_stub() -> None:
            out = tmp_path / "read.bin"
            ok(esptool(s3.rfc2217_url, "read-flash", "0x0", "0x12000", str(out)))
            assert out.read_bytes() == s3.image.path.read_bytes()[:0x12000]

        def read_rom() -> None:
            out = tmp_path / "read-rom.bin"
            # The ESP32 ROM's READ_FLASH_SLOW: 64 bytes per command.
            ok(esptool(esp32.rfc2217_url, "--no-stub", "read-flash", "0x8000", "0x200", str(out)))
            assert out.read_bytes() == esp32.image.path.read_bytes()[0x8000:0x8200]

        def erase() -> None:
            # erase-flash (stub), then the default hard reset: the ROM finds no bootloader.
            ok(esptool(c3.rfc2217_url, "erase-flash"))
            _wait_state(c3, State.BOOT_LOOP)
            c3.wait_output(b"invalid header: 0xffffffff\r\n")
            assert set(c3.image.path.read_bytes()) == {0xFF}
            since = c3.console_len()
            # It keeps resetting (RTC watchdog) and never reaches the REPL.
            c3.wait_output(b"rst:0x10 (RTCWDT_RTC_RST)", since=since, timeout=5)
            assert c3.state is State.BOOT_LOOP and b">>> " not in c3.console()[since:]

        parallel(lambda f: f(), [read_stub, read_rom, erase])
    finally:
        for vb in (s3, esp32, c3):
            vb.close()
