"""Running mpremote's command line against a board (its stable interface; the API is not).

Each call is one `python -m mpremote connect URL ...` process, in its own
process group and killed with us (parent-death signal), so a timeout or a
Ctrl-C never leaves one behind. Commands are chained with "+" to spend one
connection (over RFC 2217 connecting costs about a second).
"""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence

from auxilio.errors import AuxilioError
from auxilio.procs import die_with_parent, kill_group

log = logging.getLogger(__name__)

# Generous: a deploy over a 115200-baud UART moves ~5 KB/s of file data.
DEFAULT_TIMEOUT_S = 600.0


class MpremoteError(AuxilioError):
    """mpremote failed against a board; str() is one line."""


def chain(*commands: Sequence[str]) -> list[str]:
    """mpremote's "+" chaining: several commands over one connection."""
    out: list[str] = []
    for cmd in commands:
        if out:
            out.append("+")
        out.extend(cmd)
    return out


def run(
    url: str,
    args: Sequence[str],
    *,
    timeout: float = DEFAULT_TIMEOUT_S,
    cancel: threading.Event | None = None,
    on_line: Callable[[str], None] | None = None,
    on_start: Callable[[subprocess.Popen], None] | None = None,
) -> str:
    """Run `mpremote connect URL ARGS...`; its output, or MpremoteError with the reason."""
    cmd = [sys.executable, "-m", "mpremote", "connect", url, *args]
    log.debug("mpremote %s", " ".join(cmd[3:])[:300])
    proc = subprocess.Popen(
        cmd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        preexec_fn=die_with_parent,
    )
    if on_start is not None:
        on_start(proc)
    lines: list[str] = []

    def reader() -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.decode(errors="replace").rstrip("\r\n")
            lines.append(line)
            if on_line is not None:
                try:
                    on_line(line)
                except Exception:  # a UI callback must not kill the session
                    log.exception("mpremote line callback failed")

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    deadline = time.monotonic() + timeout
    try:
        while proc.poll() is None:
            if cancel is not None and cancel.is_set():
                raise MpremoteError("interrupted")
            if time.monotonic() > deadline:
                raise MpremoteError(f"mpremote on {url} did not finish in {timeout:.0f} s")
            time.sleep(0.05)
    finally:
        if proc.poll() is None:
            kill_group(proc)
        t.join(5)
    out = "\n".join(lines)
    if proc.returncode != 0:
        last = next((ln for ln in reversed(lines) if ln.strip()), f"exit {proc.returncode}")
        raise MpremoteError(f"mpremote on {url}: {last.strip()}")
    return out
