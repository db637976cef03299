"""Unmodified mpremote against a virtual board's pty and its rfc2217:// URL."""

from __future__ import annotations

import hashlib
import os
import pty
import select
import subprocess
import termios
import time
from pathlib import Path

import pytest
from auxilio.emulator import FlashImage, VirtualBoard
from auxilio.emulator.board import SOFT_REBOOT_BANNER
from auxilio.testing.tools import run_tool, tool_path
from auxilio.testing.wait import wait_for

pytestmark = pytest.mark.emulator

MPREMOTE = tool_path("mpremote")
# mpremote over RFC 2217 spends ~1 s negotiating; the machine is shared: be generous.
TIMEOUT_S = 90

# A main.py that never returns, like the firmware's.
BUSY_MAIN = b"import time\nprint('main: running')\nwhile True:\n    time.sleep_ms(20)\n"


def mpremote(port: str, *args: str, timeout: float = TIMEOUT_S) -> subprocess.CompletedProcess[str]:
    return run_tool([MPREMOTE, "connect", port, *args], timeout)


def ok(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 0, f"mpremote failed: {proc.stdout[-500:]} {proc.stderr[-800:]}"
    return proc.stdout


@pytest.fixture(params=["pty", "rfc2217"])
def board_port(request: pytest.FixtureRequest, virtual_board):
    """A bare board whose main.py runs forever, and the port URL of one endpoint."""
    vd = virtual_board(files={"main.py": BUSY_MAIN}, wait=False)
    vd.board.wait_output(b"main: running", timeout=60)
    port = vd.board.port if request.param == "pty" else vd.board.rfc2217_url
    return vd.board, port


def test_exec_without_resume_soft_resets(board_port) -> None:
    board, port = board_port
    boots = board.boots
    assert ok(mpremote(port, "exec", "print(1)")).strip() == "1"
    # mpremote soft-reset the board (Ctrl-D in the raw REPL) and it came back.
    assert board.boots > boots
    assert SOFT_REBOOT_BANNER in board.console()


def test_fs_cp_ls_sha256_and_image_contents(board_port, tmp_path: Path) -> None:
    board, port = board_port
    data = os.urandom(20_000) + b"auxilio"
    src = tmp_path / "blob.bin"
    src.write_bytes(data)
    ok(mpremote(port, "fs", "cp", str(src), ":blob.bin"))
    listing = ok(mpremote(port, "fs", "ls"))
    assert "blob.bin" in listing and str(len(data)) in listing
    out = ok(mpremote(port, "fs", "sha256sum", ":blob.bin"))
    assert hashlib.sha256(data).hexdigest() in out
    # The file is in the image's LittleFS partition, as littlefs-python reads it.
    board.close()
    assert FlashImage(board.image.path, board.board).read_file("blob.bin") == data


def test_run_script(board_port, tmp_path: Path) -> None:
    _, port = board_port
    script = tmp_path / "hello.py"
    script.write_text("import sys\nprint('ran on', sys.implementation.name, 6 * 7)\n")
    assert "ran on micropython 42" in ok(mpremote(port, "run", str(script)))


def test_soft_reset_command(board_port) -> None:
    board, port = board_port
    boots = board.boots
    ok(mpremote(port, "soft-reset"))
    assert board.boots > boots
    # Soft reboot keeps the filesystem: main.py is still there and runs again.
    assert "main.py" in ok(mpremote(port, "fs", "ls"))


def _wait_raw_terminal(fd: int, timeout: float) -> None:
    """Wait until the program put its terminal in raw mode (then Ctrl-C is a byte, not SIGINT)."""
    wait_for(lambda: not termios.tcgetattr(fd)[3] & termios.ISIG, timeout, "a raw terminal")


def _drive(argv: list[str], steps: list[tuple[bytes | None, bytes]], timeout: float) -> bytes:
    """Run argv on a pty (as a terminal user would) and play (send, expect) steps."""
    pid, fd = pty.fork()
    if pid == 0:  # child: the pty is its terminal
        os.execv(argv[0], argv)
    seen = b""
    try:
        for send, expect in steps:
            if send:
                _wait_raw_terminal(fd, timeout)
                os.write(fd, send)
            deadline = time.monotonic() + timeout
            while expect not in seen:
                left = deadline - time.monotonic()
                assert left > 0, f"{expect!r} not seen; got {seen[-400:]!r}"
                r, _, _ = select.select([fd], [], [], min(left, 0.2))
                if r:
                    try:
                        seen += os.read(fd, 4096)
                    except OSError:
                        break
        return seen
    finally:
        try:
            os.write(fd, b"\x1d")  # Ctrl-]: leave mpremote's repl
        except OSError:
            pass
        try:
            wait_for(lambda: os.waitpid(pid, os.WNOHANG)[0], 10, "mpremote to exit")
        except AssertionError:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
        os.close(fd)


@pytest.mark.filterwarnings("ignore::DeprecationWarning:serial.rfc2217")
def test_repl_ctrl_c_interrupts_main(board_port) -> None:
    board, port = board_port
    if port.startswith("rfc2217://"):
        # mpremote's repl select()s on the port's fd, which pyserial's RFC 2217
        # client does not have (mpremote/console.py "TODO pyb_serial might not
        # have fd"): drive the same keystrokes with pyserial over the URL.
        import serial

        with serial.serial_for_url(port, baudrate=115200, timeout=0.2) as ser:
            seen = b""
            ser.write(b"\x03")
            deadline = time.monotonic() + TIMEOUT_S
            while b">>> " not in seen and time.monotonic() < deadline:
                seen += ser.read(256)
            ser.write(b"print(6 * 7)\r")
            while b"42" not in seen and time.monotonic() < deadline:
                seen += ser.read(256)
    else:
        seen = _drive(
            [MPREMOTE, "connect", port, "repl"],
            [(None, b"Connected to"), (b"\x03", b">>> "), (b"print(6 * 7)\r", b"42")],
            timeout=TIMEOUT_S,
        )
    assert b"KeyboardInterrupt" in board.console(), seen
    assert b"42" in seen


def test_files_survive_in_a_fresh_board(virtual_board, tmp_path: Path) -> None:
    vd = virtual_board()
    src = tmp_path / "notes.txt"
    src.write_text("kept in flash\n")
    ok(mpremote(vd.board.port, "fs", "cp", str(src), ":notes.txt"))
    ok(mpremote(vd.board.port, "fs", "mkdir", ":data"))
    image = vd.board.image.path
    vd.close()
    again = virtual_board(image=image)
    out = ok(mpremote(again.board.rfc2217_url, "exec", "print(open('notes.txt').read())"))
    assert "kept in flash" in out
    again.close()
    fs = FlashImage(image, again.board_def)
    assert fs.read_file("notes.txt") == b"kept in flash\n"
    assert "data" in fs.listdir("/")


def test_two_boards_share_nothing(virtual_board) -> None:
    a = virtual_board(files={"main.py": b"x = 'a'\n"})
    b = virtual_board(files={"main.py": b"x = 'b'\n"})
    assert ok(mpremote(a.board.port, "exec", "print(open('main.py').read())")).strip() == "x = 'a'"
    assert ok(mpremote(b.board.port, "exec", "print(open('main.py').read())")).strip() == "x = 'b'"
    assert isinstance(a.board, VirtualBoard) and a.board.port != b.board.port
