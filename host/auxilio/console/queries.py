"""The console's reads: bounded queries in one read-only transaction per refresh.

The monitor polls the registry (REFRESH_S), so every query here is bounded
(LIMIT, or an IN list of the ids on screen) and served by an index: the
queue of unattended ALERTs by the partial index `ix_alerts_pending` (schema
v5), recent rows by primary key, assignments by `ix_assignments_device`,
attend requests by `ix_attend_requests_alert`, outcomes by their (alert,
revision) key, the latest supervision and forwarding events by
`ix_events_type_device`. tests/console/test_queries.py checks the plans.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import false, func, literal_column, or_, select
from sqlalchemy.engine import Connection

from auxilio.console.outcomes import Outcome, current_outcomes
from auxilio.gateway.records import (
    FORWARD_FAILING,
    FORWARD_RESTORED,
    SUPERVISION_LOST,
    SUPERVISION_RESTORED,
)

# Rows per list unless the caller says otherwise.
DEFAULT_LIMIT = 15
# Devices listed in the health view (problem devices first).
DEVICES_LIMIT = 200
# 'ALERT' inlined, not bound: SQLite uses a partial index only when the query
# repeats the index's WHERE terms literally.
_ALERT = literal_column("'ALERT'")


@dataclass
class Raw:
    """What one refresh read, as rows (dicts) keyed the way the view needs them."""

    now: dt.datetime
    pending: list[dict[str, Any]]
    pending_total: int
    recent: list[dict[str, Any]]
    events: list[dict[str, Any]]
    assignments: dict[int, list[dict[str, Any]]]  # device -> its assignment rows, oldest first
    attends: dict[int, dict[str, Any]]  # alert -> latest attend request
    outcomes: dict[int, Outcome]  # alert -> current outcome
    supervision_lost: set[int]
    forward_failing: bool
    devices: list[dict[str, Any]] = field(default_factory=list)


def _alert_columns(t: Any) -> list[Any]:
    a, d = t.alerts, t.devices
    return [
        a.c.id,
        a.c.device_id,
        a.c.counter,
        a.c.type,
        a.c.payload,
        a.c.received_at,
        a.c.pressed_at,
        a.c.acked_at,
        a.c.attending_at,
        a.c.attending_by,
        a.c.disposition,
        a.c.cancelled_at,
        a.c.test,
        a.c.lost,
        a.c.via,
        d.c.kind,
        d.c.state.label("device_state"),
    ]


def _pending_where(t: Any) -> list[Any]:
    """An ALERT nobody has attended or closed: the dispatch queue (test and rejected rows never are)."""
    a, o = t.alerts, t.outcomes
    return [
        a.c.type == _ALERT,
        a.c.attending_at.is_(None),
        a.c.test == false(),
        or_(a.c.disposition.is_(None), a.c.disposition != "rejected"),
        ~select(o.c.id).where(o.c.alert_id == a.c.id).exists(),
    ]


def pending_query(t: Any, limit: int) -> Any:
    """Unattended ALERTs, the oldest press first (the press time when known, else the receipt)."""
    a, d = t.alerts, t.devices
    return (
        select(*_alert_columns(t))
        .join(d, d.c.id == a.c.device_id)
        .where(*_pending_where(t))
        .order_by(func.coalesce(a.c.pressed_at, a.c.received_at), a.c.id)
        .limit(limit)
    )


def pending_count_query(t: Any) -> Any:
    return select(func.count()).select_from(t.alerts).where(*_pending_where(t))


def recent_query(t: Any, limit: int) -> Any:
    """The latest ALERTs that are out of the queue (attended, closed, test or rejected)."""
    a, d, o = t.alerts, t.devices, t.outcomes
    out_of_queue = or_(
        a.c.attending_at.is_not(None),
        a.c.test.is_(True),
        a.c.disposition == "rejected",
        select(o.c.id).where(o.c.alert_id == a.c.id).exists(),
    )
    return (
        select(*_alert_columns(t))
        .join(d, d.c.id == a.c.device_id)
        .where(a.c.type == _ALERT, out_of_queue)
        .order_by(a.c.id.desc())
        .limit(limit)
    )


def assignments_of(conn: Connection, t: Any, devices: set[int]) -> dict[int, list[dict[str, Any]]]:
    """Each device's assignment history (few rows per device), oldest first."""
    if not devices:
        return {}
    s = t.assignments
    out: dict[int, list[dict[str, Any]]] = {}
    for r in conn.execute(
        select(s).where(s.c.device_id.in_(sorted(devices))).order_by(s.c.id)
    ).mappings():
        out.setdefault(r["device_id"], []).append(dict(r))
    return out


def assignment_at(rows: list[dict[str, Any]], at: dt.datetime | None) -> dict[str, Any] | None:
    """The assignment in force when something happened: an old alert keeps the case it
    belonged to even after the bracelet went to another case."""
    if at is None:
        return None
    found = None
    for r in rows:
        # In force from when it was recorded, or from an earlier valid_from, until it ended.
        start = min(r["created_at"], r["valid_from"])
        if start <= at and (r["ended_at"] is None or r["ended_at"] > at):
            found = r
    return found


def attends_of(conn: Connection, t: Any, alert_ids: list[int]) -> dict[int, dict[str, Any]]:
    """The latest attend request per alert."""
    if not alert_ids:
        return {}
    r = t.attend_requests
    out: dict[int, dict[str, Any]] = {}
    for row in conn.execute(
        select(r).where(r.c.alert_id.in_(alert_ids)).order_by(r.c.id)
    ).mappings():
        out[row["alert_id"]] = dict(row)
    return out


def supervision_lost_query(t: Any) -> Any:
    """Devices in service whose latest supervision event is SUPERVISION_LOST.

    Two index seeks per device (the newest LOST, the newest RESTORED, each a
    max() on the (type, device, id) index): the cost follows the fleet, never
    the length of the event history.
    """
    d, e = t.devices, t.events

    def newest(kind: str) -> Any:
        return (
            select(func.max(e.c.id))
            .where(e.c.type == literal_column(f"'{kind}'"), e.c.device_id == d.c.id)
            .scalar_subquery()
        )

    return select(d.c.id).where(
        d.c.state.not_in(("revoked", "retired")),
        newest(SUPERVISION_LOST) > func.coalesce(newest(SUPERVISION_RESTORED), 0),
    )


def supervision_lost(conn: Connection, t: Any) -> set[int]:
    return {r[0] for r in conn.execute(supervision_lost_query(t))}


def forward_failing(conn: Connection, t: Any) -> bool:
    e = t.events
    last = conn.execute(
        select(e.c.type)
        .where(e.c.type.in_((FORWARD_FAILING, FORWARD_RESTORED)))
        .order_by(e.c.id.desc())
        .limit(1)
    ).scalar()
    return last == FORWARD_FAILING


def devices_rows(conn: Connection, t: Any, limit: int = DEVICES_LIMIT) -> list[dict[str, Any]]:
    """Devices for the health view: in service first, the longest silent first."""
    d = t.devices
    in_service = d.c.state.in_(("assigned", "lost"))
    q = (
        select(
            d.c.id, d.c.kind, d.c.state, d.c.last_seen, d.c.heartbeat_s, d.c.fw_version, d.c.health
        )
        .order_by(in_service.desc(), d.c.last_seen.is_(None).desc(), d.c.last_seen, d.c.id)
        .limit(limit)
    )
    return [dict(r) for r in conn.execute(q).mappings()]


def load(
    registry: Any,
    limit: int = DEFAULT_LIMIT,
    events_limit: int | None = None,
    with_devices: bool = False,
    now: dt.datetime | None = None,
) -> Raw:
    """Everything one console refresh shows, read in one transaction (a consistent picture)."""
    t = registry.tables
    now = now or dt.datetime.now(dt.timezone.utc)
    with registry.reader.connect() as conn, conn.begin():
        pending = [dict(r) for r in conn.execute(pending_query(t, limit)).mappings()]
        total = int(conn.execute(pending_count_query(t)).scalar_one())
        recent = [dict(r) for r in conn.execute(recent_query(t, limit)).mappings()]
        e = t.events
        events = [
            dict(r)
            for r in conn.execute(
                select(e).order_by(e.c.id.desc()).limit(events_limit or limit)
            ).mappings()
        ]
        devices = devices_rows(conn, t) if with_devices else []
        shown = [r["id"] for r in pending + recent]
        ids = {r["device_id"] for r in pending + recent}
        ids |= {r["device_id"] for r in events if r["device_id"] is not None}
        ids |= {r["id"] for r in devices}
        return Raw(
            now=now,
            pending=pending,
            pending_total=total,
            recent=recent,
            events=events,
            assignments=assignments_of(conn, t, ids),
            attends=attends_of(conn, t, shown),
            outcomes=current_outcomes(conn, shown),
            supervision_lost=supervision_lost(conn, t),
            forward_failing=forward_failing(conn, t),
            devices=devices,
        )
