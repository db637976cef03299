"""Drive a live terminal console (`auxilio monitor`) through a real pty, as an operator would."""

from __future__ import annotations

import os
import pty
import select
import sys
import time
from collections.abc import Callable, Sequence

# One step: (what must be on the screen so far, the keys to type then).
Step = tuple[bytes, bytes]


def drive(
    args: Sequence[str],
    steps: Sequence[Step],
    quit_when: Callable[[bytes], bool],
    timeout: float = 30.0,
) -> tuple[bytes, int]:
    """Run `auxilio ARGS` on a pty; type each step's keys once its text shows, and 'q' once
    quit_when(screen) holds. Returns (everything the console printed, its exit code)."""
    pid, fd = pty.fork()
    if pid == 0:  # child: the real CLI on a terminal
        os.execv(sys.executable, [sys.executable, "-m", "auxilio.cli", *args])
    out = b""
    pending = list(steps)
    quit_sent = False
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            r, _w, _x = select.select([fd], [], [], 0.1)
            if r:
                try:
                    out += os.read(fd, 65536)
                except OSError:
                    break  # the console exited
            if pending and pending[0][0] in out:
                os.write(fd, pending.pop(0)[1])
            if not pending and not quit_sent and quit_when(out):
                os.write(fd, b"q")
                quit_sent = True
        else:
            os.kill(pid, 9)
        _pid, status = os.waitpid(pid, 0)
    finally:
        os.close(fd)
    if not quit_sent:
        raise AssertionError(
            "console never reached its goal: " + out.decode(errors="replace")[-2000:]
        )
    return out, os.waitstatus_to_exitcode(status)
