"""Frame verification for the gateway: structure, device, tag, state, replay window, clock (SPEC §11-12).

Pure logic, no I/O: the service loads device state through a callback and turns
each Verdict into database rows and ACKs. Check order and why:
structure -> topic/header device match -> known device (no key otherwise) ->
tag + decrypt (nothing unauthenticated is ever recorded or acked) -> counter
window -> timestamp window (only with clock_synced, and only when the
gateway's own clock is synced). What to answer is disposition.decide's job.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from auxilio.gateway import disposition, replay
from auxilio.protocol import FrameError, codec

log = logging.getLogger(__name__)

# Timestamp window for clock-synced frames (alarm-industry practice, SPEC §12.2):
# a frame may be at most this far behind / ahead of server time.
CLOCK_BEHIND_S = 40
CLOCK_AHEAD_S = 20
# SMS is store-and-forward: an operator SMSC may hold a message for minutes, so a
# frame that came as an SMS may be this much older (SPEC §10.4; the counter
# window still stops replays).
CLOCK_BEHIND_SMS_S = 900

# Drop reasons that are not the codec's (SPEC §11 codes come from FrameError.reason).
DOWNLINK_ON_UPLINK = "downlink_on_uplink"
TOPIC_MISMATCH = "topic_mismatch"
UNKNOWN_DEVICE = "unknown_device"


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
    key_epoch: int = 1
    checked_at: float = 0.0  # monotonic time the lifecycle state was read
    label: str = ""  # printed id (SPEC §2), computed once
    # The key a rekey replaced, during its grace (SPEC §12.1): frames that verify only
    # under it are this device's too, under that epoch with its own replay state.
    prev: DeviceState | None = None
    valid_until: float | None = None  # (prev only) unix time the grace ends

    def __post_init__(self) -> None:
        self.label = codec.device_str(self.id)

    def __repr__(self) -> str:  # keep keys out of any accidental log line
        return f"DeviceState({codec.device_str(self.id)}, {self.kind}, {self.state})"


@dataclass
class Verdict:
    """One uplink frame after verification: dropped (reason), or verified with its facts."""

    ok: bool
    reason: str = "none"  # drop reason when not ok
    device: DeviceState | None = None
    code: int = 0
    flags: int = 0
    counter: int = 0
    timestamp: int = 0
    fields: dict[str, Any] = field(default_factory=dict)
    window: str = disposition.NEW  # the counter's place in the replay window
    clock_skewed: bool = False
    prev_high_water: int = -1  # the device's high-water mark before this frame

    @property
    def type_name(self) -> str:
        return codec.TYPES[self.code][0] if self.code in codec.TYPES else "?"

    @property
    def test(self) -> bool:
        return self.code == codec.TEST or bool(self.flags & codec.FLAG_TEST)

    @property
    def heartbeat(self) -> bool:
        return self.code == codec.HEARTBEAT


def frame_identity(raw: bytes) -> bytes:
    """What must match for two frames with one name to be the same frame (SPEC §12.2):
    type, test flag and payload bytes; a retransmission changes only timestamp,
    clock_synced and retransmission flags (§12.3)."""
    return bytes((raw[1], raw[2] & codec.FLAG_TEST)) + bytes(raw[codec.HEADER_LEN : -codec.TAG_LEN])


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

    def verify(
        self,
        topic_dev: str | None,
        frame: bytes,
        now: float,
        clock_synced: bool = True,
        sms: bool = False,
    ) -> Verdict:
        """Verify one uplink; an accepted counter (SPEC §12.2 rules 3-4) is consumed here.

        clock_synced: the gateway's own clock is synchronised, so the frame's
        timestamp can be judged (SPEC §8.9).
        """
        try:
            code, flags, dev_id, counter, ts, _n = codec.check_frame(frame)
        except FrameError as exc:
            return Verdict(False, exc.reason)
        if code & codec.DOWNLINK:
            return Verdict(False, DOWNLINK_ON_UPLINK)
        try:
            if topic_dev is None or codec.device_int(topic_dev) != dev_id:
                return Verdict(False, TOPIC_MISMATCH)
        except FrameError:
            return Verdict(False, TOPIC_MISMATCH)
        dev = self.device(dev_id)
        if dev is None:
            return Verdict(False, UNKNOWN_DEVICE)
        out = self._out
        try:
            try:
                code, flags, dev_id, counter, ts, n = codec.verify_into(frame, dev.keys, out)
            except FrameError as exc:
                old = dev.prev
                if exc.reason != "bad_tag" or old is None or not now < (old.valid_until or 0):
                    raise
                # Not the current key: the replaced one, while its grace lasts (past
                # it, the frame is bad_tag like any other key the C4 no longer holds).
                code, flags, dev_id, counter, ts, n = codec.verify_into(frame, old.keys, out)
                old.state, old.heartbeat_s = dev.state, dev.heartbeat_s
                dev = old
            fields = codec.unpack_payload(code, out, n)
        except FrameError as exc:
            return Verdict(False, exc.reason, device=dev)
        v = Verdict(
            True,
            device=dev,
            code=code,
            flags=flags,
            counter=counter,
            timestamp=ts,
            fields=fields,
            window=replay.check(dev.high_water, dev.window, counter),
            prev_high_water=dev.high_water,
        )
        if clock_synced and flags & codec.FLAG_CLOCK_SYNCED:
            skew = ts - now
            behind = CLOCK_BEHIND_SMS_S if sms else CLOCK_BEHIND_S
            v.clock_skewed = skew < -behind or skew > CLOCK_AHEAD_S
        if v.window == disposition.NEW and (v.heartbeat or not v.clock_skewed):
            # Accepted (disposition.decide agrees): the counter is consumed.
            dev.high_water, dev.window = replay.mark(dev.high_water, dev.window, counter)
            if v.heartbeat and fields.get("interval_s"):
                dev.interval_s = int(fields["interval_s"])
        return v
