"""Forward records (schema auxilio.forward/1) and C4 event rows, built from verified frames.

Record schema (one JSON object; documented in the README):
  schema      "auxilio.forward/1"
  key         idempotency key, stable across redeliveries and restarts:
              "alert:<device>:<key epoch>:<counter>" for ALERT/CANCEL,
              "event:<device>:<TYPE>:<key epoch>:<counter>" for frame events, and
              "event:<device>:<TYPE>:<unix ms>" for events with no frame (supervision,
              SELFTEST_MISSED)
  kind        "alert" (ALERT, CANCEL) | "event"
  type        frame type name or event type
  device      printed device id "XXXX-XXXX"
  epoch       the device's key epoch (null for events with no frame)
  counter     uplink counter (alerts / frame events), else null
  at          ISO-8601 UTC time the gateway stored it
  pressed_at  ISO-8601 UTC time of the press on the device clock (ALERT), or null
  fields      decoded payload (ALERT: lat_e7, lon_e7, accuracy_m, fix_age_s, battery, rssi,
              bearer, pressed_at)
  lost        true when the device is marked lost (the C4 decides what to do)
  disposition for alerts, the disposition sent to the device ("received"); null for events
  via         for alerts, the path that delivered it first: "mqtt" or "sms"
  detail      free text (empty today)
Only verified frames are ever forwarded; TEST frames and frames with the test
flag never are. Delivery is at-least-once: consumers dedup on "key".
"""

from __future__ import annotations

import time
from typing import Any

from auxilio.protocol import codec

SCHEMA = "auxilio.forward/1"

# Frame types raised as C4 events (besides being stored and acked).
EVENT_TYPES = {
    codec.TAMPER: "TAMPER",
    codec.POWER: "POWER",
    codec.LOW_BATTERY: "LOW_BATTERY",
    codec.BOOT: "BOOT",
}
ALERT_TYPES = (codec.ALERT, codec.CANCEL)
# Event types with no frame behind them.
SUPERVISION_LOST = "SUPERVISION_LOST"
SUPERVISION_RESTORED = "SUPERVISION_RESTORED"
FORWARD_FAILING = "FORWARD_FAILING"
FORWARD_RESTORED = "FORWARD_RESTORED"
COUNTER_COLLISION = "COUNTER_COLLISION"
COUNTER_JUMP = "COUNTER_JUMP"


def iso(t: float | None) -> str | None:
    if t is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t * 1000) % 1000:03d}Z"


def event_row(
    device: int | None, etype: str, at: float, detail: dict[str, Any] | None = None
) -> dict[str, Any]:
    """An `events` table row."""
    return {"device_id": device, "type": etype, "at": at, "detail": detail or {}, "alert_id": None}


def alert_record(
    device: int,
    epoch: int,
    counter: int,
    type_name: str,
    fields: dict[str, Any],
    at: float,
    lost: bool,
    disposition: str,
    via: str = "mqtt",
) -> dict[str, Any]:
    dev = codec.device_str(device)
    pressed = fields.get("pressed_at")
    return {
        "schema": SCHEMA,
        "key": f"alert:{dev}:{epoch}:{counter}",
        "kind": "alert",
        "type": type_name,
        "device": dev,
        "epoch": epoch,
        "counter": counter,
        "at": iso(at),
        "pressed_at": iso(pressed) if pressed else None,
        "fields": fields,
        "lost": lost,
        "disposition": disposition,
        "via": via,
        "detail": "",
    }


def event_record(
    device: int,
    etype: str,
    at: float,
    fields: dict[str, Any],
    epoch: int | None = None,
    counter: int | None = None,
) -> dict[str, Any]:
    dev = codec.device_str(device)
    key = (
        f"event:{dev}:{etype}:{epoch}:{counter}"
        if counter is not None
        else f"event:{dev}:{etype}:{int(at * 1000)}"
    )
    return {
        "schema": SCHEMA,
        "key": key,
        "device_id": device,  # the outbox row's; not part of the record (see forward_row)
        "kind": "event",
        "type": etype,
        "device": dev,
        "epoch": epoch,
        "counter": counter,
        "at": iso(at),
        "pressed_at": None,
        "fields": fields,
        "lost": False,
        "disposition": None,
        "detail": "",
    }
