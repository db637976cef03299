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
