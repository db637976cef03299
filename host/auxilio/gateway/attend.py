"""The gateway's side of "an operator attends this alert": validate, check, sign once, report.

Consoles never write the registry (DESIGN §1). They publish a request on
``<prefix>/c4/attend`` ({"alert": id, "operator": name, "request": id}); the
gateway records it (state ``requested``), checks that the alert is an ALERT
it stored itself (its seal, issue 8 §3), re-verifies the stored frame with
the device's current key, and only then signs and publishes the
``attending`` ACK. When the broker confirms that publish (PUBACK) the
request becomes ``sent`` and the alert attended, in one transaction; any
refusal makes it ``failed`` with a reason. Every request gets its result on
``<prefix>/c4/attend/result/<request>``, so the console can show it.
A second request for an attended alert is answered ``sent`` without a new
signature.
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from dataclasses import dataclass
from typing import Any

from auxilio.gateway import verifier as V
from auxilio.gateway.seal import RowSealer
from auxilio.gateway.store import Store
from auxilio.protocol import FrameError, codec

log = logging.getLogger("auxilio.gateway")

CONTROL_LEAF = "c4/attend"  # <prefix>/c4/attend
RESULT_LEAF = "c4/attend/result"  # <prefix>/c4/attend/result/<request>
# Largest attend request accepted (a JSON object with three short fields).
MAX_REQUEST_BYTES = 512
_MAX_ID = (1 << 63) - 1  # alerts.id is a signed 64-bit key
_REQUEST_RE = re.compile(r"^[A-Za-z0-9_.-]{8,64}$")
# States a request can be in (attend_requests.state).
REQUESTED, SENT, FAILED = "requested", "sent", "failed"


class BadRequest(ValueError):
    """An attend request the gateway cannot read; .reason is a stable code."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Request:
    alert: int
    operator: str
    request: str


def _no_constants(name: str) -> Any:
    raise BadRequest("bad_number")  # Infinity, -Infinity, NaN are not JSON numbers


def read_request(payload: bytes, max_bytes: int = MAX_REQUEST_BYTES) -> dict[str, Any]:
    """The JSON object of a console request (attend, self-test); BadRequest otherwise."""
    if len(payload) > max_bytes:
        raise BadRequest("too_large")
    try:
        obj = json.loads(payload, parse_constant=_no_constants)
    except BadRequest:
        raise
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise BadRequest("bad_json") from None
    if not isinstance(obj, dict):
        raise BadRequest("bad_json")
    return obj


def operator_and_request(obj: dict[str, Any]) -> tuple[str, str]:
    """A request's operator name and request id, checked (a bare request gets an id)."""
    operator = obj.get("operator", "operator")
    if not isinstance(operator, str) or not 1 <= len(operator) <= 64 or not operator.isprintable():
        raise BadRequest("bad_operator")
    request = obj.get("request")
    if request is None:
        request = "gw-" + uuid.uuid4().hex  # a bare request from a script: still answered
    elif not isinstance(request, str) or not _REQUEST_RE.match(request):
        raise BadRequest("bad_request_id")
    return operator, request


def parse_request(payload: bytes) -> Request:
    """Validate an attend request; BadRequest(reason) for anything else (never another error)."""
    obj = read_request(payload)
    alert = obj.get("alert")
    if not isinstance(alert, int) or isinstance(alert, bool) or not 1 <= alert <= _MAX_ID:
        raise BadRequest("bad_alert_id")
    operator, request = operator_and_request(obj)
    return Request(alert, operator, request)


@dataclass
class Signed:
    """An `attending` ACK the service must publish, and what to record when the broker takes it."""

    request: Request
    device: V.DeviceState
    counter: int


class AttendDesk:
    """Checks attend requests against what the gateway itself stored."""

    def __init__(self, store: Store, verifier: V.Verifier, sealer: RowSealer) -> None:
        self.store = store
        self.verifier = verifier
        self.sealer = sealer

    def handle(self, req: Request, now: float) -> tuple[Signed | None, dict[str, Any] | None]:
        """(an ACK to sign and publish, or None) and (a result to publish now, or None)."""
        known = self.store.attend_request(req.request)
        if known is not None:  # the same request redelivered: answer what it became
            if known["state"] == REQUESTED:
                return None, None  # still waiting for the broker: the result comes then
            return None, result(req, known["state"], known["reason"])
        self.store.attend_requested(req.request, req.alert, req.operator, now)
        reason, signed = self._check(req)
        if reason == "already_attended":
            self.store.attend_sent_again(req.request, now)
            return None, result(req, SENT, reason)
        if reason:
            self.store.attend_failed(req.request, reason, now)
            log.warning("gateway: attend request for alert %d refused (%s)", req.alert, reason)
            return None, result(req, FAILED, reason)
        return signed, None

    def _check(self, req: Request) -> tuple[str, Signed | None]:
        row = self.store.alert(req.alert)
        if row is None:
            return "unknown_alert", None
        if row["type"] != "ALERT":
            return "not_an_alert", None  # BOOT, POWER, TEST... never make "help is coming"
        if row["test"]:
            return "test_alert", None
        dev = self.verifier.device(row["device_id"])
        if dev is None:
            return "unknown_device", None
        if dev.state in ("revoked", "retired"):
            return "device_" + dev.state, None
        raw = bytes(row["raw"] or b"")
        if row["key_epoch"] != dev.key_epoch:
            return "old_key_epoch", None
        if not self.sealer.check(
            row["device_id"], row["key_epoch"], row["counter"], raw, row["gw_seal"]
        ):
            return "not_stored_by_gateway", None
        try:
            code, flags, device, counter, _ts, _n = codec.verify_into(
                raw, dev.keys, bytearray(codec.MAX_PAYLOAD)
            )
        except FrameError:
            return "frame_does_not_verify", None
        if code != codec.ALERT or device != row["device_id"] or counter != row["counter"]:
            return "frame_does_not_match", None
        if flags & codec.FLAG_TEST:
            return "test_alert", None  # the frame's own test flag, not a column anyone can edit
        # Only now, with the row proven the gateway's own, do its fields count.
        if row["disposition"] not in ("received", "attending"):
            return "alert_rejected", None
        if row["attending_at"] is not None:
            return "already_attended", None
        return "", Signed(req, dev, counter)


def result(req: Request, state: str, reason: str = "") -> dict[str, Any]:
    return {"request": req.request, "alert": req.alert, "state": state, "reason": reason}
