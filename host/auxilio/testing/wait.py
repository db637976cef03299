"""Waiting on a condition, never a fixed sleep: the one helper every test uses."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

# Default bound and polling period; a busy 2-core machine needs the generous bound.
WAIT_S = 20.0
POLL_S = 0.02


def wait_for(
    cond: Callable[[], T], timeout: float = WAIT_S, what: str = "condition", poll: float = POLL_S
) -> T:
    """Return cond()'s first truthy value; AssertionError naming `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(poll)
