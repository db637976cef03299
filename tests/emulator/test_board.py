"""Virtual board behaviour: resets over RFC 2217 lines, power cuts, crashes, the flash image."""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import serial
from auxilio import partitions as pt
from auxilio.emulator import FlashImage, State, VirtualBoard, load_board
from auxilio.emulator.board import SOFT_REBOOT_BANNER
from auxilio.errors import AuxilioError
from auxilio.testing.wait import wait_for

pytestmark = [
    pytest.mark.emulator,
    pytest.mark.filterwarnings("ignore::DeprecationWarning:serial.rfc2217"),
]

MAIN = b"import time\nprint('main: running')\nwhile True:\n    time.sleep_ms(20)\n"
# Writes keep.txt, then a big file in 4 KB chunks, reporting progress.
WRITER = b"""import os
with open('keep.txt', 'w') as f:
    f.write('written before the cut')
if os.getenv('VB_TEST_WRITE'):
    buf = bytearray(4096)
    with open('big.bin', 'wb') as f:
        for i in range(400):
            buf[0] = i & 0xFF
            f.write(buf)
            print('chunk', i)
"""


def wait_state(board: VirtualBoard, state: State, timeout: float = 30) -> None:
    wait_for(lambda: board.state is state, timeout, f"board {state} (it is {board.state})")


@contextlib.contextmanager
def booted(img: FlashImage, **kwargs: object) -> Iterator[VirtualBoard]:
    """A board whose main.py may run forever: started without waiting for the REPL."""
    board = VirtualBoard(img.board, img.path, **kwargs)  # type: ignore[arg-type]
    try:
        board.start(wait=False)
        yield board
    finally:
        board.close()


def fresh_image(path: Path, files: dict[str, bytes], board: str = "bracelet-c3") -> FlashImage:
    img = FlashImage(path, load_board(board)).create()
    img.deploy(files)
    return img


def test_image_layout_is_esp32_partition_table_and_micropython_littlefs(tmp_path: Path) -> None:
    board = load_board("button-s3")
    img = FlashImage(tmp_path / "s3.img", board).create()
    raw = img.path.read_bytes()
    assert len(raw) == board.flash_size
    table = raw[pt.TABLE_OFFSET : pt.TABLE_OFFSET + pt.TABLE_MAX_LEN]
    entries = []
    pos = 0
    while table[pos : pos + 2] == b"\xaa\x50":  # gen_esp32part entry magic
        magic, ptype, sub, off, size, label, flags = struct.unpack_from("<2sBBLL16sL", table, pos)
        entries.append((label.rstrip(b"\0").decode(), ptype, sub, off, size))
        pos += 32
    assert table[pos : pos + 16] == b"\xeb\xeb" + b"\xff" * 14  # MD5 entry
    assert table[pos + 16 : pos + 32] == hashlib.md5(table[:pos]).digest()
    assert set(table[pos + 32 :]) == {0xFF}
    vfs = [e for e in entries if e[0] == "vfs"][0]
    assert vfs[1:3] == (0x01, 0x81)  # data/fat, as MicroPython's partitions-*.csv
    assert (vfs[3], vfs[4]) == (board.vfs.offset, board.vfs.size)
    # littlefs-python mounts it with MicroPython's geometry (4096-byte blocks).
    fs = img.littlefs()
    try:
        assert fs.cfg.block_size == 4096
        assert fs.cfg.block_count == board.vfs.size // 4096
    finally:
        fs.unmount()


def test_boot_runs_boot_then_main_then_repl(tmp_path: Path) -> None:
    img = fresh_image(
        tmp_path / "b.img",
        {"boot.py": b"print('boot.py ran')\n", "main.py": b"print('main.py ran')\n"},
    )
    with VirtualBoard(img.board, img.path) as board:
        out = board.console()
        rom = img.board.chip_info.rom_banner.encode()
        assert out.index(rom) < out.index(b"boot.py ran") < out.index(b"main.py ran")
        assert out.rstrip().endswith(b">>>")
        assert board.state is State.RUNNING
        # Program output ends its lines in CRLF, as the ESP32 port's cooked stdout
        # does: a terminal on the port shows no staircase (issue 9 §2).
        assert b"boot.py ran\r\n" in out and b"main.py ran\r\n" in out
        since = board.console_len()
        board.write(b"print('a\\nb')\r")
        board.wait_output(b">>> ", since=since)
        assert b"a\r\nb\r\n" in board.console()[since:]
        assert b"\r\r\n" not in board.console()


def test_rts_pulse_over_rfc2217_hard_resets(tmp_path: Path) -> None:
    img = fresh_image(tmp_path / "r.img", {"main.py": MAIN})
    with booted(img) as board:
        board.wait_output(b"main: running")
        pid, boots = board.pid, board.boots
        with serial.serial_for_url(board.rfc2217_url, timeout=0.2) as ser:
            # pyserial asserted DTR and RTS on open: both high, EN stays high.
            assert board.boots == boots
            ser.dtr = False  # RTS alone asserted: EN low, chip held in reset
            wait_state(board, State.RESET)
            since = board.console_len()
            ser.rts = False  # EN rises: normal boot (IO0 high)
            board.wait_output(b"main: running", since=since, timeout=30)
        assert board.boots == boots + 1
        assert board.pid != pid  # RAM gone: a new interpreter
        assert board.console().count(img.board.chip_info.rom_banner.encode()) == 2
        assert SOFT_REBOOT_BANNER not in board.console()


def test_esptool_reset_sequence_enters_download_mode_hook(tmp_path: Path) -> None:
    fed: list[bytes] = []

    class Rom:
        def __init__(self, board: VirtualBoard) -> None:
            board.emit(b"rom hook ready\r\n")

        def feed(self, data: bytes) -> None:
            fed.append(data)

        def close(self) -> None:
            fed.append(b"<closed>")

    img = fresh_image(tmp_path / "d.img", {"main.py": MAIN})
    with booted(img, download_mode=Rom) as board:
        board.wait_output(b"main: running")
        with serial.serial_for_url(board.rfc2217_url, timeout=0.2) as ser:
            # esptool ClassicReset: DTR off, RTS on (reset); then DTR on, RTS off.
            ser.dtr = False
            ser.rts = True
            time.sleep(0.1)  # the reset pulse's width: the stimulus, as esptool gives it
            ser.dtr = True
            ser.rts = False
            wait_state(board, State.DOWNLOAD)
            board.wait_output(b"waiting for download")
            board.wait_output(b"rom hook ready")
            ser.write(b"\xc0sync\xc0")
            wait_for(lambda: b"sync" in b"".join(fed), 10, "the ROM hook to be fed the bytes")
            # An RTS pulse with DTR off boots the firmware again.
            ser.dtr = False
            ser.rts = True
            time.sleep(0.1)  # the reset pulse's width: the stimulus, as esptool gives it
            since = board.console_len()
            ser.rts = False
            board.wait_output(b"main: running", since=since)
        assert fed[-1] == b"<closed>"


@pytest.mark.parametrize("cut_after", [3, 40, 150])
def test_power_cut_during_a_write_leaves_the_filesystem_mountable(
    tmp_path: Path, cut_after: int
) -> None:
    img = fresh_image(tmp_path / "p.img", {"main.py": WRITER})
    with booted(img, env={"VB_TEST_WRITE": "1"}, rfc2217_port=None) as board:
        board.wait_output(f"chunk {cut_after}\r\n".encode(), timeout=60)
        board.power_cut()  # kill -9 mid-write
        wait_state(board, State.OFF)
    # The host reads the image: mountable, the earlier file intact.
    assert img.read_file("keep.txt") == b"written before the cut"
    # And MicroPython mounts it again in a fresh board (no writing this time).
    with VirtualBoard(img.board, img.path, rfc2217_port=None) as again:
        assert again.state is State.RUNNING
        again.write(
            b"import os; print('size', os.stat('big.bin')[6] if 'big.bin' in os.listdir() else 0)\r"
        )
        i = again.wait_output(b"size ", timeout=30)
        again.wait_output(b"\n", since=i)
        size = int(again.console()[i:].split()[0])
    assert size % 4096 == 0 and size <= 400 * 4096


def test_power_cut_and_restore(tmp_path: Path) -> None:
    img = fresh_image(tmp_path / "c.img", {"main.py": MAIN})
    with booted(img) as board:
        board.wait_output(b"main: running")
        pid = board.pid
        board.power_cut()
        wait_state(board, State.OFF)
        assert pid is not None and not _alive(pid)
        since = board.console_len()
        board.power_restore()
        board.wait_output(b"main: running", since=since)
        assert board.pid not in (None, pid)


def test_crashed_interpreter_is_reported(tmp_path: Path) -> None:
    img = fresh_image(tmp_path / "x.img", {"main.py": MAIN})
    reasons: list[str] = []
    with booted(img) as board:
        board.on_crash = reasons.append
        board.wait_output(b"main: running")
        os.kill(board.pid, signal.SIGSEGV)
        wait_state(board, State.CRASHED)
        assert "SIGSEGV" in (board.crash_reason or "")
        assert reasons and "SIGSEGV" in reasons[0]
        with pytest.raises(AuxilioError, match="crashed"):
            board.wait_ready(1)


def test_soft_reboot_from_the_friendly_repl_keeps_files(tmp_path: Path) -> None:
    img = fresh_image(tmp_path / "s.img", {"main.py": b"print('main.py ran')\n"})
    with VirtualBoard(img.board, img.path) as board:
        board.write(b"open('x.txt', 'w').write('in ram? no, in flash')\r")
        board.wait_output(b">>> ", since=board.console_len())
        since = board.console_len()
        board.write(b"\x04")  # Ctrl-D at the friendly REPL
        end = board.wait_output(SOFT_REBOOT_BANNER, since=since)
        board.wait_output(b"main.py ran", since=end)
        board.write(b"print(open('x.txt').read())\r")
        board.wait_output(b"in ram? no, in flash\r\n", since=end), board.console()
        assert board.boots == 2


def test_corrupt_filesystem_is_refused(tmp_path: Path) -> None:
    img = FlashImage(tmp_path / "bad.img", load_board("bracelet-c3")).create()
    with open(img.path, "r+b") as f:
        f.seek(img.board.vfs.offset)
        f.write(os.urandom(64 * 1024))
    with pytest.raises(AuxilioError, match="LittleFS"):
        img.check()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is not alive; the board reaped it already, but be exact.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0] != "Z"
    except OSError:
        return False
