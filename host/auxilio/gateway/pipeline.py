"""One loop turn of the gateway, by phase: route, verify, refresh state, decide, build, commit, acks.

The service (service.py) owns MQTT and hands every message read in a turn to
Pipeline.process(); what comes back is the ACKs to publish, the status and
attend messages to handle, and which MQTT messages to PUBACK. Nothing here
talks to the broker, and one bad message can only ever cost its own
processing: every message is validated and counted by reason, and what
cannot be used is PUBACKed and kept as a dead letter (issue 8 §1).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.exc import DBAPIError

from auxilio.gateway import disposition as D
from auxilio.gateway import records as R
from auxilio.gateway import verifier as V
from auxilio.gateway.obs import RateLimitedLog
from auxilio.gateway.seal import RowSealer
from auxilio.gateway.store import Batch, Conflicts, FrameKey, Store
from auxilio.gateway.supervision import Supervisor
from auxilio.protocol import codec

log = logging.getLogger("auxilio.gateway")

# A message whose handling raised this many times (not a database outage) is
# dead-lettered instead of being redelivered forever.
POISON_LIMIT = 3
# Dead letters keep this many bytes of the payload (the broker caps messages anyway).
DEAD_LETTER_KEEP = 512
# At most this many dead letters per reason per minute are written; the rest
# are only counted (a flood of garbage must not become a flood of inserts).
DEAD_LETTERS_PER_MIN = 60
# A counter this far above the high-water mark is accepted but raised as COUNTER_JUMP
# (SPEC §12.2): a device that lost its counter file jumps 2^20; so does a leaked key.
COUNTER_JUMP = 1 << 16
# Lifecycle state of a cached device is re-read from the registry when older than
# this. 0: every turn reads the state and key epoch of the devices it touches (one
# indexed query per turn, not per frame), so a revoke, retire or rekey committed
# before a frame arrives decides that frame (issue 11: within 1 s of the command).
# Cost, measured by tests/bench/bench_lifecycle.py: tens of microseconds a turn.
STATE_REFRESH_S = 0.0
# How each disposition.decide action is counted in `stats` (and so in the metrics).
_STAT = {
    D.STORE: "stored",
    D.HEARTBEAT: "heartbeat",
    D.REACK: "duplicate",
    D.COLLISION: "counter_collision",
    D.REPLAY: "rejected_replay",
    D.TIME_NAK: "time_nak",
    D.IGNORE: "duplicate_heartbeat",
}


@dataclass
class Uplink:
    topic: str
    raw: bytes
    mid: int  # the MQTT message id (-1 for a frame that came as an SMS)
    verdict: V.Verdict | None = None
    decision: D.Decision | None = None
    via: str = "mqtt"  # mqtt | sms: the path that delivered this copy
    sms: Any = None  # the InboundSms it came in (gateway/sms.py)


@dataclass
class AckOut:
    """One signed ACK to publish."""

    device: V.DeviceState
    counter: int
    code: int  # the acknowledged frame's type
    disposition: str
    reason: str


@dataclass
class Turn:
    """The messages of one loop turn and what became of them."""

    now: float
    uplinks: list[Uplink] = field(default_factory=list)
    statuses: list[tuple[str, bytes]] = field(default_factory=list)
    controls: list[bytes] = field(default_factory=list)
    selftests: list[bytes] = field(default_factory=list)  # self-test requests (selftest.py)
    dead: list[dict[str, Any]] = field(default_factory=list)
    dead_committed: int = 0  # dead letters already in a committed batch
    hold: set[int] = field(default_factory=set)  # mids not to PUBACK: redelivered after resync
    sms: list[Any] = field(default_factory=list)  # every InboundSms of the turn (told when done)
    restored: list[int] = field(default_factory=list)  # devices this turn brought back


def dead_letter(source: str, topic: str, payload: bytes, reason: str, at: float) -> dict[str, Any]:
    return {
        "at": at,
        "source": source,
        "topic": topic[:256],
        "reason": reason[:64],
        "size": len(payload),
        "payload": bytes(payload[:DEAD_LETTER_KEEP]),
    }


class DeadLetterLimiter:
    """Admits at most DEAD_LETTERS_PER_MIN rows per reason per minute; counts the rest."""

    def __init__(self, stats: Counter[str], per_min: int = DEAD_LETTERS_PER_MIN) -> None:
        self.stats = stats
        self.per_min = per_min
        self._window = 0
        self._counts: Counter[str] = Counter()

    def admit(self, reason: str) -> bool:
        minute = int(time.monotonic() // 60)
        if minute != self._window:
            self._window = minute
            self._counts.clear()
        self._counts[reason] += 1
        if self._counts[reason] > self.per_min:
            self.stats["dead_letter_suppressed"] += 1
            return False
        return True


class Pipeline:
    """The phases of one turn over the registry, the verifier and supervision."""

    def __init__(
        self,
        store: Store,
        verifier: V.Verifier,
        supervisor: Supervisor,
        sealer: RowSealer,
        stats: Counter[str],
        *,
        prefix: str,
        control_topic: str,
        forwarding: bool,
        clock_synced: Callable[[], bool],
        selftest_topic: str | None = None,
    ) -> None:
        self.store = store
        self.verifier = verifier
        self.supervisor = supervisor
        self.sealer = sealer
        self.stats = stats
        self.prefix = prefix
        self.control_topic = control_topic
        self.selftest_topic = selftest_topic
        self.forwarding = forwarding
        self.clock_synced = clock_synced
        self.warn = RateLimitedLog(log)
        self.dead_limiter = DeadLetterLimiter(stats)
        self._failures: dict[int, int] = {}  # hash(payload) -> handling crashes (poison guard)

    # ------------------------------------------------------------ route ---

    def route(self, msgs: list[tuple[str, bytes, int, int]], now: float) -> Turn:
        turn = Turn(now)
        for topic, payload, mid, _qos in msgs:
            if topic.startswith(self.prefix + "/v1/") and topic.endswith("/up"):
                turn.uplinks.append(Uplink(topic, bytes(payload), mid))
            elif topic == self.control_topic:
                turn.controls.append(bytes(payload))
            elif topic == self.selftest_topic:
                turn.selftests.append(bytes(payload))
            elif topic.startswith(self.prefix + "/v1/") and topic.endswith("/status"):
                turn.statuses.append((topic, bytes(payload)))
            else:
                self.reject(turn, "other", topic, payload, "bad_topic")
        return turn

    def add_sms(self, turn: Turn, messages: list[Any]) -> None:
        """SMS bodies (SPEC §10.4) as uplinks of this turn, once the sender is the device's SIM."""
        from auxilio.gateway.sms import MAX_BODY
        from auxilio.phone import e164
        from auxilio.protocol import FrameError, sms

        for m in messages:
            turn.sms.append(m)
            self.stats["sms_received"] += 1
            topic = f"sms:{m.sender}"[:256]
            raw = m.text.encode("utf-8", "replace")
            sender = e164(m.sender)
            if len(m.text) > MAX_BODY:
                m.outcome = "sms_too_long"
            elif sender is None:
                m.outcome = "sms_bad_sender"
            else:
                try:
                    frame = sms.sms_decode(m.text)
                    device = codec.check_frame(frame)[2]
                except FrameError as exc:
                    m.outcome = "sms_" + exc.reason
                else:
                    rec = self.store.registry.get_device(device)
                    if rec is None or rec.msisdn != sender:
                        # Not the SIM registered for the device the frame names.
                        m.outcome = "sms_unknown_number"
                    elif rec.state in D.REJECTED_STATES:
                        # Out of service: refused at the door (kept as a dead letter).
                        m.outcome = "sms_device_" + rec.state
                    else:
                        up = Uplink(codec.topic(self.prefix, device, "up"), bytes(frame), -1)
                        up.via, up.sms = "sms", m
                        turn.uplinks.append(up)
                        continue
            self.reject(turn, "sms", topic, raw, m.outcome)

    def reject(self, turn: Turn, source: str, topic: str, payload: bytes, reason: str) -> None:
        """Count a message the gateway cannot use and keep it as a dead letter (rate-limited)."""
        self.stats[f"drop_{reason}"] += 1
        if self.dead_limiter.admit(reason):
            self.stats[f"dead_{reason}"] += 1
            turn.dead.append(dead_letter(source, topic, payload, reason, turn.now))

    # ----------------------------------------------------------- verify ---

    def verify(self, turn: Turn) -> None:
        synced = self.clock_synced()
        for up in turn.uplinks:
            try:
                up.verdict = self.verifier.verify(
                    V.topic_device(up.topic, self.prefix),
                    up.raw,
                    turn.now,
                    synced,
                    sms=up.via == "sms",
                )
            except DBAPIError as exc:
                # The registry failed a device lookup: transient. Hold the message
                # (no PUBACK) so the broker redelivers it after a resync.
                self.stats["registry_error"] += 1
                log.warning("gateway: registry lookup failed (%s); will retry", type(exc).__name__)
                turn.hold.add(up.mid)
                continue
            except Exception as exc:  # noqa: BLE001 - one frame must never stop the others
                self.stats["internal_error"] += 1
                log.error("gateway: verifier error (%s)", type(exc).__name__)
                key = hash(up.raw)
                self._failures[key] = self._failures.get(key, 0) + 1
                if len(self._failures) > 10_000:
                    self._failures.clear()
                if self._failures[key] < POISON_LIMIT:
                    turn.hold.add(up.mid)  # maybe transient: have it redelivered
                else:
                    self.reject(turn, "uplink", up.topic, up.raw, "poison")
                continue
            if not up.verdict.ok and up.verdict.device is None:
                self._drop(turn, up)
        # Frames of known devices that failed (a bad tag) stay until refresh(): the
        # device may have been re-keyed since it was cached.
        turn.uplinks = [
            u for u in turn.uplinks if u.verdict is not None and (u.verdict.ok or u.verdict.device)
        ]

    def _drop(self, turn: Turn, up: Uplink) -> None:
        v = up.verdict
        if up.sms is not None:
            up.sms.outcome = "sms_" + v.reason
        self.reject(turn, up.via if up.sms else "uplink", up.topic, up.raw, v.reason)
        who = codec.device_str(v.device.id) if v.device else up.topic[:80]
        self.warn.warning((who, v.reason), "gateway: %s: frame dropped (%s)", who, v.reason)

    # ---------------------------------------------------------- refresh ---

    def refresh(self, turn: Turn) -> None:
        """Re-read lifecycle state for cached devices older than STATE_REFRESH_S.

        Bad tags count too: the device may have been re-keyed since it was cached.
        """
        mono = time.monotonic()
        touched = {
            u.verdict.device.id
            for u in turn.uplinks
            if u.verdict.device is not None
            and mono - u.verdict.device.checked_at >= STATE_REFRESH_S
        }
        if touched:
            self._refresh_devices(turn, touched, mono)
        for u in turn.uplinks:
            if not u.verdict.ok:
                self._drop(turn, u)
        turn.uplinks = [u for u in turn.uplinks if u.verdict.ok]

    def _refresh_devices(self, turn: Turn, touched: set[int], mono: float) -> None:
        fresh = self.store.device_rows(sorted(touched))
        synced = self.clock_synced()
        for dev_id in touched:
            row = fresh.get(dev_id)
            dev = self.verifier.devices.get(dev_id)
            if row is None or dev is None:
                continue
            prev_gone = dev.prev is not None and row["prev_key_epoch"] != dev.prev.key_epoch
            if row["key_epoch"] != dev.key_epoch or prev_gone:
                # Re-keyed, or a replaced key's grace ended (revoke, lost, retire): verify
                # this device's frames again with the keys it has now (frames under a key
                # it no longer has now fail, as they must).
                self.verifier.forget(dev_id)
                for u in turn.uplinks:
                    if u.verdict.device is not None and u.verdict.device.id == dev_id:
                        u.verdict = self.verifier.verify(
                            V.topic_device(u.topic, self.prefix),
                            u.raw,
                            turn.now,
                            synced,
                            sms=u.via == "sms",
                        )
                continue
            dev.state, dev.heartbeat_s = row["state"], row["heartbeat_s"]
            dev.checked_at = mono
            if dev.prev is not None and turn.now >= (dev.prev.valid_until or 0):
                dev.prev = None  # past its grace: the old key is not kept in memory either
            elif dev.prev is not None:
                dev.prev.state, dev.prev.heartbeat_s = dev.state, dev.heartbeat_s
                dev.prev.checked_at = mono
            if dev.state in D.REJECTED_STATES:
                self.supervisor.forget(dev_id)  # out of service: no supervision

    # ----------------------------------------------------------- decide ---

    def decide(self, turn: Turn) -> None:
        """disposition.decide for every verified frame, after looking up taken names."""
        accepted: dict[FrameKey, Uplink] = {}
        later: list[Uplink] = []
        for u in turn.uplinks:
            v = u.verdict
            if v.window != D.NEW:
                later.append(u)
                continue
            u.decision = D.decide(
                window=D.NEW,
                heartbeat=v.heartbeat,
                device_state=v.device.state,
                clock_skewed=v.clock_skewed,
            )
            if u.decision.accepted:
                accepted[_key(v)] = u
        if not later:
            return
        stored = self.store.stored([_key(u.verdict) for u in later if not u.verdict.heartbeat])
        for u in later:
            v = u.verdict
            twin = accepted.get(_key(v))
            if twin is not None:  # an MQTT duplicate inside this very turn
                same = V.frame_identity(twin.raw) == V.frame_identity(u.raw)
                u.decision = D.decide(
                    window=v.window,
                    heartbeat=v.heartbeat,
                    device_state=v.device.state,
                    stored=D.SAME if same else D.DIFFERENT,
                    stored_disposition=twin.decision.disposition,
                )
                continue
            u.decision = self._decide_against(v, u.raw, stored.get(_key(v)))

    def _decide_against(self, v: V.Verdict, raw: bytes, row: dict[str, Any] | None) -> D.Decision:
        if row is None:
            match = D.NO_ROW
        elif row["raw"] is not None and V.frame_identity(bytes(row["raw"])) == V.frame_identity(
            raw
        ):
            match = D.SAME
        elif row["raw"] is None and row["type"] == v.type_name:
            match = D.SAME  # location erased by retention: the type is all that is left
        else:
            match = D.DIFFERENT
        return D.decide(
            window=v.window,
            heartbeat=v.heartbeat,
            device_state=v.device.state,
            stored=match,
            stored_disposition=row["disposition"] if row else None,
            stored_attended=bool(row and row["attending_at"] is not None),
        )

    def redecide(self, turn: Turn, conflicts: Conflicts) -> None:
        """Some names to store were taken (the window had not seen them): decide again."""
        for u in turn.uplinks:
            row = conflicts.rows.get(_key(u.verdict))
            if row is not None and u.decision is not None and u.decision.action == D.STORE:
                u.decision = self._decide_against(u.verdict, u.raw, row)

    # ------------------------------------------------------------ build ---

    def observe(self, turn: Turn) -> None:
        """Supervision sees the accepted frames, once per turn (SPEC §12.7: only they count)."""
        for u in turn.uplinks:
            dev = u.verdict.device
            if not u.decision.accepted or dev.state in D.REJECTED_STATES:
                continue
            interval = Supervisor.interval(dev.kind, dev.interval_s, dev.heartbeat_s)
            if self.supervisor.seen(dev.id, dev.kind, turn.now, interval):
                turn.restored.append(dev.id)

    def build(self, turn: Turn, acked: list[tuple[int, int, int, float]]) -> Batch:
        """Everything the turn writes, as one Batch (no side effects: it may be built again)."""
        batch = Batch(acked=acked, dead=list(turn.dead))
        now = turn.now
        for u in turn.uplinks:
            v, dec = u.verdict, u.decision
            dev = v.device
            if dec.action == D.COLLISION:
                self._collision(batch, u, now)
                continue
            if not dec.accepted:
                continue
            # Under the key a rekey replaced (its grace), the replay state is that key's.
            grace = dev.valid_until is not None
            (batch.prev_devices if grace else batch.devices)[dev.id] = {
                "high_water": dev.high_water,
                "window": dev.window,
                "last_seen": now,
                "epoch": dev.key_epoch,  # written only while the row still holds this epoch
            }
            if v.heartbeat:
                batch.health[dev.id] = _health(v.fields, now)
            if _jumped(v):
                batch.events.append(
                    R.event_row(
                        dev.id,
                        R.COUNTER_JUMP,
                        now,
                        {"from": v.prev_high_water, "to": v.counter, "type": v.type_name},
                    )
                )
            if dec.action == D.STORE:
                self._store(batch, u, now)
        for dev_id in turn.restored:
            batch.events.append(R.event_row(dev_id, R.SUPERVISION_RESTORED, now))
            self._forward(batch, R.event_record(dev_id, R.SUPERVISION_RESTORED, now, {}), now)
        return batch

    def committed(self, turn: Turn) -> None:
        """Counts and log lines for a turn whose batch is durable."""
        for u in turn.uplinks:
            v, dec = u.verdict, u.decision
            dev = v.device
            self.stats[_STAT[dec.action]] += 1
            if dec.action == D.STORE and v.test:
                self.stats["test"] += 1
            if u.sms is not None:
                u.sms.outcome = "sms_" + _STAT[dec.action]
                self.stats[u.sms.outcome] += 1
            who = codec.device_str(dev.id)
            if dec.action == D.REPLAY:
                self.warn.warning(
                    (dev.id, "replay"), "gateway: %s #%d: replay rejected", who, v.counter
                )
            elif dec.action == D.COLLISION:
                self.warn.warning(
                    (dev.id, "collision"),
                    "gateway: %s #%d: counter reused by a different frame (COUNTER_COLLISION); "
                    "told to resynchronise above %d",
                    who,
                    v.counter,
                    dev.high_water,
                )
            elif dec.action == D.STORE and dec.disposition == "rejected":
                self.warn.warning(
                    (dev.id, "rejected"),
                    "gateway: %s #%d: rejected (%s)",
                    who,
                    v.counter,
                    dec.reason,
                )
            if dec.accepted and _jumped(v):
                self.stats["counter_jump"] += 1
                log.warning(
                    "gateway: %s: counter jumped from %d to %d (%s): a lost counter file, or a "
                    "leaked key",
                    who,
                    v.prev_high_water,
                    v.counter,
                    v.type_name,
                )

    def _store(self, batch: Batch, u: Uplink, now: float) -> None:
        v, dec = u.verdict, u.decision
        dev = v.device
        pressed = v.fields.get("pressed_at")
        batch.alerts.append(
            {
                "device_id": dev.id,
                "key_epoch": dev.key_epoch,
                "counter": v.counter,
                "type": v.type_name,
                "flags": v.flags,
                "device_ts": v.timestamp,
                "pressed_at": pressed,
                "payload": v.fields,
                "raw": u.raw,  # as received: ALERT/TEST payloads stay ciphertext
                "gw_seal": self.sealer.seal(dev.id, dev.key_epoch, v.counter, u.raw),
                "received_at": now,
                "disposition": dec.disposition,
                "via": u.via,
                "test": v.test,
                "lost": dev.state == "lost",
            }
        )
        if v.code == codec.CANCEL and dec.disposition == "received":
            batch.cancels.append((dev.id, dev.key_epoch, v.fields["ref_counter"], now))
        ref = {"counter": v.counter, "type": v.type_name}
        if dec.disposition == "rejected":
            batch.events.append(R.event_row(dev.id, "REJECTED", now, {**ref, "reason": dec.reason}))
            self._forward(
                batch,
                R.event_record(
                    dev.id,
                    "REJECTED",
                    now,
                    {"reason": dec.reason, "type": v.type_name},
                    dev.key_epoch,
                    v.counter,
                ),
                now,
            )
            return
        if dev.state == "lost":
            batch.events.append(R.event_row(dev.id, "LOST_DEVICE", now, ref))
            if not v.test:
                self._forward(
                    batch,
                    R.event_record(
                        dev.id, "LOST_DEVICE", now, {"type": v.type_name}, dev.key_epoch, v.counter
                    ),
                    now,
                )
        if v.test:
            return
        if v.code in R.EVENT_TYPES:
            etype = R.EVENT_TYPES[v.code]
            batch.events.append(R.event_row(dev.id, etype, now, {**ref, **v.fields}))
            self._forward(
                batch,
                R.event_record(dev.id, etype, now, v.fields, dev.key_epoch, v.counter),
                now,
            )
        elif v.code in R.ALERT_TYPES and self.forwarding:
            # The record itself is built from the alert row at delivery (Store.
            # forward_pending): the hot commit writes only its name.
            batch.forward.append(
                alert_forward_row(dev.id, dev.key_epoch, v.counter, now, dev.label)
            )

    def _collision(self, batch: Batch, u: Uplink, now: float) -> None:
        """A genuine frame under a name another frame holds: evidence, never a duplicate."""
        v = u.verdict
        dev = v.device
        batch.events.append(
            R.event_row(
                dev.id,
                R.COUNTER_COLLISION,
                now,
                {
                    "counter": v.counter,
                    "epoch": dev.key_epoch,
                    "type": v.type_name,
                    "fields": v.fields,
                    "raw_hex": u.raw.hex(),
                    "high_water": dev.high_water,
                },
            )
        )

    def _forward(self, batch: Batch, record: dict[str, Any], now: float) -> None:
        if not self.forwarding:
            return
        batch.forward.append(forward_row(record, now))

    # ------------------------------------------------------------- acks ---

    def tests_stored(self, turn: Turn) -> list[V.Verdict]:
        """The TEST frames this (committed) turn stored and acked `received` (selftest.py)."""
        return [
            u.verdict
            for u in turn.uplinks
            if u.decision is not None
            and u.decision.action == D.STORE
            and u.decision.disposition == "received"
            and u.verdict.code == codec.TEST
        ]

    def acks(self, turn: Turn) -> list[AckOut]:
        out = []
        for u in turn.uplinks:
            dec = u.decision
            if dec is None or dec.disposition is None:
                continue
            v = u.verdict
            out.append(AckOut(v.device, v.counter, v.code, dec.disposition, dec.reason))
            self.stats["ack_" + dec.disposition] += 1
        return out


def alert_forward_row(
    device: int, epoch: int, counter: int, now: float, label: str | None = None
) -> dict[str, Any]:
    """An alert's forward_outbox row: its name only; the record is built from the alert row
    at delivery (Store.forward_pending), so the hot commit encodes the fields once."""
    return {
        "key": f"alert:{label or codec.device_str(device)}:{epoch}:{counter}",
        "device_id": device,
        "key_epoch": epoch,
        "counter": counter,
        "body": None,
        "created_at": now,
        "next_attempt_at": now,
    }


def forward_row(record: dict[str, Any], now: float) -> dict[str, Any]:
    """A forward_outbox row for one record (written in the same transaction as its frame)."""
    record = dict(record)
    device_id = record.pop("device_id")
    return {
        "key": record["key"],
        "device_id": device_id,
        "key_epoch": record.get("epoch"),
        "counter": record.get("counter"),
        "body": json.dumps(record, separators=(",", ":")),
        "created_at": now,
        "next_attempt_at": now,
    }


# What devices.health keeps of a HEARTBEAT (SPEC §8.3): its decoded fields, no more.
HEALTH_FIELDS = ("battery", "rssi", "bearer", "outbox", "fw", "status", "modem_fault", "interval_s")


def _health(fields: dict[str, Any], now: float) -> dict[str, Any]:
    """The device's health as its latest accepted HEARTBEAT said, stamped with the receipt."""
    h = {k: fields.get(k) for k in HEALTH_FIELDS}
    h["at"] = dt.datetime.fromtimestamp(now, dt.timezone.utc).isoformat()
    return h


def _jumped(v: V.Verdict) -> bool:
    """An accepted counter far above the high-water mark (SPEC §12.2 COUNTER_JUMP)."""
    return v.counter - max(v.prev_high_water, 0) > COUNTER_JUMP


def _key(v: V.Verdict) -> FrameKey:
    return (v.device.id, v.device.key_epoch, v.counter)
