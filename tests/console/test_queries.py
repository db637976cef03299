"""The console's refresh stays cheap: bounded lists, and the plans use the indexes (SQLite)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from auxilio.console import queries
from auxilio.console.outcomes import Closer
from sqlalchemy import insert

DEV = 0x1234500


def _plan(reg: Any, stmt: Any) -> str:
    with reg.engine.connect() as conn:
        sql = str(stmt.compile(conn, compile_kwargs={"literal_binds": True}))
        return " | ".join(r[-1] for r in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql))


def test_refresh_is_bounded_and_indexed(seed: Any) -> None:
    seed.device(DEV, case="PR-2026-00123")
    a, e = seed.registry.tables.alerts, seed.registry.tables.events
    t0 = seed.now - dt.timedelta(days=30)
    with seed.registry.engine.begin() as conn:
        conn.execute(
            insert(a),
            [
                {
                    "device_id": DEV,
                    "key_epoch": 1,
                    "counter": i,
                    "type": "ALERT" if i % 4 == 0 else "POWER",
                    "received_at": t0 + dt.timedelta(minutes=i),
                    "attending_at": t0 + dt.timedelta(minutes=i, seconds=5) if i % 8 else None,
                }
                for i in range(1, 2001)
            ],
        )
        conn.execute(
            insert(e),
            [
                {"device_id": DEV, "type": "SUPERVISION_LOST" if i % 2 else "BOOT", "at": t0}
                for i in range(500)
            ],
        )
    pending_ids = [i for i in range(1, 2001) if i % 4 == 0 and i % 8 == 0]
    with Closer(seed.path) as closer:
        closer.close_alert(pending_ids[0], "false_alarm", "op")  # closed: out of the queue
    raw = queries.load(seed.registry, limit=15)
    assert raw.pending_total == len(pending_ids) - 1
    assert len(raw.pending) == 15 and len(raw.recent) == 15 and len(raw.events) == 15
    # The queue is the oldest first, and never holds the closed one.
    assert [r["counter"] for r in raw.pending] == pending_ids[1:16]
    assert raw.supervision_lost == {DEV}
    t = seed.registry.tables
    # The queue reads only the partial index's rows (unattended ALERTs), never the history.
    for stmt in (queries.pending_query(t, 15), queries.pending_count_query(t)):
        plan = _plan(seed.registry, stmt)
        assert plan.startswith("SCAN alerts USING INDEX ix_alerts_pending"), plan
    # Recent rows come in primary-key order and stop at the LIMIT (no sort of the table).
    plan = _plan(seed.registry, queries.recent_query(t, 15))
    assert "TEMP B-TREE" not in plan, plan
    # Supervision per device: index seeks, never a scan of the event history.
    plan = _plan(seed.registry, queries.supervision_lost_query(t))
    assert plan.count("COVERING INDEX ix_events_type_device (type=? AND device_id=?)") == 2, plan
    assert "SCAN events" not in plan, plan
