"""Wait until a virtual board's firmware reports a state (`auxilio vboard wait`).

Scripts and the README's quick start need "the board is on the broker" and "the
C4 acknowledged the alert I just raised" without guessing a sleep. The firmware
reports both as ``state`` events (firmware/hal/host.py): the link as
``connected``/``disconnected``, each frame as ``queued`` → ``sent`` → ``acked``
(or ``attending``, ``rejected``, ``sms``) with its counter. Past events count,
so a wait that starts after the ACK arrived still returns at once.
"""

from __future__ import annotations

import time
from typing import Any

from auxilio.errors import AuxilioError, NotFoundError, UsageError

LINK_STATES = ("connected", "disconnected")
FRAME_STATES = ("queued", "sent", "acked", "attending", "rejected", "sms", "cancelled")
STATES = LINK_STATES + FRAME_STATES
# How often the events are read again; the admin channel answers in well under this.
POLL_S = 0.1
# Events read each time: the last alert's life is a handful of them.
WINDOW = 500


def reached(events: list[dict[str, Any]], state: str) -> dict[str, Any] | None:
    """The event showing `state` now, or None.

    A link state is the latest link event. A frame state belongs to the latest
    frame queued: an ``acked`` of an earlier frame never answers for this one.
    """
    states = [e for e in events if e.get("ev") == "state"]
    if state in LINK_STATES:
        link = [e for e in states if e.get("name") in LINK_STATES]
        return link[-1] if link and link[-1]["name"] == state else None
    last_queued = max((i for i, e in enumerate(states) if e.get("name") == "queued"), default=-1)
    if last_queued < 0:
        return None
    counter = states[last_queued].get("counter")
    for e in states[last_queued + 1 :]:
        if e.get("name") == state and e.get("counter") == counter:
            return e
    return None


def wait_state(name: str | None, state: str, timeout: float) -> dict[str, Any]:
    """Block until the board `name` reports `state`; UsageError after `timeout` seconds.

    A board that is not running yet (its emulator still starting) is waited for
    too, so `auxilio emulate … & auxilio vboard wait connected` just works.
    """
    from auxilio.emulator.admin import AdminClient

    if state not in STATES:
        raise UsageError(f"unknown state {state!r} (one of: {', '.join(STATES)})")
    deadline = time.monotonic() + timeout
    last = "no board yet"
    while True:
        try:
            events = AdminClient(name).call("events", last=WINDOW)["events"]
            hit = reached(events, state)
            if hit is not None:
                return hit
            seen = [e["name"] for e in events if e.get("ev") == "state"]
            last = seen[-1] if seen else "no state reported yet"
        except NotFoundError:
            pass
        except UsageError:  # several boards and no --name, a refused request: waiting won't help
            raise
        except AuxilioError as exc:  # the board went away mid-wait: say so, then keep trying
            last = str(exc)
        if time.monotonic() >= deadline:
            raise UsageError(f"timed out after {timeout:g} s waiting for {state} (last: {last})")
        time.sleep(POLL_S)
