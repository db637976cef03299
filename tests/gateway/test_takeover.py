"""Issue 8 §2: no login can take another's session (the generated config on a real mosquitto).

Repro: `mosquitto_sub -u <any device> -P <its password> -i auxilio-gateway -t x` kicked the
gateway, and its clean connect wiped the gateway's queued uplinks. The same worked against
another device's client id.
"""

from __future__ import annotations

from typing import Any

import pytest
from auxilio.broker.url import parse_broker_url
from auxilio.testing.chain import Login

from .conftest import wait_for

pytestmark = pytest.mark.integration


def Intruder(port: int, username: str, password: str, client_id: str) -> Login:  # noqa: N802
    """A clean-session login that claims someone else's client id."""
    from urllib.parse import quote

    login = Login(f"mqtt://{quote(username)}:{quote(password)}@127.0.0.1:{port}", client_id)
    login.c.subscribe("x", qos=1)
    return login


def test_device_and_operator_logins_cannot_take_the_gateways_session(secure_chain: Any) -> None:
    chain = secure_chain
    gw = chain.start_gateway()
    gw_id = gw.client_id
    dev = chain.device(0)
    assert dev.wait_ack(dev.send("ALERT"), timeout=10)
    drops = []
    gw._client.on_disconnect = lambda *a: drops.append(a)  # noqa: SLF001 - observe the session
    op = parse_broker_url(chain.operator_url)
    intruders = [
        Intruder(chain.port, chain.creds[1]["device"], chain.password(1), gw_id),
        Intruder(chain.port, op.username or "", op.password or "", gw_id),
        Intruder(chain.port, op.username or "", op.password or "", "auxilio-gateway"),
    ]
    try:
        # The live gateway keeps its connection and keeps acking.
        assert dev.wait_ack(dev.send("ALERT"), timeout=10)
        assert drops == [] and gw.connected.is_set()
    finally:
        for i in intruders:
            i.close()
    # Offline, the gateway's persistent session queues uplinks; intruders claiming its client
    # id with a clean session must not wipe them.
    chain.stop_gateways()
    queued = [dev.send("ALERT") for _ in range(3)]
    intruders = [
        Intruder(chain.port, chain.creds[1]["device"], chain.password(1), gw_id),
        Intruder(chain.port, op.username or "", op.password or "", gw_id),
    ]
    for i in intruders:
        i.close()
    gw2 = chain.start_gateway()
    for c in queued:  # delivered from the session: the device never re-sent them
        ack = dev.wait_ack(c, timeout=15)
        assert ack is not None and ack["disposition"] == "received"
    assert gw2.stats["stored"] >= 3


def test_a_device_login_cannot_take_another_devices_session(secure_chain: Any) -> None:
    chain = secure_chain
    chain.start_gateway()
    a = chain.device(0)
    assert a.wait_ack(a.send("ALERT"), timeout=10)
    kicked = []
    a.client.on_disconnect = lambda *x: kicked.append(x)
    intruder = Intruder(chain.port, chain.creds[1]["device"], chain.password(1), a.label)
    try:
        c = a.send("ALERT")
        assert a.wait_ack(c, timeout=10) is not None
        assert kicked == []
    finally:
        intruder.close()
    wait_for(lambda: a.client.is_connected(), what="device A still connected")


def test_broker_caps_message_size(secure_chain: Any) -> None:
    """A login cannot push megabytes at the gateway: the broker refuses packets over a few KB."""
    chain = secure_chain
    gw = chain.start_gateway()
    dev = chain.device(0)
    b = chain.creds[1]["device"]
    big = Intruder(chain.port, b, chain.password(1), b)
    try:
        info = big.c.publish(f"auxilio/v1/{b}/up", b"\x00" * 100_000, qos=1)
        # mosquitto closes the connection of a client that sends an oversized packet.
        wait_for(lambda: not big.c.is_connected(), what="oversized publisher disconnected")
        assert not info.is_published()
    finally:
        big.close()
    assert dev.wait_ack(dev.send("ALERT"), timeout=15) is not None
    assert gw.stats["drop_trailing_bytes"] == 0 and gw.stats["drop_length_mismatch"] == 0
