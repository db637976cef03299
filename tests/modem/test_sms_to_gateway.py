"""Issue 12 "data down, SMS working", end to end: the real firmware on an emulated modem, a
real mosquitto, the emulated operator SMSC writing a gammu-smsd inbox, and the real gateway
reading that inbox (SMS ingest), verifying, storing, acking over MQTT and forwarding.

The fwkit C4 peer only observes here (mode "none"): every ACK the device gets is the
gateway's.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from auxilio.gateway import Gateway
from auxilio.gateway.clock import ClockState
from auxilio.gateway.forward import WebhookSink
from auxilio.gateway.sms import GammuInbox
from auxilio.keys import seal
from auxilio.protocol import codec
from auxilio.registry import open_registry
from auxilio.testing.sinks import WebhookReceiver
from auxilio.testing.wait import wait_for
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from sqlalchemy import select

from tests.modem.ltekit import DEVICE_MSISDN

pytestmark = pytest.mark.integration

BUDGET_S = 3  # the rig's SMS budget (ltekit: sms budget_s)


def _alerts(registry: Any, device: int) -> list[dict[str, Any]]:
    a = registry.tables.alerts
    with registry.engine.connect() as conn:
        rows = conn.execute(select(a).where(a.c.device_id == device).order_by(a.c.id))
        return [dict(r) for r in rows.mappings()]


def _outbox(registry: Any) -> int:
    o = registry.tables.forward_outbox
    with registry.engine.connect() as conn:
        return len(conn.execute(select(o.c.id)).all())


def test_data_down_the_alert_reaches_the_gateway_by_sms_once_and_is_acked_over_data(
    lte_rig: Any, tmp_path: Path
) -> None:
    rig = lte_rig("sim7080g", scenario="data-down")
    rig.start(wait_boot=False)
    assert rig.peer is not None
    rig.peer.mode = "none"  # observer only: the gateway answers
    device = codec.device_int(rig.dev)
    key = X25519PrivateKey.generate()
    registry = open_registry(str(tmp_path / "registry.db"))
    hook = WebhookReceiver()
    gw: Gateway | None = None
    try:
        registry.add_device(
            device, "bracelet", rig.board, seal(rig.secret, key.public_key(), device)
        )
        registry.set_msisdn(device, DEVICE_MSISDN, actor="test")
        rig.inbox.mkdir(parents=True, exist_ok=True)
        gw = Gateway(
            registry,
            key,
            rig.mq.url,
            clock_state=ClockState(True),
            sink=WebhookSink(hook.url),
            sms_sources=[GammuInbox(rig.inbox)],
        )
        gw.start(connect_attempts=50)
        assert gw.connected.wait(15), "gateway did not connect"
        wait_for(lambda: rig.status()["modem"]["fault"] == "data_down", 30, "data_down")

        t_press = time.monotonic()
        rig.ctl.hold(2300)
        rows = wait_for(lambda: _alerts(registry, device), 30, "the alert stored from the SMS")
        stored_after = time.monotonic() - t_press
        (row,) = rows  # type: ignore[misc]
        assert row["via"] == "sms"
        counter = row["counter"]
        # Within budget: the budget, the SMSC's delivery and the inbox poll; data is still down.
        assert stored_after < BUDGET_S + rig.timing.sms_deliver_s + 10, stored_after
        assert rig.status()["modem"]["fault"] == "data_down"
        assert not list(rig.inbox.glob("IN*.txt"))  # the inbox file is consumed once committed
        rig.ctl.wait_event(ev="haptic", pattern="sms", timeout=15)  # "sent by SMS" until the ACK
        key_ = f"alert:{rig.dev}:1:{counter}"
        assert hook.wait_keys({key_}, timeout=15)

        # Data returns: the device's own MQTT copy is the same alert, deduped; the gateway's
        # ACK reaches the device, which stops retrying.
        rig.modem.set_scenario("registered")
        mqtt_copy = rig.peer.wait("ALERT", 1, timeout=60)[0]
        assert mqtt_copy["counter"] == counter
        rig.wait_state("acked", counter, timeout=30)
        rig.ctl.wait_event(ev="haptic", pattern="double", timeout=10)
        wait_for(lambda: gw.stats["duplicate"] >= 1, 15, "the MQTT copy deduped")
        assert [(r["counter"], r["via"]) for r in _alerts(registry, device)] == [(counter, "sms")]
        assert gw.stats["sms_stored"] == 1
        # The C4 consumer saw it exactly once, with the path that delivered it first.
        wait_for(lambda: _outbox(registry) == 0, 15, "the forward outbox drained")
        assert hook.keys.count(key_) == 1
        rec = next(r for r in hook.accepted if r["key"] == key_)
        assert rec["via"] == "sms" and rec["counter"] == counter
        assert len(rig.smsc.inbox()) == 1  # one SMS for the alert
    finally:
        if gw is not None:
            gw.stop()
        hook.close()
        registry.close()
