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
