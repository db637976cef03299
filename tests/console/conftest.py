"""Console fixtures: a fixed local zone, a secured chain with an assigned bracelet and button,
and a registry seeded directly for the queries and the report."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from auxilio.registry import open_registry
from sqlalchemy import insert

# A zone without daylight saving since 2022, so "-06:00" is always its offset.
ZONE = "America/Mexico_City"
OFFSET = "-06:00"
CASE = "PR-2026-00123"
SITE = ("Plaza Mayor", 19.4326, -99.1332, "Centro")


@pytest.fixture
def local_zone(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Local time is Mexico City's for the test (times must show -06:00)."""
    monkeypatch.setenv("TZ", ZONE)
    time.tzset()
    try:
        yield OFFSET
    finally:
        monkeypatch.undo()
        time.tzset()


@pytest.fixture
def chain(tmp_path: Path) -> Iterator[Any]:
    """The secured chain (real mosquitto with the generated config, gateway logins), with
    device 0 a bracelet assigned to CASE and device 1 a button placed at SITE."""
    from auxilio.testing.chain import SecureChain
    from auxilio.testing.mosquitto import mosquitto_binary

    if mosquitto_binary() is None:
        pytest.skip("mosquitto is not installed")
    ch = SecureChain(tmp_path, devices=[("bracelet", "bracelet-c3"), ("button", "button-s3")])
    try:
        ch.registry.assign_case(ch.device_id(0), CASE, actor="test")
        ch.registry.assign_site(ch.device_id(1), *SITE, actor="test")
        yield ch
    finally:
        ch.close()


class Seed:
    """Rows written straight into a registry (what the gateway would have stored)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.registry = open_registry(path)
        self.now = dt.datetime.now(dt.timezone.utc)
        self._counters: dict[int, int] = {}

    def device(
        self, dev: int, kind: str = "bracelet", case: str | None = None, site: bool = False
    ) -> int:
        reg = self.registry
        reg.add_device(dev, kind, "devkit-esp32", b"sealed", actor="test")
        if case:
            reg.assign_case(dev, case, valid_from="2020-01-01", actor="test")
        if site:
            reg.assign_site(dev, *SITE, valid_from="2020-01-01", actor="test")
        return dev

    def seen(self, dev: int, at: dt.datetime | None) -> None:
        d = self.registry.tables.devices
        with self.registry.engine.begin() as conn:
            conn.execute(d.update().where(d.c.id == dev).values(last_seen=at))

    def frame(self, dev: int, typ: str = "ALERT", **values: Any) -> int:
        """A stored frame; returns its alerts.id."""
        c = self._counters[dev] = self._counters.get(dev, 0) + 1
        values.setdefault("received_at", self.now)
        values.setdefault("disposition", "received")
        a = self.registry.tables.alerts
        with self.registry.engine.begin() as conn:
            return int(
                conn.execute(
                    insert(a)
                    .values(device_id=dev, key_epoch=1, counter=c, type=typ, **values)
                    .returning(a.c.id)
                ).scalar_one()
            )

    def event(self, dev: int | None, typ: str, **detail: Any) -> None:
        e = self.registry.tables.events
        with self.registry.engine.begin() as conn:
            conn.execute(insert(e).values(device_id=dev, type=typ, at=self.now, detail=detail))

    def close(self) -> None:
        self.registry.close()


@pytest.fixture
def seed(tmp_path: Path) -> Iterator[Seed]:
    s = Seed(tmp_path / "registry.db")
    try:
        yield s
    finally:
        s.close()
