"""Drive the operator console as an operator would: on a real pty, or headless and read its screen.

`drive` runs the real CLI on a pty of a given size; `screen_text` reads what a
Textual app (auxilio.console.app.MonitorApp under `App.run_test`) shows,
character for character, so tests read the screen rather than the code.
"""

from __future__ import annotations

import fcntl
import os
import pty
import select
import struct
import sys
import termios
import time
from collections.abc import Callable, Sequence
from typing import Any

# One step: (what must be on the screen so far, the keys to type then).
Step = tuple[bytes, bytes]


def screen_text(app: Any) -> str:
    """The screen of a running Textual app as text, one line per terminal row.

    Renders the app's current screen (modal screens included) the way its
    driver would write it, without the escape sequences.
    """
    update = app.screen._compositor.render_update(full=True)  # what the driver would paint
    return "\n".join("".join(seg.text for strip in line for seg in strip) for line in update.strips)


def drive(
    args: Sequence[str],
    steps: Sequence[Step],
    quit_when: Callable[[bytes], bool],
    timeout: float = 30.0,
    size: tuple[int, int] = (80, 24),
) -> tuple[bytes, int]:
    """Run `auxilio ARGS` on a pty of size (columns, rows); type each step's keys once its
    text shows, and 'q' once quit_when(screen) holds. Returns (everything the console
    printed, its exit code)."""
    pid, fd = pty.fork()
    if pid == 0:  # child: the real CLI on a terminal of that size, before it looks
        # TIOCSWINSZ: rows, columns, pixel width, pixel height.
        fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", size[1], size[0], 0, 0))
        term = os.environ.get("TERM", "")
        env = {**os.environ, "TERM": term if term not in ("", "dumb") else "xterm-256color"}
        os.execve(sys.executable, [sys.executable, "-m", "auxilio.cli", *args], env)
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
