"""Issue 8 §6, §8, §9, §11: replays are not signs of life; ACKs after a restart; the clock
and the press time; privacy at rest."""

from __future__ import annotations

import datetime as dt
import os
import stat
import time
from pathlib import Path
from typing import Any

import pytest
from auxilio.gateway.clock import ClockState
from auxilio.gateway.retention import purge_locations
from sqlalchemy import select, update

from .conftest import wait_for

pytestmark = pytest.mark.integration


def _event_times(registry: Any, device: int, etype: str) -> list[float]:
    e = registry.tables.events
    with registry.engine.connect() as conn:
        return [
            r[0].timestamp()
            for r in conn.execute(select(e.c.at).where(e.c.device_id == device, e.c.type == etype))
        ]


# ------------------------------------------------------------------ §6 ---


def test_replayed_frames_do_not_keep_a_silent_device_alive(
    gateway_factory: Any, fleet: Any, registry: Any
) -> None:
    """Repro: replaying a powered-off button's old frames kept it "alive" for 24 s (12.6 s
    without them). Only verified frames that advance the counter count (SPEC §12.7)."""
    gw = gateway_factory(grace_s=0.3)
    sim = fleet.sim("button")
    old = [sim.frame("HEARTBEAT", interval_s=1) for _ in range(3)]
    old.append(sim.frame("ALERT"))
    for _c, f in old:
        sim.publish(f)
    assert sim.wait_ack(old[-1][0])
    last = registry.get_device(sim.device).last_seen
    t_off = time.time()  # the button is powered off now; an attacker replays what it said

    def replay_then_lost() -> list[float]:
        for _c, f in old:
            sim.publish(f)
        return _event_times(registry, sim.device, "SUPERVISION_LOST")

    wait_for(replay_then_lost, 8, "SUPERVISION_LOST despite the replays", poll=0.2)
    lost_at = _event_times(registry, sim.device, "SUPERVISION_LOST")[0]
    assert lost_at - t_off < 1 * 2.5 + 0.3 + 1.5  # interval x 2.5 + grace (+ scheduling slack)
    assert registry.get_device(sim.device).last_seen == last  # replays never touched it
    assert gw.stats["duplicate"] + gw.stats["duplicate_heartbeat"] > 0


def test_online_status_does_not_clear_the_offline_hint(
    gateway_factory: Any, fleet: Any, registry: Any
) -> None:
    gw = gateway_factory(grace_s=0.2)
    sim = fleet.sim("button")
    sim.send("HEARTBEAT", interval_s=2)
    wait_for(lambda: registry.get_device(sim.device).last_seen is not None, what="heartbeat")
    status = sim.up.replace("/up", "/status")
    t0 = time.time()
    sim.client.publish(status, b"offline", qos=1, retain=True)
    sim.client.publish(status, b"online", qos=1, retain=True)  # unauthenticated: only a hint
    wait_for(lambda: gw.stats["status_online"] >= 2, what="statuses")
    wait_for(
        lambda: _event_times(registry, sim.device, "SUPERVISION_LOST"), timeout=10, what="LOST"
    )
    # offline + interval + grace, not interval x 2.5 + grace (5.2 s)
    assert _event_times(registry, sim.device, "SUPERVISION_LOST")[0] - t0 < 2 + 0.2 + 1.5


# ------------------------------------------------------------------ §8 ---


def test_stored_but_unacked_frames_are_acked_at_restart_without_a_resend(
    registry: Any, gw_key: Any, fleet: Any, mqtt_broker: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Repro: after kill -9, ~700 stored frames got their ACK only when the device re-sent
    (up to 60 s on a real backoff). Here the first gateway stores and PUBACKs 20 alerts but
    its ACKs never reach the broker; the device never re-sends."""
    from auxilio.gateway import Gateway

    gw = Gateway(registry, gw_key, mqtt_broker.url, clock_state=ClockState(True))
    monkeypatch.setattr(gw, "_send_ack", lambda *a, **k: None)  # the ACKs are lost
    gw.start(connect_attempts=50)
    assert gw.connected.wait(20)
    sim = fleet.sim()
    sent = [sim.send("ALERT") for _ in range(20)]
    wait_for(lambda: len(_rows(registry, sim.device)) == 20, what="stored")
    gw.stop()
    assert all(r["acked_at"] is None for r in _rows(registry, sim.device))
    assert all(sim.wait_ack(c, timeout=0.01) is None for c in sent)
    gw2 = Gateway(registry, gw_key, mqtt_broker.url, clock_state=ClockState(True))
    t0 = time.perf_counter()
    gw2.start(connect_attempts=50)
    try:
        for c in sent:
            assert sim.wait_ack(c, timeout=10)["disposition"] == "received"
        assert time.perf_counter() - t0 < 5
        assert gw2.stats["reacked_at_start"] == 20 and gw2.stats["duplicate"] == 0
        wait_for(
            lambda: all(r["acked_at"] for r in _rows(registry, sim.device)), what="acked_at set"
        )
    finally:
        gw2.stop()


def _rows(registry: Any, device: int) -> list[dict[str, Any]]:
    a = registry.tables.alerts
    with registry.engine.connect() as conn:
        return [dict(r) for r in conn.execute(select(a).where(a.c.device_id == device)).mappings()]


# ------------------------------------------------------------------ §9 ---


@pytest.mark.parametrize("synced", [True, False])
def test_ack_clock_synced_is_the_gateways_real_state(
    gateway_factory: Any, fleet: Any, synced: bool
) -> None:
    gateway_factory(clock_state=ClockState(synced))
    sim = fleet.sim()
    ack = sim.wait_ack(sim.send("ALERT"))
    assert ack["clock_synced"] is synced
    # An unsynchronised gateway cannot judge a device's clock: no time-NAK from it.
    c = sim.send("ALERT", timestamp=int(time.time()) - 3600, clock_synced=True)
    assert sim.wait_ack(c)["disposition"] == ("time_nak" if synced else "received")


def test_press_time_kept_apart_from_delivery_after_a_time_nak(
    gateway_factory: Any, fleet: Any, registry: Any
) -> None:
    """Repro: after an outage over 40 s the alert was time-NAKed and re-sent with the server
    time, and the C4 recorded the resend time instead of the press."""
    gateway_factory()
    sim = fleet.sim()
    pressed = int(time.time()) - 300  # pressed 5 min ago, during the outage
    c, first = sim.frame("ALERT", timestamp=pressed, clock_synced=True, pressed_at=pressed)
    sim.publish(first)
    assert sim.wait_ack(c)["disposition"] == "time_nak"
    now = int(time.time())
    again = sim.frame("ALERT", counter=c, timestamp=now, clock_synced=True, pressed_at=pressed)[1]
    sim.publish(again)  # the re-send: fresh header timestamp, same payload
    assert sim.wait_ack(c, n=2)["disposition"] == "received"
    row = _rows(registry, sim.device)[0]
    assert row["pressed_at"].timestamp() == pressed
    assert row["device_ts"] == now and row["received_at"].timestamp() >= now - 1
    # The operator sees both: "pulsada 19:00:05 · recibida 19:05:40".
    from auxilio.console.view import print_once
    from rich.console import Console

    console = Console(record=True, width=200)
    snap = print_once(registry, console=console)
    assert snap["alerts"][0]["pressed_at"] is not None
    shown = dt.datetime.fromtimestamp(pressed).strftime("%H:%M:%S")
    assert f"pulsada {shown}" in console.export_text()


# ----------------------------------------------------------------- §11 ---


def test_registry_file_is_private(tmp_path: Path) -> None:
    from auxilio.registry import open_registry

    reg = open_registry(tmp_path / "r.db")
    reg.list_devices()
    reg.close()
    for p in tmp_path.iterdir():
        assert stat.S_IMODE(p.stat().st_mode) & 0o077 == 0, p
    old = tmp_path / "old.db"
    old.touch()
    os.chmod(old, 0o644)
    open_registry(old).close()
    assert stat.S_IMODE(old.stat().st_mode) == 0o600


def test_retention_erases_old_locations_and_keeps_the_alerts(
    gateway: Any, fleet: Any, registry: Any
) -> None:
    sim = fleet.sim()
    old, new = sim.send("ALERT"), None
    assert sim.wait_ack(old)
    new = sim.send("ALERT")
    assert sim.wait_ack(new)
    a = registry.tables.alerts
    long_ago = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=91)
    with registry.engine.begin() as conn:
        conn.execute(update(a).where(a.c.counter == old).values(received_at=long_ago))
    n = purge_locations(registry, 90, time.time())
    assert n == 1
    rows = {r["counter"]: r for r in _rows(registry, sim.device)}
    assert rows[old]["payload"]["lat_e7"] is None and rows[old]["raw"] is None
    assert rows[old]["payload"]["battery"] == 80 and rows[old]["disposition"] == "received"
    assert rows[new]["payload"]["lat_e7"] == 194326080 and rows[new]["raw"] is not None
    assert purge_locations(registry, 90, time.time()) == 0  # idempotent
    assert registry.audit_log(limit=5)  # the audit trail stays


def test_flash_images_are_private(tmp_path: Path) -> None:
    """A virtual board's flash holds its config.json, secret included (issue 8 §11)."""
    from auxilio.boards import load_board
    from auxilio.emulator.image import FlashImage

    img = FlashImage(tmp_path / "b.img", load_board("bracelet-c3")).create()
    assert stat.S_IMODE(img.path.stat().st_mode) == 0o600
    img.erase()
    assert stat.S_IMODE(img.path.stat().st_mode) == 0o600
