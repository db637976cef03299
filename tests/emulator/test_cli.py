"""`auxilio emulate` / `auxilio vboard`: bad input in one line, clean shutdown, no orphans."""

from __future__ import annotations

import json
import os
import pty
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from auxilio.emulator import FlashImage, load_board
from auxilio.testing.wait import wait_for

pytestmark = pytest.mark.emulator

AUXILIO = str(Path(sys.executable).parent / "auxilio")
MPREMOTE = str(Path(sys.executable).parent / "mpremote")
START_TIMEOUT_S = 60


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [AUXILIO, *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        stdin=subprocess.DEVNULL,
    )


def vboard(name: str, env: dict[str, str], *args: str) -> str:
    """`auxilio vboard --name NAME ARGS...`: its stdout; a non-zero exit fails the test."""
    p = run_cli("vboard", "--name", name, *args, env=env)
    assert p.returncode == 0, p.stderr
    return p.stdout


def one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode not in (0, None)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    return lines[0]


def interpreters_for(image: Path) -> list[int]:
    """Pids of micropython processes booted from this image (found by their environment)."""
    needle = f"AUXILIO_VB_IMAGE={image.resolve()}".encode()
    pids = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            if needle in (d / "environ").read_bytes().split(b"\0"):
                stat = (d / "stat").read_text().rsplit(")", 1)[1].split()
                if stat[0] != "Z":
                    pids.append(int(d.name))
        except OSError:
            continue
    return pids


@pytest.fixture
def cli_env(tmp_path: Path) -> dict[str, str]:
    """A private runtime dir, so state files and default pty links stay in the test."""
    run = tmp_path / "run"
    run.mkdir()
    return dict(os.environ, XDG_RUNTIME_DIR=str(run))


class Emulator:
    """`auxilio emulate ... --json` as a subprocess; `info` is its JSON line."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [AUXILIO, "emulate", "--json", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        if not line:
            err = self.proc.stderr.read() if self.proc.stderr else ""
            self.proc.wait(30)
            raise AssertionError(f"emulate did not start: {err}")
        self.info = json.loads(line)

    def stop(self, sig: int = signal.SIGTERM) -> tuple[int, str]:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        rc = self.proc.wait(60)
        return rc, self.proc.stderr.read() if self.proc.stderr else ""


def test_unknown_board(cli_env: dict[str, str]) -> None:
    line = one_line_error(run_cli("emulate", "--board", "toaster-9000", env=cli_env))
    assert "unknown board" in line and "bracelet-c3" in line


def test_missing_image_needs_format(tmp_path: Path, cli_env: dict[str, str]) -> None:
    line = one_line_error(run_cli("emulate", "--image", str(tmp_path / "none.img"), env=cli_env))
    assert "does not exist" in line and "--format" in line
    assert not (tmp_path / "none.img").exists()


@pytest.mark.parametrize("damage", ["table", "filesystem", "size"])
def test_corrupt_image_is_refused_not_reformatted(
    tmp_path: Path, cli_env: dict[str, str], damage: str
) -> None:
    board = load_board("bracelet-c3")
    img = FlashImage(tmp_path / "c.img", board).create()
    with open(img.path, "r+b") as f:
        if damage == "table":
            f.seek(0x8000 + 40)
            f.write(b"\x00\x11")
        elif damage == "filesystem":
            f.seek(board.vfs.offset)
            f.write(b"\x5a" * 8192)  # both superblock copies
        else:
            f.truncate(1024 * 1024)
    before = img.path.read_bytes()
    line = one_line_error(run_cli("emulate", "--image", str(img.path), env=cli_env))
    assert "--format" in line
    assert img.path.read_bytes() == before  # never silently reformatted


def test_format_serve_stop_leaves_nothing_behind(tmp_path: Path, cli_env: dict[str, str]) -> None:
    image = tmp_path / "dev.img"
    link = tmp_path / "ttyVB0"
    emu = Emulator(["--image", str(image), "--format", "--pty", str(link), "--name", "t1"], cli_env)
    try:
        assert emu.info["pty"] == str(link) and link.is_symlink()
        out = subprocess.run(
            [MPREMOTE, "connect", str(link), "exec", "print(40 + 2)"],
            capture_output=True,
            text=True,
            timeout=START_TIMEOUT_S,
        )
        assert out.stdout.strip() == "42", out.stderr
        status = run_cli("vboard", "--name", "t1", "status", env=cli_env)
        st = json.loads(status.stdout)
        assert st["state"] in ("repl", "app") and st["uptime_s"] > 0
        assert interpreters_for(image)
    finally:
        rc, err = emu.stop()
    assert rc == 0, err
    assert not link.exists() and not link.is_symlink()
    assert interpreters_for(image) == []
    assert run_cli("vboard", "list", env=cli_env).stdout.strip() == ""


def test_port_path_in_use(tmp_path: Path, cli_env: dict[str, str]) -> None:
    link = tmp_path / "ttyShared"
    first = Emulator(
        ["--image", str(tmp_path / "a.img"), "--format", "--pty", str(link), "--name", "a"], cli_env
    )
    target = os.readlink(link)
    try:
        line = one_line_error(
            run_cli(
                "emulate",
                "--image",
                str(tmp_path / "b.img"),
                "--format",
                "--pty",
                str(link),
                "--name",
                "b",
                env=cli_env,
            )
        )
        assert "in use" in line
        assert os.readlink(link) == target  # the first board's link is untouched
    finally:
        first.stop()
    regular = tmp_path / "plainfile"
    regular.write_text("not a pty")
    line = one_line_error(
        run_cli(
            "emulate",
            "--image",
            str(tmp_path / "c.img"),
            "--format",
            "--pty",
            str(regular),
            env=cli_env,
        )
    )
    assert "in use" in line and regular.read_text() == "not a pty"


def test_crashed_interpreter_is_one_line_and_nonzero(
    tmp_path: Path, cli_env: dict[str, str]
) -> None:
    image = tmp_path / "crash.img"
    emu = Emulator(["--image", str(image), "--format", "--name", "crashy"], cli_env)
    pids = interpreters_for(image)
    assert len(pids) == 1
    os.kill(pids[0], signal.SIGSEGV)
    rc = emu.proc.wait(60)
    err = emu.proc.stderr.read() if emu.proc.stderr else ""
    assert rc != 0
    lines = err.strip().splitlines()
    assert lines[-1].startswith("error: ") and "crashed" in lines[-1] and "SIGSEGV" in lines[-1]
    assert interpreters_for(image) == []


def test_killed_emulator_leaves_no_orphan_and_stale_link_is_reclaimed(
    tmp_path: Path, cli_env: dict[str, str]
) -> None:
    image = tmp_path / "k.img"
    link = tmp_path / "ttyK"
    emu = Emulator(["--image", str(image), "--format", "--pty", str(link), "--name", "k"], cli_env)
    assert interpreters_for(image)
    emu.stop(signal.SIGKILL)  # no chance to clean up
    # PR_SET_PDEATHSIG takes the interpreter down
    wait_for(lambda: interpreters_for(image) == [], 30, "the orphaned interpreter to die")
    # The dead emulator's link points at a pty that no longer exists: reclaimed.
    again = Emulator(["--image", str(image), "--pty", str(link), "--name", "k"], cli_env)
    try:
        assert os.path.exists(os.readlink(link))
    finally:
        again.stop()


def test_a_stale_link_is_reclaimed_even_when_its_pty_number_was_reused(
    tmp_path: Path, cli_env: dict[str, str]
) -> None:
    """A killed emulator's /dev/pts/N soon belongs to someone else: the owner file decides."""
    image = tmp_path / "r.img"
    FlashImage(image, load_board("bracelet-c3")).create()
    master, slave = pty.openpty()  # a live pty that is not the dead emulator's any more
    other = os.ttyname(slave)
    dead = subprocess.Popen(["true"])
    dead.wait()
    link = tmp_path / "ttyR"
    os.symlink(other, link)
    (tmp_path / "ttyR.owner").write_text(f"{dead.pid} {other}\n")
    try:
        emu = Emulator(["--image", str(image), "--pty", str(link), "--name", "r"], cli_env)
        try:
            assert os.readlink(link) != other and os.path.exists(os.readlink(link))
            owner_pid, device = (tmp_path / "ttyR.owner").read_text().split()
            assert device == os.readlink(link) and int(owner_pid) != dead.pid
        finally:
            emu.stop()
        assert not link.exists() and not (tmp_path / "ttyR.owner").exists()
    finally:
        os.close(master)
        os.close(slave)
