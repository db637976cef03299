"""Supervision: notice devices that go silent (SUPERVISION_LOST) and come back (RESTORED), SPEC §12.7."""

from __future__ import annotations

from dataclasses import dataclass

# Role defaults when neither a heartbeat nor a CONFIG gave the interval (SPEC §12.7).
ROLE_INTERVAL_S = {"bracelet": 900, "button": 60}
# Missed-heartbeat factor: 2.5 intervals tolerate one lost heartbeat plus jitter.
MISSED_FACTOR = 2.5
# Extra slack for broker/network hiccups before a device is declared lost.
GRACE_S = 30.0


@dataclass
class Track:
    kind: str
    last: float  # wall time of the last verified frame
    interval: float
    lost: bool = False
    offline_at: float | None = None  # LWT 'offline' hint (unauthenticated, SPEC §10.2)


class Supervisor:
    """Deadline bookkeeping; the service turns the returned transitions into events."""

    def __init__(self, grace_s: float = GRACE_S) -> None:
        self.grace_s = grace_s
        self.tracks: dict[int, Track] = {}

    @staticmethod
    def interval(kind: str, heartbeat_interval: int | None, config_interval: int | None) -> float:
        return float(heartbeat_interval or config_interval or ROLE_INTERVAL_S.get(kind, 60))

    def deadline(self, t: Track) -> float:
        d = t.last + t.interval * MISSED_FACTOR + self.grace_s
        if t.offline_at is not None and t.offline_at >= t.last:
            # The broker saw the link die: do not wait the full 2.5 intervals,
            # but give it one interval plus grace to come back (a hint only).
            d = min(d, t.offline_at + t.interval + self.grace_s)
        return d

    def load(self, device: int, kind: str, last: float, interval: float, lost: bool) -> None:
        self.tracks[device] = Track(kind, last, interval, lost)

    def seen(self, device: int, kind: str, now: float, interval: float) -> bool:
        """A verified frame arrived; True if that restores a lost device."""
        t = self.tracks.get(device)
        if t is None:
            self.tracks[device] = Track(kind, now, interval)
            return False
        restored = t.lost
        t.last, t.interval, t.lost, t.offline_at = max(t.last, now), interval, False, None
        return restored

    def status(self, device: int, online: bool, now: float) -> None:
        """An LWT/online hint. Only `offline` moves the deadline closer; `online` is
        unauthenticated, so it never clears the hint: an accepted frame does (SPEC §12.7)."""
        t = self.tracks.get(device)
        if t is not None and not online:
            t.offline_at = now

    def forget(self, device: int) -> None:
        self.tracks.pop(device, None)

    def due(self, now: float) -> list[int]:
        """Devices that just crossed their deadline (each reported once until restored)."""
        out = []
        for dev, t in self.tracks.items():
            if not t.lost and now > self.deadline(t):
                t.lost = True
                out.append(dev)
        return out
