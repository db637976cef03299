"""Issue 8 "It must show": the attacker set against a running chain - 0 accepted - while the
gateway still acks a genuine alert within 3x its normal latency.

Attackers hold what a real one could steal: the operator login, another device's login and
secret (a stolen bracelet), the gateway's broker password. They try poison messages,
session takeovers, forged ACKs, replays of captured frames and a leaked-key counter jump.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from auxilio.protocol import codec
from auxilio.testing.chain import Login, ack_latency
from sqlalchemy import func, select

from .conftest import wait_for

pytestmark = pytest.mark.integration


def _rows(chain: Any, device: int) -> int:
    a = chain.registry.tables.alerts
    with chain.registry.engine.connect() as conn:
        return conn.execute(select(func.count()).where(a.c.device_id == device)).scalar_one()


def _events(chain: Any, etype: str) -> list[dict[str, Any]]:
    e = chain.registry.tables.events
    with chain.registry.engine.connect() as conn:
        return [dict(r) for r in conn.execute(select(e).where(e.c.type == etype)).mappings()]


def test_attacker_set_against_a_running_chain(secure_chain: Any) -> None:
    chain = secure_chain
    gw = chain.start_gateway()
    victim = chain.device(0)  # the bracelet whose wearer must be protected
    # A stolen street button: its login and its secret are the attacker's.
    stolen_id, stolen_keys = chain.device_id(1), codec.Keys(chain.secret(1))
    stolen_up = codec.topic("auxilio", stolen_id, "up")
    normal = ack_latency(victim)
    captured = [victim.frame("ALERT") for _ in range(3)]
    for c, f in captured:
        victim.publish(f)
        assert victim.wait_ack(c, timeout=10)
    rows_before = _rows(chain, victim.device)
    operator = Login(chain.operator_url)
    thief = Login(chain.device_url(1), client_id=victim.label)  # claims the victim's id
    try:
        # Poison on the control topic, and attend requests for things that are not alerts.
        for payload in (b'{"alert": Infinity}', b'{"alert": 1e999}', b"[" * 400, b"\xff"):
            operator.publish("auxilio/c4/attend", payload)
        # Forged ACKs for the victim's next counter: from the stolen device (the ACL drops
        # it), and injected on the broker itself (DESIGN §6: an attacker on the broker can
        # inject frames; here through the gateway's own connection): wrong key, refused.
        nxt = victim.counter
        forged = codec.encode(
            {
                "type": "ACK",
                "device": victim.label,
                "counter": nxt,
                "timestamp": int(time.time()),
                "acked_type": "ALERT",
                "disposition": "attending",
                "reason": "none",
                "high_water": nxt,
            },
            stolen_keys,
        )
        down = codec.topic("auxilio", victim.device, "down")
        thief.publish(down, forged)
        gw._client.publish(down, forged, qos=1)  # noqa: SLF001 - an injection on the broker
        # Replays of the victim's captured frames, and of a frame into another device's topic.
        for _c, f in captured:
            thief.publish(stolen_up, f)  # on the stolen device's own topic: topic mismatch
            thief.publish(victim.up, f)  # on the victim's topic: the ACL drops it
        # A leaked key: the stolen device's counters pushed 2^20 ahead, signed for real.
        hw = chain.registry.get_device(stolen_id).high_water or 0
        jump = hw + (1 << 20)
        heartbeat = {
            "type": "HEARTBEAT",
            "device": stolen_id,
            "counter": jump,
            "battery": 90,
            "rssi": -60,
            "bearer": "wifi",
            "outbox": 0,
            "fw": "0.1.0",
            "status": 0,
            "interval_s": 60,
        }
        thief.publish(stolen_up, codec.encode(heartbeat, stolen_keys))
        # Meanwhile the victim presses: acked, in normal time, and not by a forgery.
        t0 = time.perf_counter()
        c = victim.send("ALERT")
        ack = victim.wait_ack(c, timeout=10)
        took = victim.ack_times[c] - t0
    finally:
        for login in (operator, thief):
            login.close()
    assert ack is not None and ack["disposition"] == "received"
    assert took < max(3 * normal, 0.05), (took, normal)
    # 0 accepted: the forged ACK never verified at the victim (her only answer is the
    # genuine one), no new row from a replay, no session taken.
    assert nxt == c and victim.bad_downlinks >= 1
    assert [a["disposition"] for a in victim.acks[c]] == ["received"]
    assert _rows(chain, victim.device) == rows_before + 1  # only the genuine press
    wait_for(lambda: gw.stats["drop_topic_mismatch"] >= len(captured), what="replays dropped")
    assert gw.stats["stored"] == rows_before + 1  # nothing else was stored
    assert gw.stats["internal_error"] == 0 and gw.connected.is_set()
    # The leaked-key jump was accepted (it is genuinely signed) but is raised, not silent.
    wait_for(lambda: _events(chain, "COUNTER_JUMP"), what="COUNTER_JUMP event")
    ev = _events(chain, "COUNTER_JUMP")[0]
    assert ev["device_id"] == stolen_id and ev["detail"]["to"] == jump
