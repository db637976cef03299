"""Supervision (SUPERVISION_LOST within the bound, RESTORED, LWT hint) and the operator's attending ACK."""

from __future__ import annotations

import time
from typing import Any

import pytest
from auxilio.gateway.control import request_attend
from auxilio.gateway.supervision import MISSED_FACTOR
from sqlalchemy import select

from .conftest import wait_for

pytestmark = pytest.mark.integration


def _event_types(registry: Any, device: int) -> list[str]:
    e = registry.tables.events
    with registry.engine.connect() as conn:
        return [
            r[0]
            for r in conn.execute(select(e.c.type).where(e.c.device_id == device).order_by(e.c.id))
        ]


def test_silent_device_lost_within_bound_then_restored(
    gateway_factory: Any, fleet: Any, registry: Any
) -> None:
    grace = 0.5
    interval = 1
    gw = gateway_factory(grace_s=grace)
    sim = fleet.sim("button")
    c = sim.send("HEARTBEAT", interval_s=interval)
    wait_for(lambda: registry.get_device(sim.device).high_water == c, what="heartbeat")
    t_last = time.time()
    bound = interval * MISSED_FACTOR + grace
    wait_for(
        lambda: "SUPERVISION_LOST" in _event_types(registry, sim.device),
        timeout=bound + 10,
        what="LOST",
    )
    elapsed = time.time() - t_last
    # Raised after the bound (never early) and within one supervision tick of it (plus slack for a busy box).
    assert bound - 0.1 <= elapsed <= bound + 3.0, elapsed
    assert gw.stats["supervision_lost"] == 1
    sim.send("HEARTBEAT", interval_s=interval)
    wait_for(lambda: "SUPERVISION_RESTORED" in _event_types(registry, sim.device), what="RESTORED")
    assert _event_types(registry, sim.device) == ["SUPERVISION_LOST", "SUPERVISION_RESTORED"]


def test_offline_status_hint_shortens_the_deadline(
    gateway_factory: Any, fleet: Any, registry: Any
) -> None:
    gw = gateway_factory(grace_s=0.5)
    sim = fleet.sim("bracelet")
    sim.send("HEARTBEAT", interval_s=2)  # bound without a hint: 2 * 2.5 + 0.5 = 5.5 s
    wait_for(lambda: registry.get_device(sim.device).last_seen is not None, what="heartbeat")
    t0 = time.time()
    sim.client.publish(sim.up.replace("/up", "/status"), b"offline", qos=1, retain=True)
    wait_for(lambda: gw.stats["status_offline"] == 1, what="status")
    wait_for(
        lambda: "SUPERVISION_LOST" in _event_types(registry, sim.device), timeout=15, what="LOST"
    )
    assert time.time() - t0 < 5.0  # interval + grace after the hint


def _alert_id(registry: Any, device: int, counter: int) -> int:
    a = registry.tables.alerts
    with registry.engine.connect() as conn:
        return conn.execute(
            select(a.c.id).where(a.c.device_id == device, a.c.counter == counter)
        ).scalar()


def test_attend_sends_signed_attending_ack_once(
    gateway: Any, fleet: Any, registry: Any, mqtt_broker: Any
) -> None:
    sim = fleet.sim()
    c = sim.send("ALERT")
    assert sim.wait_ack(c)["disposition"] == "received"
    alert_id = _alert_id(registry, sim.device, c)
    res = request_attend(mqtt_broker.url, alert_id, "operadora-7")
    assert res.sent, res
    ack = sim.wait_ack(c, n=2)
    assert ack["disposition"] == "attending" and ack["acked_type"] == "ALERT"
    row = gateway.store.alert(alert_id)
    assert row["attending_by"] == "operadora-7" and row["attending_at"] is not None
    # A second request is answered, never signed again (issue 8 §3).
    again = request_attend(mqtt_broker.url, alert_id, "operadora-8")
    assert again.sent and again.reason == "already_attended"
    assert sim.wait_ack(c, n=3, timeout=0.5) is None
    # A retransmission after that gets the stored disposition: attending.
    sim.publish(sim.frame("ALERT", counter=c)[1])
    assert sim.wait_ack(c, n=3)["disposition"] == "attending"
    actions = [r["action"] for r in registry.audit_log(limit=10)]
    assert actions.count("attend") == 1 and actions.count("attend-request") == 2


def _cli(*args: str) -> Any:
    import subprocess
    import sys

    return subprocess.run(
        [sys.executable, "-m", "auxilio.cli", *args], capture_output=True, text=True, timeout=60
    )


def test_attend_cli_and_monitor_once(
    gateway: Any, fleet: Any, registry: Any, registry_url: str, mqtt_broker: Any
) -> None:
    import json

    sim = fleet.sim()
    c = sim.send("ALERT")
    assert sim.wait_ack(c)
    sim.send("TAMPER")
    a = registry.tables.alerts
    with registry.engine.connect() as conn:
        alert_id = conn.execute(
            select(a.c.id).where(a.c.device_id == sim.device, a.c.counter == c)
        ).scalar()
    r = _cli("attend", str(alert_id), "--operator", "op-3", "--broker", mqtt_broker.url, "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["operator"] == "op-3" and out["state"] == "sent"
    assert sim.wait_ack(c, n=2)["disposition"] == "attending"
    r = _cli("attend", "999999", "--broker", mqtt_broker.url, "--json")
    assert r.returncode == 1 and json.loads(r.stdout)["reason"] == "unknown_alert"
    wait_for(
        lambda: len([x for x in _event_types(registry, sim.device) if x == "TAMPER"]) == 1,
        what="tamper",
    )
    r = _cli("monitor", "--once", "--json", "--registry", registry_url)
    assert r.returncode == 0, r.stderr
    snap = json.loads(r.stdout)
    mine = [x for x in snap["alerts"] if x["id"] == alert_id][0]
    assert mine["attending_by"] == "op-3" and mine["disposition"] == "attending"
    assert any(e["type"] == "TAMPER" for e in snap["events"])
    assert snap["devices"][0]["supervision"] == "ok"
    r = _cli("monitor", "--once", "--registry", registry_url)
    assert r.returncode == 0 and "Alertas recientes" in r.stdout


def test_gateway_restart_keeps_lost_state_no_duplicate_events(
    gateway_factory: Any, fleet: Any, registry: Any
) -> None:
    gw = gateway_factory(grace_s=0.3)
    sim = fleet.sim("button")
    c = sim.send("HEARTBEAT", interval_s=1)
    wait_for(lambda: registry.get_device(sim.device).high_water == c, what="heartbeat")
    wait_for(lambda: "SUPERVISION_LOST" in _event_types(registry, sim.device), what="LOST")
    gw.stop()
    gw2 = gateway_factory(grace_s=0.3)
    time.sleep(1.5)  # well past interval x 2.5 + grace, counted from the restart
    assert _event_types(registry, sim.device) == ["SUPERVISION_LOST"]
    sim.send("HEARTBEAT", interval_s=1)
    wait_for(lambda: "SUPERVISION_RESTORED" in _event_types(registry, sim.device), what="RESTORED")
    assert gw2.stats["supervision_lost"] == 0
