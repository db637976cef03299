"""Crash points for the durability and chaos tests: where a gateway may die, and how.

The gateway calls its crash hook at each point a crash could lose something:
``before_commit``, ``after_commit``, ``during_ack`` (after the first ACK of a
batch), and in the forwarder ``after_forward`` (the sink confirmed a record)
and ``before_mark`` (just before marking records delivered). In production
the hook does nothing. ``$AUXILIO_GATEWAY_CRASH_AT=<point>`` makes the process
SIGKILL itself there (the real kill -9 tests); the in-process chaos test
injects a hook that raises SimulatedCrash instead.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable

CRASH_ENV = "AUXILIO_GATEWAY_CRASH_AT"
POINTS = ("before_commit", "after_commit", "during_ack", "after_forward", "before_mark")

CrashHook = Callable[[str], None]


class SimulatedCrash(BaseException):
    """Raised by a test's crash hook: a BaseException, so no `except Exception` survives it."""


def env_crash_hook() -> CrashHook:
    """SIGKILL this process at the point named by $AUXILIO_GATEWAY_CRASH_AT (tests only)."""
    point = os.environ.get(CRASH_ENV, "")

    def crash(at: str) -> None:
        if point and at == point:
            os.kill(os.getpid(), signal.SIGKILL)

    return crash
