"""The forward outbox queries (gateway/store.py): what the forwarder reads and marks, read back
through Core, on every backend; and on SQLite, reads that never take the write lock."""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
import threading
import time
from typing import Any

import pytest
from auxilio.gateway import records as R
from auxilio.gateway.pipeline import alert_forward_row, forward_row
from auxilio.gateway.store import Batch, Store
from auxilio.protocol import codec
from auxilio.registry import open_registry
from sqlalchemy import select

DEV = 0x1234500
LABEL = codec.device_str(DEV)
T0 = 1_790_000_000.25  # a fixed commit time (UTC) with a fraction of a second


def _alert_row(counter: int, at: float) -> dict[str, Any]:
    return {
        "device_id": DEV,
        "key_epoch": 1,
        "counter": counter,
        "type": "ALERT",
        "flags": 1,
        "device_ts": 0,
        "pressed_at": None,
        "payload": {"lat_e7": 1, "lon_e7": 2},
        "raw": b"r" * 51,
        "gw_seal": b"s" * 16,
        "received_at": at,
        "disposition": "received",
        "via": "mqtt",
        "test": False,
        "lost": False,
    }


def _commit(store: Store, counters: list[int], at: float, event: bool = True) -> None:
    """Alerts with their forward records, plus a TAMPER event record, in one batch."""
    b = Batch()
    for c in counters:
        b.alerts.append(_alert_row(c, at))
        b.forward.append(alert_forward_row(DEV, 1, c, at))
    if event:
        rec = R.event_record(DEV, "TAMPER", at, {"open": True}, 1, max(counters) + 1)
        b.forward.append(forward_row(rec, at))
    store.commit(b)


def _rows(registry: Any, table: str) -> list[dict[str, Any]]:
    t = getattr(registry.tables, table)
    with registry.engine.connect() as conn:
        return [dict(r) for r in conn.execute(select(t).order_by(t.c.id)).mappings()]


@pytest.fixture
def store(registry: Any) -> Store:
    registry.add_device(DEV, "bracelet", "devkit-esp32", b"\x00" * 80, actor="test")
    return Store(registry)


def test_pending_oldest_first_due_only_with_limit(store: Store, registry: Any) -> None:
    _commit(store, [1, 2], T0)
    _commit(store, [3], T0 + 1, event=False)
    pending = store.forward_pending(T0 + 2, 10)
    assert [p["key"] for p in pending] == [
        f"alert:{LABEL}:1:1",
        f"alert:{LABEL}:1:2",
        f"event:{LABEL}:TAMPER:1:3",
        f"alert:{LABEL}:1:3",
    ]
    stored = _rows(registry, "forward_outbox")
    assert [p["id"] for p in pending] == [r["id"] for r in stored]
    # An alert's record is built from its row, exactly as the pipeline would have made it.
    want = R.alert_record(DEV, 1, 1, "ALERT", {"lat_e7": 1, "lon_e7": 2}, T0, False, "received")
    assert json.loads(pending[0]["body"]) == want and stored[0]["body"] is None
    assert json.loads(pending[2]["body"])["type"] == "TAMPER"  # an event keeps its JSON
    assert all(p["attempts"] == 0 for p in pending)
    # The same aware UTC datetime Core returns for the column.
    assert pending[0]["created_at"] == stored[0]["created_at"]
    assert pending[0]["created_at"] == dt.datetime.fromtimestamp(T0, dt.timezone.utc)
    assert [p["id"] for p in store.forward_pending(T0 + 2, 2)] == [r["id"] for r in stored[:2]]
    # Not due yet: the last batch's record waits until its next_attempt_at.
    assert len(store.forward_pending(T0 + 0.5, 10)) == 3
    store.forward_failed(stored[0]["id"], "HTTP 503", T0 + 60)
    assert stored[0]["id"] not in [p["id"] for p in store.forward_pending(T0 + 2, 10)]


@pytest.mark.parametrize("keep", [False, True])
def test_done_marks_their_alerts_once_and_drops_the_records(
    store: Store, registry: Any, keep: bool
) -> None:
    _commit(store, [1, 2, 3], T0)
    pending = store.forward_pending(T0 + 1, 10)
    kept = f"alert:{LABEL}:1:2"  # this one stays pending
    store.forward_done([p["id"] for p in pending if p["key"] != kept], T0 + 5, keep=keep)
    at = dt.datetime.fromtimestamp(T0 + 5, dt.timezone.utc)
    outbox = {r["key"]: r for r in _rows(registry, "forward_outbox")}
    done = (f"alert:{LABEL}:1:1", f"alert:{LABEL}:1:3", f"event:{LABEL}:TAMPER:1:4")
    if keep:  # a pipe's records stay, marked, for the resend window
        assert all(outbox[k]["forwarded_at"] == at for k in done)
    else:  # a confirmed record is gone (it carried a location)
        assert not set(done) & set(outbox)
    assert outbox[kept]["forwarded_at"] is None
    alerts = {r["counter"]: r["forwarded_at"] for r in _rows(registry, "alerts")}
    assert alerts == {1: at, 2: None, 3: at}
    n, oldest = store.forward_backlog()
    assert n == 1 and oldest == dt.datetime.fromtimestamp(T0, dt.timezone.utc)
    # Marking again never moves a time already written.
    store.forward_done([p["id"] for p in pending], T0 + 9, keep=keep)
    alerts = {r["counter"]: r["forwarded_at"] for r in _rows(registry, "alerts")}
    assert alerts == {1: at, 2: dt.datetime.fromtimestamp(T0 + 9, dt.timezone.utc), 3: at}
    if keep:
        assert store.forward_unmark_since(T0 + 4) == 4
        assert len(store.forward_pending(T0 + 10, 10)) == 4
        store.forward_drop_before(T0 + 100)
        assert len(_rows(registry, "forward_outbox")) == 4  # pending again: never dropped


def test_backlog_empty_and_read_only_console(
    store: Store, registry: Any, registry_url: str
) -> None:
    assert store.forward_backlog() == (0, None)
    assert store.forward_pending(T0, 10) == []
    _commit(store, [1], T0)
    console = open_registry(registry_url, readonly=True)
    try:
        n, _oldest = Store(console).forward_backlog()  # `auxilio gateway status` reads this
    finally:
        console.close()
    assert n == 2


@pytest.mark.parametrize("registry_url", ["sqlite"], indirect=True)
def test_sqlite_reads_wait_for_no_writer(store: Store, registry_url: str) -> None:
    """The forwarder's reads take no lock: a writer holding SQLite's write lock (as the hot
    commit does) neither blocks them nor is blocked by them."""
    _commit(store, [1], T0)
    writer = sqlite3.connect(registry_url, isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")  # the write lock, held
    got: list[Any] = []

    def read() -> None:
        got.append((len(store.forward_pending(T0 + 1, 10)), store.forward_backlog()[0]))

    t = threading.Thread(target=read, daemon=True)
    t0 = time.monotonic()
    t.start()
    t.join(5)  # a lock-taking read would wait out the 30 s busy timeout
    writer.execute("ROLLBACK")
    writer.close()
    assert got == [(2, 2)] and time.monotonic() - t0 < 5


def test_a_pipe_resumes_after_its_watermark_and_ids_are_never_reused(
    store: Store, registry: Any
) -> None:
    """The forwarder reads a pipe's pending records after the last id it took; that is only
    safe if an id is never handed out again, even once every record was dropped."""
    _commit(store, [1, 2], T0, event=False)
    first = store.forward_pending(T0 + 1, 10)
    store.forward_done([p["id"] for p in first], T0 + 2, keep=True)
    assert store.forward_pending(T0 + 3, 10, after=first[-1]["id"]) == []
    store.forward_drop_before(T0 + 100)  # past the resend window: the table is empty
    assert _rows(registry, "forward_outbox") == []
    _commit(store, [3], T0 + 101, event=False)
    again = store.forward_pending(T0 + 102, 10, after=first[-1]["id"])
    assert [p["key"] for p in again] == [f"alert:{LABEL}:1:3"]
    assert again[0]["id"] > first[-1]["id"]
