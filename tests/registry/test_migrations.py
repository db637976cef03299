"""Schema migrations: an older database is brought up to date, a newer one is refused."""

from __future__ import annotations

import datetime as dt

import pytest
from auxilio.registry import LATEST_VERSION, SchemaTooNew, migrations, open_registry
from auxilio.registry.store import create_registry_engine, resolve_url
from sqlalchemy import inspect, select, text


def test_v1_database_is_migrated_keeping_rows(registry_url: str) -> None:
    engine = create_registry_engine(resolve_url(registry_url))
    try:
        assert migrations.migrate(engine, target=1) == (0, 1)
        now = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
        with engine.begin() as conn:
            assert "mqtt_password_hash" not in {
                c["name"] for c in inspect(conn).get_columns("devices")
            }
            conn.execute(
                text(
                    'INSERT INTO devices (id, kind, board, state, key_epoch, sealed_secret, config_seq, "window", created_at, updated_at) '
                    "VALUES (77, 'bracelet', 'b', 'spare', 1, :s, 0, 0, :t, :t)"
                ),
                {"s": b"sealed", "t": now.replace(tzinfo=None)},
            )
    finally:
        engine.dispose()
    with open_registry(registry_url) as reg:
        assert reg.schema_version == LATEST_VERSION
        rec = reg.get_device(77)
        assert rec is not None and rec.sealed_secret == b"sealed" and rec.mqtt_password_hash is None
        assert rec.created_at == now
        with reg.engine.connect() as conn:
            versions = [
                r[0]
                for r in conn.execute(
                    select(migrations.schema_version.c.version).order_by(text("version"))
                )
            ]
        assert versions == list(range(1, LATEST_VERSION + 1))


def test_newer_database_is_refused(registry_url: str) -> None:
    open_registry(registry_url).close()
    engine = create_registry_engine(resolve_url(registry_url))
    try:
        with engine.begin() as conn:
            conn.execute(
                migrations.schema_version.insert().values(
                    version=LATEST_VERSION + 5, applied_at=dt.datetime.now(dt.timezone.utc)
                )
            )
    finally:
        engine.dispose()
    with pytest.raises(SchemaTooNew) as exc:
        open_registry(registry_url)
    assert "newer" in str(exc.value) and "\n" not in str(exc.value)


def test_v3_alerts_move_to_frame_names_with_the_devices_key_epoch(registry_url: str) -> None:
    """v4 names frames (device, key epoch, counter): old rows keep their data and take the
    device's current epoch; the same counter under a new epoch is then a new name."""
    engine = create_registry_engine(resolve_url(registry_url))
    t = dt.datetime(2026, 1, 1)
    try:
        migrations.migrate(engine, target=3)
        with engine.begin() as conn:
            conn.execute(
                text(
                    'INSERT INTO devices (id, kind, board, state, key_epoch, sealed_secret, config_seq, "window", created_at, updated_at) '
                    "VALUES (78, 'bracelet', 'b', 'assigned', 2, :s, 0, 0, :t, :t)"
                ),
                {"s": b"sealed", "t": t},
            )
            conn.execute(
                text(
                    "INSERT INTO alerts (device_id, counter, type, flags, device_ts, raw, received_at, disposition, test, lost) "
                    "VALUES (78, 9, 'ALERT', 6, 0, :r, :t, 'attending', false, false)"
                ),
                {"r": b"frame", "t": t},
            )
    finally:
        engine.dispose()
    with open_registry(registry_url) as reg:
        a = reg.tables.alerts
        with reg.engine.connect() as conn:
            row = conn.execute(select(a).where(a.c.device_id == 78)).mappings().one()
        assert (row["key_epoch"], row["counter"], row["raw"], row["disposition"], row["via"]) == (
            2,
            9,
            b"frame",
            "attending",
            "mqtt",
        )
        with reg.engine.begin() as conn:  # counter 9 under epoch 3: a new name, no conflict
            conn.execute(
                a.insert().values(
                    device_id=78,
                    key_epoch=3,
                    counter=9,
                    type="ALERT",
                    received_at=dt.datetime.now(dt.timezone.utc),
                )
            )
        assert {"forward_outbox", "dead_letters", "attend_requests"} <= set(
            inspect(reg.engine).get_table_names()
        )


def test_v4_gains_operator_outcomes_kept_apart_and_audited(registry_url: str) -> None:
    """v6 (issue 9 §1): an `outcomes` table beside what the gateway owns; the database
    itself audits each row, closes only ALERTs, keeps revisions in order and never
    lets a row change."""
    engine = create_registry_engine(resolve_url(registry_url))
    t = dt.datetime(2026, 1, 1)
    try:
        migrations.migrate(engine, target=4)
        with engine.begin() as conn:
            conn.execute(
                text(
                    'INSERT INTO devices (id, kind, board, state, key_epoch, sealed_secret, config_seq, "window", created_at, updated_at) '
                    "VALUES (79, 'bracelet', 'b', 'assigned', 1, :s, 0, 0, :t, :t)"
                ),
                {"s": b"sealed", "t": t},
            )
            for counter, typ in ((1, "ALERT"), (2, "BOOT")):
                conn.execute(
                    text(
                        "INSERT INTO alerts (device_id, key_epoch, counter, type, flags, received_at, test, lost, via) "
                        "VALUES (79, 1, :c, :ty, 0, :t, false, false, 'mqtt')"
                    ),
                    {"c": counter, "ty": typ, "t": t},
                )
    finally:
        engine.dispose()
    with open_registry(registry_url) as reg:
        assert reg.schema_version == LATEST_VERSION
        insp = inspect(reg.engine)
        assert "outcomes" in insp.get_table_names()
        assert "ix_alerts_pending" in {i["name"] for i in insp.get_indexes("alerts")}
        a, o = reg.tables.alerts, reg.tables.outcomes
        with reg.engine.connect() as conn:
            ids = dict(conn.execute(select(a.c.type, a.c.id)).all())
        now = dt.datetime.now(dt.timezone.utc)

        def close(alert_id: int, revision: int) -> None:
            with reg.engine.begin() as conn:
                conn.execute(
                    o.insert().values(
                        alert_id=alert_id,
                        revision=revision,
                        outcome="false_alarm",
                        note="",
                        operator="op-1",
                        closed_at=now,
                        attended=False,
                    )
                )

        close(ids["ALERT"], 1)
        for bad in ((ids["BOOT"], 1), (ids["ALERT"], 3), (ids["ALERT"], 1)):
            with pytest.raises(Exception, match="only an ALERT|out of order|unique|UNIQUE"):
                close(*bad)
        with pytest.raises(Exception, match="append-only"):
            with reg.engine.begin() as conn:
                conn.execute(o.update().values(outcome="resolved"))
        audit = [r for r in reg.audit_log(10) if r["target"] == f"alert:{ids['ALERT']}"]
        assert [(r["actor"], r["action"]) for r in audit] == [("op-1", "close")]
        assert audit[0]["detail"] == "outcome=false_alarm revision=1 unattended"
