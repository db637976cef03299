"""The host HAL control channel for tests: the library's server plus the queries tests ask of it.

Firmware run under micropython with ``AUXILIO_HAL_CONTROL=<server.address>`` connects
here (auxilio.emulator.control); tests press buttons, set the battery or mains,
and read back the device's own events (feedback patterns, states, logs)::

    ctl = ControlServer()
    ...start the firmware with AUXILIO_HAL_CONTROL=ctl.address...
    ctl.hold(2300)                                   # the bracelet's alert gesture
    ctl.wait_event(ev="state", name="acked")         # waits on the event, never a sleep
"""

from __future__ import annotations

import time
from typing import Any

from auxilio.emulator.control import ControlServer as _Server
from auxilio.emulator.control import Event
from auxilio.testing.wait import wait_for

# How long a command waits for the firmware to (re)connect to the channel.
CONNECT_S = 30.0
# Pause after a release: a new press closer than the firmware's debounce time (30 ms)
# would merge with this one; this leaves room for a busy 2-core machine's jitter.
PRESS_GAP_S = 0.3

__all__ = ["CONNECT_S", "PRESS_GAP_S", "ControlServer", "Event"]


class ControlServer(_Server):
    """auxilio.emulator.control.ControlServer with waiting commands and event queries."""

    def send(self, op: str, dev: int = 0, **fields: Any) -> bool:
        """Send one command, waiting (bounded) for the firmware to be connected first."""
        wait_for(
            lambda: super(ControlServer, self).send(op, dev, **fields),
            CONNECT_S,
            f"the firmware to take {op!r} on the control channel",
        )
        return True

    def matching(self, since: int = 0, **fields: Any) -> list[Event]:
        """Events after `since` (a mark()) with these field values, oldest first."""
        return [e for e in self.events(since) if all(e.get(k) == v for k, v in fields.items())]

    def logs(self) -> list[str]:
        """The firmware's log lines, in order."""
        return [e["msg"] for e in self.matching(ev="log")]

    def hold(self, ms: int, dev: int = 0, gap: float = PRESS_GAP_S) -> None:
        """Press for ms, release, then pause `gap` s (the press length is the stimulus)."""
        self.send("press", dev)
        time.sleep(ms / 1000)  # the stimulus itself: how long the finger stays down
        self.send("release", dev)
        time.sleep(gap)  # a human's pause before anything else touches the button
