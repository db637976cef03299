"""The gateway's side of a device self-test: validate the request, sign the CONFIG, report.

Operators and provisioning stations hold no device key (DESIGN §1). They
publish on ``<prefix>/c4/selftest``::

    {"request": id, "device": "XXXX-XXXX", "mode": "now" | "window", "seconds": N}

and read the answers on ``<prefix>/c4/selftest/result/<request>``, in order:

- ``sent``: the gateway took a new config sequence from the registry (SPEC
  §12.6), signed the CONFIG (``selftest = 1`` for ``now``, ``test_window_s = N``
  for ``window``, SPEC §8.10.1) and the broker confirmed the downlink;
- ``received``: a TEST frame from that device was verified, stored and acked.
  It carries ``round_trip_ms`` (request -> TEST stored) and, for ``window``,
  ``press_to_store_ms`` (the press on the device clock -> stored; 1 s
  resolution, since ``pressed_at`` is whole seconds; null without a clock);
- ``failed`` with a reason (``unknown_device``, ``device_revoked``, ...), or
  ``missed``: no TEST came back within the deadline (a SELFTEST_MISSED event).

Each request and each miss is an event row (SELFTEST_REQUESTED,
SELFTEST_MISSED) so that the monitor and `auxilio report` show them; a miss
is also forwarded to the C4 like a supervision loss. The TEST frame itself is
never forwarded (pipeline.py).
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from typing import Any

from auxilio.gateway.attend import BadRequest, operator_and_request, read_request
from auxilio.gateway.records import event_row
from auxilio.protocol import codec

__all__ = ["BadRequest", "Request", "SelftestDesk", "parse_request"]

CONTROL_LEAF = "c4/selftest"  # <prefix>/c4/selftest
RESULT_LEAF = "c4/selftest/result"  # <prefix>/c4/selftest/result/<request>
MAX_REQUEST_BYTES = 512  # a JSON object with four short fields
MODES = ("now", "window")
# SPEC §8.10.1: devices cap a window at this; the gateway refuses more.
WINDOW_MAX_S = 600
WINDOW_DEFAULT_S = 120
# How long a "now" self-test may take to come back before it counts as missed:
# a device on LTE with PSM or a long MQTT backoff may need a couple of minutes.
NOW_DEADLINE_S = 180.0
# A window's TEST may come until the window closes, plus this for delivery.
WINDOW_MARGIN_S = 60.0
# Bounds on requests waiting for their TEST: an operator login that floods the topic
# costs registry writes and downlinks, so it is refused past these.
MAX_PENDING = 10_000
MAX_PENDING_PER_DEVICE = 4
# Result states, in the order a request passes through them.
SENT, RECEIVED, FAILED, MISSED = "sent", "received", "failed", "missed"
# Event types (events table).
SELFTEST_REQUESTED = "SELFTEST_REQUESTED"
SELFTEST_MISSED = "SELFTEST_MISSED"


@dataclass(frozen=True)
class Request:
    request: str
    device: int
    mode: str
    seconds: int
    operator: str = "operator"
    scheduled: bool = False


def parse_request(payload: bytes) -> Request:
    """Validate a self-test request; BadRequest(reason) for anything else (never another error)."""
    obj = read_request(payload, MAX_REQUEST_BYTES)
    dev = obj.get("device")
    try:
        device = codec.device_int(dev) if isinstance(dev, str) else None
    except codec.FrameError:
        device = None
    if device is None:
        raise BadRequest("bad_device_id")
    mode = obj.get("mode", "now")
    if mode not in MODES:
        raise BadRequest("bad_mode")
    seconds = obj.get("seconds", WINDOW_DEFAULT_S if mode == "window" else 0)
    if mode == "window" and (
        not isinstance(seconds, int)
        or isinstance(seconds, bool)
        or not 1 <= seconds <= WINDOW_MAX_S
    ):
        raise BadRequest("bad_seconds")
    operator, request = operator_and_request(obj)
    return Request(request, device, mode, seconds if mode == "window" else 0, operator)


def config_fields(req: Request, seq: int, now: float) -> dict[str, Any]:
    """The CONFIG (SPEC §8.10) that asks req's device for its TEST frame."""
    fields: dict[str, Any] = {
        "type": "CONFIG",
        "device": req.device,
        "counter": seq,  # §12.6: the config sequence number
        "timestamp": int(now),
    }
    if req.mode == "now":
        fields["selftest"] = 2 if req.scheduled else 1  # §8.10.1: scheduled ones stay silent
    else:
        fields["test_window_s"] = req.seconds
    return fields


@dataclass
class Pending:
    """A request whose TEST has not come back yet."""

    req: Request
    at: float  # when the gateway took the request
    deadline: float
    seq: int = 0
    sent: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


def deadline_for(req: Request, now: float) -> float:
    if req.mode == "window":
        return now + req.seconds + WINDOW_MARGIN_S
    return now + NOW_DEADLINE_S


def result(req: Request, state: str, reason: str = "", **extra: Any) -> dict[str, Any]:
    return {
        "request": req.request,
        "device": codec.device_str(req.device),
        "mode": req.mode,
        "state": state,
        "reason": reason,
        **extra,
    }


def received(p: Pending, now: float, counter: int, pressed_at: int | None) -> dict[str, Any]:
    """The `received` answer for a stored TEST frame: round trip and press-to-store, in ms."""
    press = None
    if p.req.mode == "window" and pressed_at:
        press = round(max(0.0, now - pressed_at) * 1000.0, 1)
    return result(
        p.req,
        RECEIVED,
        counter=counter,
        config_seq=p.seq,
        round_trip_ms=round((now - p.at) * 1000.0, 3),
        press_to_store_ms=press,
    )


def actor_for(req: Request) -> str:
    """The audit actor: the operator's name as the registry accepts it."""
    name = re.sub(r"[^\w.@:+-]", "_", req.operator)[:48] or "operator"
    return ("scheduler" if req.scheduled else "selftest:" + name)[:64]


class SelftestDesk:
    """Requests waiting for their TEST frame: in memory, and durable as their
    SELFTEST_REQUESTED event (with its deadline), from which a restarted gateway reloads them."""

    def __init__(self, registry: Any, verifier: Any, deadline_s: float | None = None) -> None:
        self.registry = registry
        self.verifier = verifier
        self.deadline_s = deadline_s  # overrides NOW_DEADLINE_S (tests, scheduled runs)
        self.pending: dict[str, Pending] = {}

    def take(self, req: Request, now: float) -> tuple[Pending | None, Any, dict[str, Any] | None]:
        """(the pending request, its device, None) to sign and send, or (None, None, a result)."""
        if req.request in self.pending:
            return None, None, None  # redelivered: its answers are on their way
        mine = sum(1 for p in self.pending.values() if p.req.device == req.device)
        if mine >= MAX_PENDING_PER_DEVICE or len(self.pending) >= MAX_PENDING:
            return None, None, result(req, FAILED, "too_many_requests")
        rec = self.registry.get_device(req.device)  # the state now, not a cached one
        if rec is None:
            return None, None, result(req, FAILED, "unknown_device")
        if rec.state in ("revoked", "retired", "lost"):
            return None, None, result(req, FAILED, "device_" + rec.state)
        dev = self.verifier.device(req.device)
        if dev is not None and dev.key_epoch != rec.key_epoch:  # re-keyed since it was cached
            self.verifier.forget(req.device)
            dev = self.verifier.device(req.device)
        if dev is None:
            return None, None, result(req, FAILED, "no_device_key")
        detail = f"selftest mode={req.mode}" + (f" seconds={req.seconds}" if req.seconds else "")
        deadline = deadline_for(req, now)
        if self.deadline_s is not None and req.mode == "now":
            deadline = now + self.deadline_s

        def event(seq: int) -> dict[str, Any]:
            return event_row(
                req.device,
                SELFTEST_REQUESTED,
                now,
                {
                    "request": req.request,
                    "mode": req.mode,
                    "seconds": req.seconds,
                    "config_seq": seq,
                    "scheduled": req.scheduled,
                    "deadline": deadline,  # a restarted gateway still waits until then
                },
            )

        seq = self.registry.next_config_seq(req.device, actor_for(req), detail, event)
        p = Pending(req, now, deadline, seq)
        self.pending[req.request] = p
        return p, dev, None

    def restore(self, rows: list[dict[str, Any]]) -> int:
        """Requests a previous run of the gateway took and never closed (Store.selftest_open)."""
        n = 0
        for r in rows:
            d = r["detail"] or {}
            rid, deadline = d.get("request"), d.get("deadline")
            if not isinstance(rid, str) or not isinstance(deadline, (int, float)):
                continue  # written by an older gateway: nothing to wait for
            mode = d.get("mode") if d.get("mode") in MODES else "now"
            req = Request(
                rid,
                int(r["device_id"]),
                mode,
                int(d.get("seconds") or 0),
                scheduled=bool(d.get("scheduled")),
            )
            at = r["at"].timestamp()
            self.pending[rid] = Pending(req, at, float(deadline), int(d.get("config_seq") or 0))
            n += 1
        return n

    def waiting(self, device: int) -> bool:
        return any(p.req.device == device for p in self.pending.values())

    def stored(
        self, device: int, counter: int, pressed_at: int | None, now: float
    ) -> Pending | None:
        """A TEST frame from device was stored: the oldest request it answers, removed."""
        mine = [p for p in self.pending.values() if p.req.device == device]
        if not mine:
            return None
        p = min(mine, key=lambda q: q.at)
        del self.pending[p.req.request]
        p.extra = received(p, now, counter, pressed_at)
        return p

    def expired(self, now: float) -> list[Pending]:
        out = [p for p in self.pending.values() if now >= p.deadline]
        for p in out:
            del self.pending[p.req.request]
        return out


def scheduled_request(device: int) -> Request:
    """A scheduled self-test (gateway --selftest-every): mode now, answered to nobody."""
    return Request("sched-" + uuid.uuid4().hex, device, "now", 0, "scheduler", scheduled=True)
