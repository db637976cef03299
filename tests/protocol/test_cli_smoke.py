"""The CLI starts, reports its version, and rejects a bad frame with one line and exit 2."""

from __future__ import annotations

import subprocess
import sys

from auxilio import __version__


def _auxilio(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "auxilio.cli", *args], capture_output=True, text=True, timeout=60
    )


def test_version() -> None:
    r = _auxilio("--version")
    assert r.returncode == 0
    assert __version__ in r.stdout


def test_truncated_frame_is_one_line_exit_2() -> None:
    r = _auxilio("decode", "--secret", "00" * 32, "0101")
    assert r.returncode == 2
    assert r.stderr.startswith("error: the frame is shorter") and r.stderr.count("\n") == 1
    assert r.stderr.strip().endswith("(truncated)")
    assert "Traceback" not in r.stderr
