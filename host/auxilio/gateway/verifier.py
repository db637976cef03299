"""Frame verification for the gateway: structure, device, tag, state, replay window, clock (SPEC §11-12).

Pure logic, no I/O: the service loads device state through a callback and turns
each Verdict into database rows and ACKs. Check order and why:
structure -> topic/header device match -> known device (no key otherwise) ->
tag + decrypt (nothing unauthenticated is ever recorded or acked) -> lifecycle
state -> counter window -> timestamp window (only with clock_synced).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from auxilio.gateway import replay
from auxilio.protocol import FrameError, codec

log = logging.getLogger(__name__)

# Timestamp window for clock-synced frames (alarm-industry practice, SPEC §12.2):
# a frame may be at most this far behind / ahead of server time.
CLOCK_BEHIND_S = 40
CLOCK_AHEAD_S = 20

# Verdict actions
DROP = "drop"  # counted, nothing stored, no ACK
STORE = "store"  # new frame: record it, then ACK with .disposition/.reason
DUPLICATE = "duplicate"  # already seen in the window: re-ACK the stored disposition
BELOW = "below"  # older than the window: re-ACK if stored, else REJECTED/replay
TIME_NAK = "time_nak"  # clock outside the window: ACK time_nak, nothing stored
HEARTBEAT = "heartbeat"  # update health, no ACK (protocol notes)

# Lifecycle states whose frames are rejected (and reported), with the wire reason.
REJECTED_STATES = {"revoked": "revoked", "retired": "retired"}


@dataclass
class DeviceState:
    """What the gateway keeps in memory about one device (replay state is authoritative here)."""

    id: int
    kind: str
    state: str
    keys: Any  # codec.Keys; never logged
    high_water: int = 0
    window: int = 0
    heartbeat_s: int | None = None  # from the registry (CONFIG)
    interval_s: int | None = None  # from the last heartbeat
    key_epoch: int = 0
    checked_at: float = 0.0  # monotonic time the lifecycle state was read

    def __repr__(self) -> str:  # keep keys out of any accidental log line
        return f"DeviceState({codec.device_str(self.id)}, {self.kind}, {self.state})"


@dataclass
class Verdict:
    action: str
    reason: str = "none"  # drop reason (stats) or wire reject reason
    device: DeviceState | None = None
    code: int = 0
    flags: int = 0
    counter: int = 0
    timestamp: int = 0
    fields: dict[str, Any] = field(default_factory=dict)
    disposition: str = "received"

    @property
    def type_name(self) -> str:
        return codec.TYPES[self.code][0] if self.code in codec.TYPES else "?"

    @property
    def test(self) -> bool:
        return self.code == codec.TEST or bool(self.flags & codec.FLAG_TEST)


def topic_device(topic: str | bytes, prefix: str) -> str | None:
    """'<prefix>/v1/<XXXX-XXXX>/<leaf>' -> 'XXXX-XXXX', else None."""
    if isinstance(topic, bytes):
        try:
            topic = topic.decode()
        except UnicodeDecodeError:
            return None
    parts = topic.split("/")
    if len(parts) != 4 or parts[0] != prefix or parts[1] != "v1":
        return None
    return parts[2]


class Verifier:
    """Classifies uplink frames; owns the in-memory replay windows."""

    def __init__(self, load_device: Callable[[int], DeviceState | None]) -> None:
        self._load = load_device
        self.devices: dict[int, DeviceState] = {}
        self._out = bytearray(codec.MAX_PAYLOAD)

    def device(self, device_id: int) -> DeviceState | None:
        d = self.devices.get(device_id)
        if d is None:
            d = self._load(device_id)
            if d is not None:
                self.devices[device_id] = d
        return d

    def forget(self, device_id: int | None = None) -> None:
        """Drop cached state (after a failed commit, or a key change) so it reloads from the registry."""
        if device_id is None:
            self.devices.clear()
        else:
            self.devices.pop(device_id, None)

    def verify(self, topic_dev: str | None, frame: bytes, now: float) -> Verdict:
        try:
            code, flags, dev_id, counter, ts, _n = codec.check_frame(frame)
        except FrameError as exc:
            return Verdict(DROP, exc.reason)
        if code & codec.DOWNLINK:
            return Verdict(DROP, "downlink_on_uplink")
        try:
            if topic_dev is None or codec.device_int(topic_dev) != dev_id:
                return Verdict(DROP, "topic_mismatch")
        except FrameError:
            return Verdict(DROP, "topic_mismatch")
        dev = self.device(dev_id)
        if dev is None:
            return Verdict(DROP, "unknown_device")
        out = self._out
        try:
            code, flags, dev_id, counter, ts, n = codec.verify_into(frame, dev.keys, out)
            fields = codec.unpack_payload(code, out, n)
        except FrameError as exc:
            return Verdict(DROP, exc.reason, device=dev)
        v = Verdict(
            STORE,
            device=dev,
            code=code,
            flags=flags,
            counter=counter,
            timestamp=ts,
            fields=fields,
        )
        cls = replay.check(dev.high_water, dev.window, counter)
        if cls == replay.SEEN:
            v.action = DUPLICATE
            return v
        if cls == replay.BELOW:
            v.action = BELOW
            return v
        if flags & codec.FLAG_CLOCK_SYNCED:
            skew = ts - now
            if skew < -CLOCK_BEHIND_S or skew > CLOCK_AHEAD_S:
                v.action = TIME_NAK
                v.disposition = "time_nak"
                return v
        # Accepted from here on: the counter is consumed.
        dev.high_water, dev.window = replay.mark(dev.high_water, dev.window, counter)
        if code == codec.HEARTBEAT:
            v.action = HEARTBEAT
            interval = fields.get("interval_s")
            if interval:
                dev.interval_s = int(interval)
            return v
        reject = REJECTED_STATES.get(dev.state)
        if reject is not None:
            v.disposition = "rejected"
            v.reason = reject
        return v
