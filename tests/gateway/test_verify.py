"""Gateway verification against a real mosquitto: tags, keys, replay window, clock, lifecycle states."""

from __future__ import annotations

import io
import json
import time
from typing import Any

import pytest
from auxilio.gateway.forward import JsonlSink
from auxilio.protocol import codec
from sqlalchemy import func, select

from .conftest import wait_for

pytestmark = pytest.mark.integration


def _alerts(registry: Any, device: int) -> list[dict[str, Any]]:
    a = registry.tables.alerts
    with registry.engine.connect() as conn:
        return [
            dict(r)
            for r in conn.execute(
                select(a).where(a.c.device_id == device).order_by(a.c.counter)
            ).mappings()
        ]


def _events(registry: Any, device: int, etype: str | None = None) -> list[dict[str, Any]]:
    e = registry.tables.events
    q = select(e).where(e.c.device_id == device)
    if etype:
        q = q.where(e.c.type == etype)
    with registry.engine.connect() as conn:
        return [dict(r) for r in conn.execute(q.order_by(e.c.id)).mappings()]


def _barrier(sim: Any) -> None:
    """Send a genuine frame and wait for its ACK: everything published before it has been processed."""
    c = sim.send("TAMPER", open=False)
    assert sim.wait_ack(c) is not None


def test_alert_is_stored_then_acked_received(gateway: Any, fleet: Any, registry: Any) -> None:
    sim = fleet.sim()
    c = sim.send("ALERT")
    ack = sim.wait_ack(c)
    assert ack["disposition"] == "received" and ack["acked_type"] == "ALERT"
    assert abs(ack["timestamp"] - time.time()) < 5  # server time for clock sync
    rows = _alerts(registry, sim.device)
    assert [(r["counter"], r["type"], r["disposition"]) for r in rows] == [(c, "ALERT", "received")]
    assert rows[0]["payload"]["lat_e7"] == 194326080
    dev = registry.get_device(sim.device)
    assert dev.high_water == c and dev.window & 1 and dev.last_seen is not None
    wait_for(lambda: _alerts(registry, sim.device)[0]["acked_at"] is not None, what="acked_at")


def test_forged_tag_dropped_and_counted(gateway: Any, fleet: Any, registry: Any) -> None:
    sim = fleet.sim()
    c, frame = sim.frame("ALERT")
    forged = bytearray(frame)
    forged[-1] ^= 0x01
    sim.publish(bytes(forged))
    _barrier(sim)
    assert gateway.stats["drop_bad_tag"] == 1
    assert sim.wait_ack(c, timeout=0.5) is None
    assert [r["type"] for r in _alerts(registry, sim.device)] == ["TAMPER"]


def test_wrong_device_key_dropped(gateway: Any, fleet: Any, registry: Any) -> None:
    sim = fleet.sim(secret=b"\x42" * 32)  # registered with another secret
    c = sim.send("ALERT")
    wait_for(lambda: gateway.stats["drop_bad_tag"] == 1, what="bad_tag count")
    assert sim.wait_ack(c, timeout=0.5) is None
    assert _alerts(registry, sim.device) == []


def test_duplicate_acked_twice_stored_once(gateway: Any, fleet: Any, registry: Any) -> None:
    sim = fleet.sim()
    c, frame = sim.frame("ALERT")
    sim.publish(frame)
    assert sim.wait_ack(c)["disposition"] == "received"
    # The same frame again, and a retransmission (restamped, retransmission flag).
    sim.publish(frame)
    buf = bytearray(frame)
    codec.restamp(buf, len(buf), sim.keys, 0, set_flags=codec.FLAG_RETRANSMISSION)
    sim.publish(bytes(buf))
    assert sim.wait_ack(c, n=3)["disposition"] == "received"
    assert len(_alerts(registry, sim.device)) == 1
    assert gateway.stats["duplicate"] == 2


def test_replayed_old_frame_reacked_and_unknown_old_counter_rejected(
    gateway: Any, fleet: Any, registry: Any
) -> None:
    sim = fleet.sim()
    c_old, old = sim.frame("ALERT")
    sim.publish(old)
    assert sim.wait_ack(c_old)
    # Move the window far past it with heartbeats (no ACK for those).
    for _ in range(70):
        sim.send("HEARTBEAT")
    _barrier(sim)
    assert registry.get_device(sim.device).high_water > c_old + 64
    # A replay of a stored frame is answered idempotently, nothing new stored.
    sim.publish(old)
    assert sim.wait_ack(c_old, n=2)["disposition"] == "received"
    # A never-seen counter below the window is a replay: rejected/replay.
    c_below, below = sim.frame("ALERT", counter=c_old + 1)
    sim.publish(below)
    ack = sim.wait_ack(c_below)
    assert (ack["disposition"], ack["reason"]) == ("rejected", "replay")
    assert [r["counter"] for r in _alerts(registry, sim.device) if r["type"] == "ALERT"] == [c_old]


def test_out_of_order_inside_window_accepted_once(gateway: Any, fleet: Any, registry: Any) -> None:
    sim = fleet.sim()
    c1, f1 = sim.frame("ALERT")
    c2, f2 = sim.frame("ALERT")
    sim.publish(f2)
    assert sim.wait_ack(c2)
    sim.publish(f1)  # older but inside the window: accepted
    assert sim.wait_ack(c1)["disposition"] == "received"
    sim.publish(f1)
    assert sim.wait_ack(c1, n=2)["disposition"] == "received"
    assert sorted(r["counter"] for r in _alerts(registry, sim.device)) == [c1, c2]


def test_skewed_clock_time_nak_then_restamped_resend_accepted(
    gateway: Any, fleet: Any, registry: Any
) -> None:
    sim = fleet.sim()
    stale = int(time.time()) - 300
    c, frame = sim.frame("ALERT", timestamp=stale, clock_synced=True)
    sim.publish(frame)
    nak = sim.wait_ack(c)
    assert nak["disposition"] == "time_nak"
    assert abs(nak["timestamp"] - time.time()) < 5
    assert _alerts(registry, sim.device) == []  # nothing stored
    ahead = int(time.time()) + 120  # too far ahead is refused too
    buf = bytearray(frame)
    codec.restamp(buf, len(buf), sim.keys, ahead, set_flags=codec.FLAG_RETRANSMISSION)
    sim.publish(bytes(buf))
    assert sim.wait_ack(c, n=2)["disposition"] == "time_nak"
    # The device sets its clock from the ACK and re-sends the same counter.
    codec.restamp(buf, len(buf), sim.keys, nak["timestamp"], set_flags=codec.FLAG_RETRANSMISSION)
    sim.publish(bytes(buf))
    assert sim.wait_ack(c, n=3)["disposition"] == "received"
    assert [r["counter"] for r in _alerts(registry, sim.device)] == [c]
    assert gateway.stats["time_nak"] == 2


def test_revoked_device_rejected_and_reported(gateway: Any, fleet: Any, registry: Any) -> None:
    sim = fleet.sim()
    registry.set_state(sim.device, "revoked", actor="test")
    c = sim.send("ALERT")
    ack = sim.wait_ack(c)
    assert (ack["disposition"], ack["reason"]) == ("rejected", "revoked")
    rows = _alerts(registry, sim.device)
    assert [(r["counter"], r["disposition"]) for r in rows] == [(c, "rejected")]
    ev = _events(registry, sim.device, "REJECTED")
    assert len(ev) == 1 and ev[0]["detail"]["reason"] == "revoked"


def test_lost_device_recorded_flagged_acked(
    gateway_factory: Any, fleet: Any, registry: Any
) -> None:
    out = io.StringIO()
    gateway_factory(sink=JsonlSink(out))
    sim = fleet.sim()
    registry.set_state(sim.device, "lost", actor="test")
    c = sim.send("ALERT")
    assert sim.wait_ack(c)["disposition"] == "received"
    rows = _alerts(registry, sim.device)
    assert rows[0]["lost"] is True
    assert len(_events(registry, sim.device, "LOST_DEVICE")) == 1
    # Forwarding is asynchronous (the outbox is committed with the alert, then delivered).
    recs = wait_for(lambda: _kinds(out, "alert"), what="the forwarded alert")
    alert = [r for r in recs if r["kind"] == "alert"]
    assert len(alert) == 1 and alert[0]["lost"] is True


def _kinds(out: io.StringIO, kind: str) -> list[dict[str, Any]]:
    recs = [json.loads(line) for line in out.getvalue().splitlines()]
    return [r for r in recs if r["kind"] == kind] and recs


def test_unknown_device_and_topic_mismatch_counted_no_ack(
    gateway: Any, fleet: Any, registry: Any
) -> None:
    sim = fleet.sim()
    ghost = codec.encode(
        {
            "type": "ALERT",
            "device": 0x7777777,
            "counter": 1,
            **__import__("auxilio.gateway.simulator", fromlist=["x"]).SIM_LOCATION,
        },
        b"\x01" * 32,
    )
    sim.publish(ghost, topic=codec.topic("auxilio", 0x7777777, "up"))
    c, mine = sim.frame("ALERT")
    sim.publish(mine, topic=codec.topic("auxilio", 0x7777777, "up"))  # header names another device
    _barrier(sim)
    assert gateway.stats["drop_unknown_device"] == 1
    assert gateway.stats["drop_topic_mismatch"] == 1
    assert sim.wait_ack(c, timeout=0.3) is None


def test_heartbeat_not_acked_updates_last_seen(gateway: Any, fleet: Any, registry: Any) -> None:
    sim = fleet.sim()
    c = sim.send("HEARTBEAT")
    wait_for(lambda: registry.get_device(sim.device).high_water == c, what="heartbeat window")
    assert registry.get_device(sim.device).last_seen is not None
    _barrier(sim)
    assert sim.wait_ack(c, timeout=0.2) is None
    assert all(r["type"] != "HEARTBEAT" for r in _alerts(registry, sim.device))


def test_test_frames_recorded_acked_never_forwarded(
    gateway_factory: Any, fleet: Any, registry: Any
) -> None:
    out = io.StringIO()
    gw = gateway_factory(sink=JsonlSink(out))
    sim = fleet.sim()
    c1 = sim.send("TEST")
    c2 = sim.send("ALERT", test=True)
    c3 = sim.send("ALERT")
    for c in (c1, c2, c3):
        assert sim.wait_ack(c)["disposition"] == "received"
    rows = {r["counter"]: r for r in _alerts(registry, sim.device)}
    assert rows[c1]["test"] and rows[c2]["test"] and not rows[c3]["test"]
    wait_for(lambda: _kinds(out, "alert"), what="the forwarded alert")
    wait_for(lambda: gw.forwarder.backlog == 0 and not gw.store.forward_backlog()[0])
    recs = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [(r["kind"], r["counter"]) for r in recs] == [("alert", c3)]
    assert recs[0]["schema"] == "auxilio.forward/1" and recs[0]["key"].endswith(f":{c3}")
    assert gw.stats["test"] == 2


def test_events_raised_for_tamper_power_low_battery(
    gateway: Any, fleet: Any, registry: Any
) -> None:
    sim = fleet.sim("button")
    for t in ("TAMPER", "POWER", "LOW_BATTERY"):
        assert sim.wait_ack(sim.send(t))["disposition"] == "received"
    types = [e["type"] for e in _events(registry, sim.device)]
    assert types == ["TAMPER", "POWER", "LOW_BATTERY"]


def test_one_row_per_counter_under_concurrent_duplicates(
    gateway: Any, fleet: Any, registry: Any
) -> None:
    sim = fleet.sim()
    frames = [sim.frame("ALERT") for _ in range(20)]
    for _ in range(3):
        for _c, f in frames:
            sim.publish(f)
    for c, _f in frames:
        assert sim.wait_ack(c, n=3) is not None
    a = registry.tables.alerts
    with registry.engine.connect() as conn:
        n = conn.execute(
            select(func.count()).select_from(a).where(a.c.device_id == sim.device)
        ).scalar()
    assert n == 20


def test_no_secret_or_coordinates_in_any_log(
    gateway: Any, fleet: Any, registry: Any, mqtt_broker: Any, caplog: Any
) -> None:
    import logging
    import socket

    from auxilio.gateway.control import request_attend

    caplog.set_level(logging.DEBUG)
    sock = gateway._client.socket()
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0  # set on socket open
    sim = fleet.sim()
    c = sim.send("ALERT")
    assert sim.wait_ack(c)
    sim.publish(sim.frame("ALERT", counter=c)[1])  # duplicate
    assert sim.wait_ack(c, n=2)
    c2, f2 = sim.frame("ALERT", timestamp=1, clock_synced=True)  # time_nak
    sim.publish(f2)
    assert sim.wait_ack(c2)
    bad = bytearray(sim.frame("ALERT")[1])
    bad[20] ^= 0xFF
    sim.publish(bytes(bad))
    a = registry.tables.alerts
    with registry.engine.connect() as conn:
        alert_id = conn.execute(select(a.c.id).where(a.c.device_id == sim.device)).scalar()
    assert request_attend(mqtt_broker.url, alert_id, "op").sent
    assert sim.wait_ack(c, n=3)
    other = fleet.sim()
    registry.set_state(other.device, "revoked", actor="test")
    assert sim.wait_ack(c, n=3)
    assert other.wait_ack(other.send("ALERT"))["reason"] == "revoked"
    text = caplog.text
    assert "ack received" in text  # the log does name devices and counters
    for secret in fleet.secrets.values():
        assert secret.hex() not in text and secret.hex().upper() not in text
    for coord in ("194326080", "-991332080", "19.43", "-99.13"):
        assert coord not in text


def test_cancel_marks_the_alert_it_refers_to(gateway: Any, fleet: Any, registry: Any) -> None:
    sim = fleet.sim()
    c = sim.send("ALERT")
    assert sim.wait_ack(c)
    k = sim.send("CANCEL", ref_counter=c, reason="gesture")
    assert sim.wait_ack(k)["acked_type"] == "CANCEL"
    rows = {r["counter"]: r for r in _alerts(registry, sim.device)}
    assert rows[c]["cancelled_at"] is not None
    assert rows[k]["type"] == "CANCEL" and rows[k]["payload"]["ref_counter"] == c


def test_rekeyed_device_restarting_counters_is_a_new_name(
    gateway: Any, fleet: Any, registry: Any
) -> None:
    """A new secret is a new key epoch: its counters may start again, and (device, epoch,
    counter) names each frame, so nothing collides with the old key's rows (SPEC §12.1)."""
    from auxilio.gateway.simulator import SimDevice
    from auxilio.keys import new_device_secret, seal

    sim = fleet.sim()
    c = sim.send("ALERT")
    assert sim.wait_ack(c)
    secret2 = new_device_secret()
    registry.rekey(sim.device, seal(secret2, fleet.key.public_key(), sim.device), actor="test")
    sim.close()
    sim2 = SimDevice(sim.device, secret2, fleet.broker.host, fleet.broker.port, counter=c)
    fleet.sims.append(sim2)
    # Retry like a device until the gateway has re-read the key (state refresh).
    ack = wait_for(lambda: sim2.wait_ack(sim2.send("ALERT", counter=c), timeout=0.5))
    assert ack["disposition"] == "received"
    rows = sorted((r["key_epoch"], r["counter"]) for r in _alerts(registry, sim.device))
    assert rows == [(1, c), (2, c)]
    assert _events(registry, sim.device, "COUNTER_COLLISION") == []
