"""Gateway SQL over the registry tables: one transaction per batch (frames, replay state, forward
outbox, events, dead letters), ACK and attend bookkeeping, and the queries the gateway reads.

The gateway is the only writer of alerts, their dispositions and attend state
(DESIGN §1); consoles open the registry read-only.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import and_, bindparam, func, insert, or_, select, update
from sqlalchemy.engine import Connection

from auxilio.gateway.records import SUPERVISION_LOST, SUPERVISION_RESTORED, alert_record
from auxilio.protocol import codec

log = logging.getLogger(__name__)

# A frame's name at the C4 (SPEC §12.1): (device, key epoch, counter).
FrameKey = tuple[int, int, int]
# Stored lookups and conflict checks go in chunks of this many keys per query.
LOOKUP_CHUNK = 200


@dataclass
class Batch:
    """Everything one group commit writes (SPEC §12.2: frames and replay state in one transaction)."""

    alerts: list[dict[str, Any]] = field(default_factory=list)
    devices: dict[int, dict[str, Any]] = field(default_factory=dict)  # id -> replay/last_seen
    # The same for frames under the key a rekey replaced, during its grace (schema v7).
    prev_devices: dict[int, dict[str, Any]] = field(default_factory=dict)
    # id -> the device's latest accepted HEARTBEAT, as devices.health (schema v8).
    health: dict[int, dict[str, Any]] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)
    forward: list[dict[str, Any]] = field(default_factory=list)  # forward_outbox rows
    acked: list[tuple[int, int, int, float]] = field(default_factory=list)  # key + at
    cancels: list[tuple[int, int, int, float]] = field(default_factory=list)  # key of ref + at
    dead: list[dict[str, Any]] = field(default_factory=list)  # dead_letters rows
    # Forward records the sink confirmed: (ids, at, keep), as Store.forward_done takes them.
    forwarded: list[tuple[list[int], float, bool]] = field(default_factory=list)
    forward_drop_before: float | None = None  # a pipe's kept records past their window

    def __bool__(self) -> bool:
        return bool(
            self.alerts
            or self.devices
            or self.prev_devices
            or self.health
            or self.events
            or self.forward
            or self.acked
            or self.cancels
            or self.dead
            or self.forwarded
            or self.forward_drop_before is not None
        )


class Conflicts(Exception):
    """Some frames to store already have a row under their name; nothing was written.

    ``rows`` maps each taken (device, epoch, counter) to the stored row
    (id, type, raw, disposition, attending_at). The caller decides again for
    those frames (duplicate or collision, SPEC §12.2) and commits a new batch.
    """

    def __init__(self, rows: dict[FrameKey, dict[str, Any]]) -> None:
        super().__init__(f"{len(rows)} frame name(s) already stored")
        self.rows = rows


def _sqlite_time(t: float | dt.datetime) -> str:
    # SQLAlchemy's SQLite DATETIME storage format, naive UTC (registry UTCDateTime).
    if isinstance(t, dt.datetime):
        t = t.timestamp()
    return dt.datetime.fromtimestamp(t, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")


def _signed64(v: int) -> int:
    # registry U64: the 64-bit window bitmap in a signed BIGINT column.
    return v - (1 << 64) if v >= (1 << 63) else v


def _dialect_insert(conn: Connection, table: Any) -> Any:
    name = conn.dialect.name
    if name == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as dialect_insert
    elif name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as dialect_insert
    else:  # pragma: no cover - only SQLite and PostgreSQL are supported
        raise RuntimeError(f"unsupported database {name}")
    return dialect_insert(table)


def _key_filter(table: Any, keys: Sequence[FrameKey]) -> Any:
    return or_(
        *[
            and_(table.c.device_id == d, table.c.key_epoch == e, table.c.counter == c)
            for d, e, c in keys
        ]
    )


# A batch's replay state, written only while the row still holds the frames' key epoch
# (a rekey committed since restarted it); the second for the key a rekey replaced.
_REPLAY_SQL = (
    "UPDATE devices SET high_water = ?, window = ?, last_seen = ? WHERE id = ? AND key_epoch = ?"
)
_PREV_REPLAY_SQL = (
    "UPDATE devices SET prev_high_water = ?, prev_window = ?, last_seen = ?"
    " WHERE id = ? AND prev_key_epoch = ?"
)


class Store:
    """Gateway-side queries; the registry owns the schema (auxilio.registry.schema)."""

    def __init__(self, registry: Any) -> None:
        self.registry = registry
        self.engine = registry.engine  # writes (BEGIN IMMEDIATE on SQLite)
        self.reader = registry.reader  # reads, never holding SQLite's write lock
        self.t = registry.tables

    # ------------------------------------------------------------ writes ---

    def commit(self, batch: Batch) -> None:
        """Write one batch durably in one transaction; raises Conflicts (nothing written) or a
        database error (nothing written, nothing may be acked)."""
        if not batch:
            return
        with self.engine.begin() as conn:
            if conn.dialect.name == "sqlite":
                self._commit_sqlite(conn, batch)
            else:
                self._commit_core(conn, batch)
            if batch.cancels:
                self._cancel(conn, batch.cancels)
            if batch.events:
                conn.execute(insert(self.t.events), batch.events)
            if batch.dead:
                conn.execute(insert(self.t.dead_letters), batch.dead)
            for ids, at, keep in batch.forwarded:
                self._forward_done_in(conn, ids, at, keep)
            if batch.forward_drop_before is not None:
                f = self.t.forward_outbox
                conn.execute(f.delete().where(f.c.forwarded_at < _utc(batch.forward_drop_before)))

    def _conflicts(self, conn: Connection, batch: Batch) -> Conflicts:
        keys = [(a["device_id"], a["key_epoch"], a["counter"]) for a in batch.alerts]
        rows = self._stored(conn, keys)
        return Conflicts(rows)

    def _commit_core(self, conn: Connection, batch: Batch) -> None:
        alerts, devices = self.t.alerts, self.t.devices
        if batch.alerts:
            stmt = (
                _dialect_insert(conn, alerts)
                .on_conflict_do_nothing(index_elements=["device_id", "key_epoch", "counter"])
                .returning(alerts.c.device_id)
            )
            inserted = conn.execute(stmt, batch.alerts).all()
            if len(inserted) != len(batch.alerts):
                raise self._conflicts(conn, batch)  # leaving begin() rolls everything back
        if batch.health:
            conn.execute(
                update(devices)
                .where(devices.c.id == bindparam("b_id"))
                .values(health=bindparam("b_health", type_=devices.c.health.type)),
                [{"b_id": k, "b_health": h} for k, h in batch.health.items()],
            )
        for prev, rows in ((False, batch.devices), (True, batch.prev_devices)):
            if not rows:
                continue
            # The row's epoch must still be the frames' one: a rekey committed since
            # they were verified restarted the replay state, which must stay restarted.
            hw, win, epoch = (
                (devices.c.prev_high_water, devices.c.prev_window, devices.c.prev_key_epoch)
                if prev
                else (devices.c.high_water, devices.c.window, devices.c.key_epoch)
            )
            conn.execute(
                update(devices)
                .where(devices.c.id == bindparam("b_id"), epoch == bindparam("b_ep"))
                .values(
                    {
                        hw: bindparam("b_hw"),
                        win: bindparam("b_win"),
                        "last_seen": bindparam("b_seen"),
                    }
                ),
                [
                    {
                        "b_id": k,
                        "b_ep": v["epoch"],
                        "b_hw": None if v["high_water"] < 0 else v["high_water"],
                        "b_win": v["window"],
                        "b_seen": v["last_seen"],
                    }
                    for k, v in rows.items()
                ],
            )
        if batch.forward:
            conn.execute(
                _dialect_insert(conn, self.t.forward_outbox).on_conflict_do_nothing(
                    index_elements=["key"]
                ),
                batch.forward,
            )
        if batch.acked:
            self._mark_acked(conn, batch.acked)

    def _commit_sqlite(self, conn: Connection, batch: Batch) -> None:
        """The SQLite hot path on the DBAPI cursor, inside the same SQLAlchemy transaction.

        Core's per-statement overhead doubled the commit time (0.54 vs 0.24 ms
        p50 here), which is most of the gateway's share of an alert round trip.
        Values are encoded exactly as the registry's column types store them
        (UTCDateTime: naive UTC text; U64: two's complement; JSON: json.dumps),
        and the tests read every row back through Core.
        """
        cur = conn.connection.dbapi_connection.cursor()
        times: dict[float, str] = {}  # a batch shares one `now`: format it once

        def ts(t: float) -> str:
            text = times.get(t)
            if text is None:
                text = times[t] = _sqlite_time(t)
            return text

        try:
            if batch.alerts:
                cur.executemany(
                    "INSERT INTO alerts (device_id, key_epoch, counter, type, flags, device_ts,"
                    " pressed_at, payload, raw, gw_seal, received_at, disposition, via, test, lost)"
                    " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)"
                    " ON CONFLICT (device_id, key_epoch, counter) DO NOTHING",
                    [
                        (
                            a["device_id"],
                            a["key_epoch"],
                            a["counter"],
                            a["type"],
                            a["flags"],
                            a["device_ts"],
                            None if a["pressed_at"] is None else _sqlite_time(a["pressed_at"]),
                            json.dumps(a["payload"]),
                            a["raw"],
                            a["gw_seal"],
                            ts(a["received_at"]),
                            a["disposition"],
                            a["via"],
                            1 if a["test"] else 0,
                            1 if a["lost"] else 0,
                        )
                        for a in batch.alerts
                    ],
                )
                if cur.rowcount != len(batch.alerts):  # some name was already taken
                    raise self._conflicts(conn, batch)
            if batch.health:
                cur.executemany(
                    "UPDATE devices SET health = ? WHERE id = ?",
                    [(json.dumps(h), k) for k, h in batch.health.items()],
                )
            for sql, rows in ((_REPLAY_SQL, batch.devices), (_PREV_REPLAY_SQL, batch.prev_devices)):
                if rows:
                    cur.executemany(
                        sql,
                        [
                            (
                                None if v["high_water"] < 0 else v["high_water"],
                                _signed64(v["window"]),
                                ts(v["last_seen"]),
                                k,
                                v["epoch"],
                            )
                            for k, v in rows.items()
                        ],
                    )
            if batch.forward:
                cur.executemany(
                    "INSERT INTO forward_outbox (key, device_id, key_epoch, counter, body,"
                    " created_at, next_attempt_at, attempts) VALUES (?,?,?,?,?,?,?,0)"
                    " ON CONFLICT (key) DO NOTHING",
                    [
                        (
                            f["key"],
                            f["device_id"],
                            f["key_epoch"],
                            f["counter"],
                            f["body"],
                            ts(f["created_at"]),
                            ts(f["next_attempt_at"]),
                        )
                        for f in batch.forward
                    ],
                )
            if batch.acked:
                cur.executemany(
                    "UPDATE alerts SET acked_at = ? WHERE device_id = ? AND key_epoch = ?"
                    " AND counter = ? AND acked_at IS NULL",
                    [(_sqlite_time(at), d, e, c) for d, e, c, at in batch.acked],
                )
        finally:
            cur.close()

    def _stamp(
        self,
        conn: Connection,
        column: str,
        rows: Sequence[tuple[int, int, int, float]],
        *extra: Any,
    ) -> None:
        """Set alerts.<column> (a time) once, by frame name: (device, epoch, counter, at) rows."""
        a = self.t.alerts
        conn.execute(
            update(a)
            .where(
                and_(
                    a.c.device_id == bindparam("b_dev"),
                    a.c.key_epoch == bindparam("b_ep"),
                    a.c.counter == bindparam("b_ctr"),
                    a.c[column].is_(None),
                    *extra,
                )
            )
            .values({column: bindparam("b_at")}),
            [{"b_dev": d, "b_ep": e, "b_ctr": c, "b_at": at} for d, e, c, at in rows],
        )

    def _mark_acked(self, conn: Connection, acked: list[tuple[int, int, int, float]]) -> None:
        self._stamp(conn, "acked_at", acked)

    def _cancel(self, conn: Connection, cancels: list[tuple[int, int, int, float]]) -> None:
        """A CANCEL marks the ALERT it refers to (same device and key epoch, its counter)."""
        self._stamp(conn, "cancelled_at", cancels, self.t.alerts.c.type == "ALERT")

    def add_events(self, rows: list[dict[str, Any]]) -> None:
        if rows:
            with self.engine.begin() as conn:
                conn.execute(insert(self.t.events), rows)

    # --------------------------------------------------- attend requests ---

    def attend_request(self, request_id: str) -> dict[str, Any] | None:
        r = self.t.attend_requests
        with self.reader.connect() as conn:
            row = conn.execute(select(r).where(r.c.request_id == request_id)).mappings().first()
            return dict(row) if row else None

    def attend_requested(self, request_id: str, alert_id: int, operator: str, at: float) -> bool:
        """Record a new request (state 'requested') with its audit row; False if already known."""
        r = self.t.attend_requests
        with self.engine.begin() as conn:
            res = conn.execute(
                _dialect_insert(conn, r)
                .values(
                    request_id=request_id,
                    alert_id=alert_id,
                    operator=operator,
                    requested_at=at,
                    state="requested",
                    reason="",
                    updated_at=at,
                )
                .on_conflict_do_nothing(index_elements=["request_id"])
            )
            if not res.rowcount:
                return False
            self._audit(conn, operator, "attend-request", f"alert:{alert_id}", request_id)
            return True

    def attend_failed(self, request_id: str, reason: str, at: float) -> None:
        r = self.t.attend_requests
        with self.engine.begin() as conn:
            conn.execute(
                update(r)
                .where(r.c.request_id == request_id, r.c.state == "requested")
                .values(state="failed", reason=reason[:200], updated_at=at)
            )

    def attend_sent_again(self, request_id: str, at: float) -> None:
        """A request for an alert already attended: answered, never signed twice."""
        r = self.t.attend_requests
        with self.engine.begin() as conn:
            conn.execute(
                update(r)
                .where(r.c.request_id == request_id)
                .values(state="sent", reason="already_attended", sent_at=at, updated_at=at)
            )

    def attend_sent(self, request_id: str, alert_id: int, operator: str, at: float) -> None:
        """The broker took the signed `attending` ACK: the alert is attended (one transaction)."""
        r, a = self.t.attend_requests, self.t.alerts
        with self.engine.begin() as conn:
            conn.execute(
                update(r)
                .where(r.c.request_id == request_id)
                .values(state="sent", reason="", sent_at=at, updated_at=at)
            )
            conn.execute(
                update(a)
                .where(a.c.id == alert_id, a.c.attending_at.is_(None))
                .values(attending_at=at, attending_by=operator[:64], disposition="attending")
            )
            self._audit(conn, operator, "attend", f"alert:{alert_id}", request_id)

    def _audit(self, conn: Connection, actor: str, action: str, target: str, detail: str) -> None:
        conn.execute(
            insert(self.t.audit).values(
                at=dt.datetime.now(dt.timezone.utc),
                actor=actor[:64],
                action=action[:32],
                target=target[:64],
                detail=detail,
            )
        )

    # ------------------------------------------------------- forwarding ---

    def forward_pending(self, now: float, limit: int, after: int = 0) -> list[dict[str, Any]]:
        """Undelivered forward records due for an attempt, oldest first, each with its body.

        after: skip ids up to this one (a pipe's delivered records are kept for
        its resend window, and a range on the key skips them without a scan).

        An alert's record is not stored as JSON (it would cost the hot commit a
        second encoding of the same fields): it is built here from the alert row.
        """
        f, a = self.t.forward_outbox, self.t.alerts
        with self.reader.connect() as conn:
            if conn.dialect.name == "sqlite":
                return _pending_sqlite(conn, now, limit, after)
            q = (
                select(
                    f.c.id,
                    f.c.key,
                    f.c.body,
                    f.c.attempts,
                    f.c.created_at,
                    f.c.device_id,
                    f.c.key_epoch,
                    f.c.counter,
                    a.c.type,
                    a.c.payload,
                    a.c.received_at,
                    a.c.lost,
                    a.c.disposition,
                    a.c.via,
                )
                .select_from(
                    f.outerjoin(
                        a,
                        and_(
                            f.c.body.is_(None),
                            a.c.device_id == f.c.device_id,
                            a.c.key_epoch == f.c.key_epoch,
                            a.c.counter == f.c.counter,
                        ),
                    )
                )
                .where(f.c.id > after, f.c.forwarded_at.is_(None), f.c.next_attempt_at <= _utc(now))
                .order_by(f.c.id)
                .limit(limit)
            )
            rows = [dict(r) for r in conn.execute(q).mappings()]
        for r in rows:
            if r["body"] is None:
                r["body"] = json.dumps(
                    alert_record(
                        r["device_id"],
                        r["key_epoch"],
                        r["counter"],
                        r["type"],
                        r["payload"] or {},
                        r["received_at"].timestamp(),
                        bool(r["lost"]),
                        r["disposition"] or "received",
                        r["via"] or "mqtt",
                    ),
                    separators=(",", ":"),
                )
        return rows

    def forward_backlog(self) -> tuple[int, dt.datetime | None]:
        """(records not yet confirmed by the sink, creation time of the oldest)."""
        f = self.t.forward_outbox
        with self.reader.connect() as conn:
            n, oldest = conn.execute(
                select(func.count(), func.min(f.c.created_at)).where(f.c.forwarded_at.is_(None))
            ).one()
            return int(n), oldest

    def forward_done(self, ids: list[int], at: float, keep: bool = False) -> None:
        """The sink confirmed these records: set alerts.forwarded_at for the alerts they
        describe and delete the records (their bodies carry locations) - one transaction.

        keep: a sink that may still lose them (a pipe) - mark them delivered and keep
        them for forward_unmark_since; forward_drop_before deletes them later.
        """
        if not ids:
            return
        with self.engine.begin() as conn:
            self._forward_done_in(conn, ids, at, keep)

    def _forward_done_in(self, conn: Connection, ids: list[int], at: float, keep: bool) -> None:
        if conn.dialect.name == "sqlite":
            self._forward_done_sqlite(conn, ids, at, keep)
            return
        f = self.t.forward_outbox
        linked = conn.execute(
            select(f.c.device_id, f.c.key_epoch, f.c.counter).where(
                f.c.id.in_(ids), f.c.counter.is_not(None), f.c.key.like("alert:%")
            )
        ).all()
        if linked:
            self._stamp(conn, "forwarded_at", [(d, e, c, at) for d, e, c in linked])
        done = f.c.id.in_(ids) & f.c.forwarded_at.is_(None)
        if keep:
            conn.execute(update(f).where(done).values(forwarded_at=at, last_error=None))
        else:
            conn.execute(f.delete().where(done))

    def _forward_done_sqlite(self, conn: Connection, ids: list[int], at: float, keep: bool) -> None:
        """forward_done on the DBAPI cursor, inside the caller's transaction (BEGIN IMMEDIATE).

        Two statements per chunk of ids rather than a statement per record:
        Core's per-statement cost made the forwarder the gateway's second CPU
        (and GIL) consumer under load, and every sqlite3 step releases and
        retakes the GIL, a hand-off with the hot thread each time (tests/bench
        bench_gateway fwd_*). Both statements search by index (the alert by its
        unique name, the records by primary key).
        """
        at_s = _sqlite_time(at)
        cur = conn.connection.dbapi_connection.cursor()
        try:
            for i in range(0, len(ids), LOOKUP_CHUNK):
                chunk = ids[i : i + LOOKUP_CHUNK]
                marks = ",".join("?" * len(chunk))
                cur.execute(
                    "UPDATE alerts SET forwarded_at = ? WHERE forwarded_at IS NULL"
                    " AND (device_id, key_epoch, counter) IN (SELECT device_id, key_epoch, counter"
                    f" FROM forward_outbox WHERE id IN ({marks}) AND counter IS NOT NULL"
                    " AND key LIKE 'alert:%')",
                    (at_s, *chunk),
                )
                if keep:
                    cur.execute(
                        "UPDATE forward_outbox SET forwarded_at = ?, last_error = NULL"
                        f" WHERE id IN ({marks}) AND forwarded_at IS NULL",
                        (at_s, *chunk),
                    )
                else:
                    cur.execute(
                        f"DELETE FROM forward_outbox WHERE id IN ({marks}) AND forwarded_at IS NULL",
                        chunk,
                    )
        finally:
            cur.close()

    def forward_unmark_since(self, since: float) -> int:
        """Make records delivered since `since` pending again (their sink may have lost them)."""
        f = self.t.forward_outbox
        with self.engine.begin() as conn:
            res = conn.execute(
                update(f)
                .where(f.c.forwarded_at >= _utc(since))
                .values(forwarded_at=None, next_attempt_at=_utc(since))
            )
            return int(res.rowcount or 0)

    def forward_drop_before(self, before: float) -> None:
        """Delete the kept records delivered before `before` (past the resend window)."""
        f = self.t.forward_outbox
        with self.engine.begin() as conn:
            conn.execute(f.delete().where(f.c.forwarded_at < _utc(before)))

    def forward_failed(self, fid: int, error: str, retry_at: float) -> None:
        f = self.t.forward_outbox
        with self.engine.begin() as conn:
            conn.execute(
                update(f)
                .where(f.c.id == fid)
                .values(attempts=f.c.attempts + 1, last_error=error[:200], next_attempt_at=retry_at)
            )

    # ------------------------------------------------------------- reads ---

    def _stored(self, conn: Connection, keys: Iterable[FrameKey]) -> dict[FrameKey, dict[str, Any]]:
        keys = list(set(keys))
        a = self.t.alerts
        out: dict[FrameKey, dict[str, Any]] = {}
        for i in range(0, len(keys), LOOKUP_CHUNK):
            chunk = keys[i : i + LOOKUP_CHUNK]
            for r in conn.execute(
                select(
                    a.c.id,
                    a.c.device_id,
                    a.c.key_epoch,
                    a.c.counter,
                    a.c.type,
                    a.c.raw,
                    a.c.disposition,
                    a.c.attending_at,
                ).where(_key_filter(a, chunk))
            ).mappings():
                out[(r["device_id"], r["key_epoch"], r["counter"])] = dict(r)
        return out

    def stored(self, keys: Iterable[FrameKey]) -> dict[FrameKey, dict[str, Any]]:
        """(device, epoch, counter) -> {id, type, raw, disposition, attending_at} for stored ones."""
        keys = list(keys)
        if not keys:
            return {}
        with self.reader.connect() as conn:
            return self._stored(conn, keys)

    def unacked(self, since: float, limit: int) -> list[dict[str, Any]]:
        """Stored frames whose ACK the broker never confirmed (a crash between commit and ACK)."""
        a = self.t.alerts
        with self.reader.connect() as conn:
            q = (
                select(
                    a.c.device_id,
                    a.c.key_epoch,
                    a.c.counter,
                    a.c.type,
                    a.c.disposition,
                    a.c.attending_at,
                )
                .where(a.c.acked_at.is_(None), a.c.received_at >= _utc(since))
                .order_by(a.c.id)
                .limit(limit)
            )
            return [dict(r) for r in conn.execute(q).mappings()]

    def device_rows(self, ids: Sequence[int]) -> dict[int, dict[str, Any]]:
        """Current lifecycle fields of some devices (read once per batch, so revocation bites at once)."""
        d = self.t.devices
        if not ids:
            return {}
        with self.reader.connect() as conn:
            if conn.dialect.name == "sqlite":
                # The DBAPI cursor: read every turn (pipeline.STATE_REFRESH_S), so
                # SQLAlchemy's statement compile would cost as much as the commit
                # (tests/bench/bench_lifecycle.py).
                cur = conn.connection.dbapi_connection.cursor()
                cur.execute(
                    "SELECT id, state, heartbeat_s, key_epoch, prev_key_epoch FROM devices WHERE id IN"
                    f" ({','.join('?' * len(ids))})",
                    list(ids),
                )
                cols = ("id", "state", "heartbeat_s", "key_epoch", "prev_key_epoch")
                return {r[0]: dict(zip(cols, r, strict=True)) for r in cur.fetchall()}
            rows = conn.execute(
                select(d.c.id, d.c.state, d.c.heartbeat_s, d.c.key_epoch, d.c.prev_key_epoch).where(
                    d.c.id.in_(list(ids))
                )
            ).mappings()
            return {r["id"]: dict(r) for r in rows}

    def supervised_devices(self) -> list[dict[str, Any]]:
        """Devices seen at least once and still in service, with their last supervision event."""
        d, e = self.t.devices, self.t.events
        with self.reader.connect() as conn:
            devs = [
                dict(r)
                for r in conn.execute(
                    select(d.c.id, d.c.kind, d.c.state, d.c.heartbeat_s, d.c.last_seen).where(
                        d.c.last_seen.is_not(None), d.c.state.not_in(("revoked", "retired"))
                    )
                ).mappings()
            ]
            last = (
                select(e.c.device_id, func.max(e.c.id).label("mid"))
                .where(e.c.type.in_((SUPERVISION_LOST, SUPERVISION_RESTORED)))
                .group_by(e.c.device_id)
                .subquery()
            )
            lost = {
                r[0]
                for r in conn.execute(
                    select(e.c.device_id)
                    .join(last, e.c.id == last.c.mid)
                    .where(e.c.type == SUPERVISION_LOST)
                )
            }
        for r in devs:
            r["lost"] = r["id"] in lost
        return devs

    def selftest_open(self, since: float) -> list[dict[str, Any]]:
        """SELFTEST_REQUESTED events since `since` with no later TEST from their device and no
        SELFTEST_MISSED of their own: the requests a restarted gateway still waits for."""
        a, e = self.t.alerts, self.t.events
        with self.reader.connect() as conn:
            evs = [
                dict(r)
                for r in conn.execute(
                    select(e.c.device_id, e.c.type, e.c.at, e.c.detail)
                    .where(
                        e.c.type.in_(("SELFTEST_REQUESTED", "SELFTEST_MISSED")),
                        e.c.at >= _utc(since),
                    )
                    .order_by(e.c.id)
                ).mappings()
            ]
            asked = [r for r in evs if r["type"] == "SELFTEST_REQUESTED"]
            if not asked:
                return []
            tests = {
                r[0]: r[1]
                for r in conn.execute(
                    select(a.c.device_id, func.max(a.c.received_at))
                    .where(
                        a.c.type == "TEST",
                        a.c.device_id.in_(sorted({r["device_id"] for r in asked})),
                        a.c.received_at >= _utc(since),
                    )
                    .group_by(a.c.device_id)
                )
            }
        missed = {(r["detail"] or {}).get("request") for r in evs if r["type"] == "SELFTEST_MISSED"}
        return [
            r
            for r in asked
            if (r["detail"] or {}).get("request") not in missed
            and not (r["device_id"] in tests and tests[r["device_id"]] >= r["at"])
        ]

    def selftest_due(self, tested_before: float, asked_before: float) -> list[int]:
        """Devices in service (assigned, seen at least once) whose last TEST frame was stored
        before tested_before and whose last self-test request was before asked_before."""
        d, a, e = self.t.devices, self.t.alerts, self.t.events
        last_test = (
            select(a.c.device_id, func.max(a.c.received_at).label("t"))
            .where(a.c.type == "TEST")
            .group_by(a.c.device_id)
            .subquery()
        )
        last_ask = (
            select(e.c.device_id, func.max(e.c.at).label("t"))
            .where(e.c.type == "SELFTEST_REQUESTED")
            .group_by(e.c.device_id)
            .subquery()
        )
        q = (
            select(d.c.id)
            .outerjoin(last_test, last_test.c.device_id == d.c.id)
            .outerjoin(last_ask, last_ask.c.device_id == d.c.id)
            .where(
                d.c.state == "assigned",
                d.c.last_seen.is_not(None),
                or_(last_test.c.t.is_(None), last_test.c.t < _utc(tested_before)),
                or_(last_ask.c.t.is_(None), last_ask.c.t < _utc(asked_before)),
            )
            .order_by(d.c.id)
        )
        with self.reader.connect() as conn:
            return [int(r[0]) for r in conn.execute(q)]

    def alert(self, alert_id: int) -> dict[str, Any] | None:
        a = self.t.alerts
        with self.reader.connect() as conn:
            r = conn.execute(select(a).where(a.c.id == alert_id)).mappings().first()
            return dict(r) if r else None

    def recent_alerts(self, limit: int = 20) -> list[dict[str, Any]]:
        a, d = self.t.alerts, self.t.devices
        with self.reader.connect() as conn:
            q = (
                select(a, d.c.kind)
                .join(d, d.c.id == a.c.device_id)
                .order_by(a.c.id.desc())
                .limit(limit)
            )
            return [dict(r) for r in conn.execute(q).mappings()]

    def recent_events(self, limit: int = 20) -> list[dict[str, Any]]:
        e = self.t.events
        with self.reader.connect() as conn:
            return [
                dict(r)
                for r in conn.execute(select(e).order_by(e.c.id.desc()).limit(limit)).mappings()
            ]

    def attend_states(self, alert_ids: Sequence[int]) -> dict[int, dict[str, Any]]:
        """The latest attend request per alert (state, operator, reason, times)."""
        if not alert_ids:
            return {}
        r = self.t.attend_requests
        out: dict[int, dict[str, Any]] = {}
        with self.reader.connect() as conn:
            for row in conn.execute(
                select(r).where(r.c.alert_id.in_(list(alert_ids))).order_by(r.c.id)
            ).mappings():
                out[row["alert_id"]] = dict(row)
        return out

    def devices_health(self) -> list[dict[str, Any]]:
        """Every device with state, last_seen and its latest supervision status."""
        d = self.t.devices
        sup = {r["id"]: r["lost"] for r in self.supervised_devices()}
        with self.reader.connect() as conn:
            rows = [
                dict(r)
                for r in conn.execute(
                    select(
                        d.c.id, d.c.kind, d.c.state, d.c.last_seen, d.c.heartbeat_s, d.c.fw_version
                    ).order_by(d.c.id)
                ).mappings()
            ]
        for r in rows:
            r["supervision"] = None if r["id"] not in sup else ("lost" if sup[r["id"]] else "ok")
        return rows

    def dead_letter_counts(self) -> dict[str, int]:
        dl = self.t.dead_letters
        with self.reader.connect() as conn:
            return {
                r[0]: int(r[1])
                for r in conn.execute(select(dl.c.reason, func.count()).group_by(dl.c.reason))
            }


_PENDING_SQL = (
    "SELECT f.id, f.key, f.body, f.attempts, f.created_at, f.device_id, f.key_epoch, f.counter,"
    " a.type, a.payload, a.received_at, a.pressed_at, a.lost, a.disposition, a.via"
    " FROM forward_outbox f LEFT JOIN alerts a ON f.body IS NULL AND a.device_id = f.device_id"
    " AND a.key_epoch = f.key_epoch AND a.counter = f.counter"
    " WHERE f.id > ? AND f.forwarded_at IS NULL AND f.next_attempt_at <= ? ORDER BY f.id LIMIT ?"
)


def _pending_sqlite(conn: Connection, now: float, limit: int, after: int) -> list[dict[str, Any]]:
    """forward_pending on SQLite: one SELECT on the driver cursor, outside any transaction
    (no lock: the connection is read-only and in autocommit), bodies built as text.

    The forwarder shares the gateway's process (and GIL) with the hot commit, so
    every microsecond it spends per record is taken from alert throughput: the
    stored payload is already JSON and the stored times already UTC text, so an
    alert's record is assembled from them without decoding anything. The
    result equals records.alert_record (tests/gateway/test_forward_store.py).
    """
    cur = conn.connection.dbapi_connection.cursor()
    try:
        cur.execute(_PENDING_SQL, (after, _sqlite_time(now), limit))
        rows = cur.fetchall()
    finally:
        cur.close()
    labels: dict[int, str] = {}
    out = []
    for (
        fid,
        key,
        body,
        attempts,
        created,
        dev,
        epoch,
        ctr,
        typ,
        payload,
        got,
        pressed,
        lost,
        disp,
        via,
    ) in rows:
        if body is None:
            label = labels.get(dev)
            if label is None:
                label = labels[dev] = codec.device_str(dev)
            body = (
                '{"schema":"auxilio.forward/1","key":' + json.dumps(key)
                + ',"kind":"alert","type":' + json.dumps(typ)
                + ',"device":"' + label + '","epoch":' + str(epoch) + ',"counter":' + str(ctr)
                + ',"at":"' + _iso_text(got) + '","pressed_at":'
                + ('"' + _iso_text(pressed) + '"' if pressed else "null")
                + ',"fields":' + (payload or "{}")
                + ',"lost":' + ("true" if lost else "false")
                + ',"disposition":' + json.dumps(disp or "received")
                + ',"via":' + json.dumps(via or "mqtt") + ',"detail":""}'
            )  # fmt: skip
        at = dt.datetime.fromisoformat(created).replace(tzinfo=dt.timezone.utc)
        out.append({"id": fid, "key": key, "body": body, "attempts": attempts, "created_at": at})
    return out


def _iso_text(t: str) -> str:
    """'2026-11-28 19:00:05.123456' (SQLite storage, UTC) -> '2026-11-28T19:00:05.123Z'."""
    return t[:10] + "T" + t[11:19] + "." + (t[20:23] or "000") + "Z"


def _utc(t: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(t, dt.timezone.utc)
