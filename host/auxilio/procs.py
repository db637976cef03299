"""Child processes that never outlive us: parent-death signal and process-group kills."""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess

_PR_SET_PDEATHSIG = 1  # linux/prctl.h

try:
    _libc: ctypes.CDLL | None = ctypes.CDLL(None, use_errno=True)
except OSError:  # not Linux: no parent-death signal; atexit and signals still clean up
    _libc = None


def die_with_parent() -> None:
    """In a child (preexec_fn): get SIGKILL when the thread that started us goes."""
    if _libc is not None:
        _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def kill_group(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    """SIGKILL a child started with start_new_session=True, and everything it started."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        pass
