"""The generated mosquitto config against a real mosquitto: users, passwords and per-device ACLs."""

from __future__ import annotations

import pytest

from tests.broker.conftest import Client, Fleet

pytestmark = pytest.mark.integration


def _up(dev: str) -> str:
    return f"auxilio/v1/{dev}/up"


def _down(dev: str) -> str:
    return f"auxilio/v1/{dev}/down"


def _connect(fleet: Fleet, name: str) -> Client:
    c = fleet.creds[name]
    client = Client(fleet.broker.port, c["username"], c["password"])
    assert client.ok, client.rc
    return client


def _gateway(fleet: Fleet) -> Client:
    gw = Client(fleet.broker.port, fleet.gateway["username"], fleet.gateway["password"])
    assert gw.ok, gw.rc
    return gw


def test_device_cannot_publish_to_another_devices_uplink(fleet: Fleet) -> None:
    a_id, b_id = fleet.creds["A"]["device"], fleet.creds["B"]["device"]
    gw = _gateway(fleet)
    a = _connect(fleet, "A")
    try:
        gw.subscribe("auxilio/v1/+/up")
        gw.subscribe("auxilio/v1/+/status")
        a.publish(_up(b_id), b"forged-as-B")
        a.publish(f"auxilio/v1/{b_id}/status", b"offline")  # nor fake B's status
        a.publish(_up(a_id), b"marker-A")
        seen = gw.wait_for(b"marker-A")
        assert (_up(a_id), b"marker-A") in seen
        assert all(t.split("/")[2] == a_id for t, _ in seen), seen
        a.publish(f"auxilio/v1/{a_id}/status", b"online", retain=True)
        assert gw.wait_for(b"online")[-1] == (f"auxilio/v1/{a_id}/status", b"online")
    finally:
        a.close()
        gw.close()


def test_device_cannot_read_another_devices_downlink(fleet: Fleet) -> None:
    a_id, b_id = fleet.creds["A"]["device"], fleet.creds["B"]["device"]
    gw = _gateway(fleet)
    a = _connect(fleet, "A")
    b = _connect(fleet, "B")
    try:
        a.subscribe(_down(a_id))
        a.subscribe(_down(b_id))  # refused or filtered: either way nothing arrives
        a.subscribe("auxilio/v1/+/down")  # a wildcard does not widen what A may read
        b.subscribe(_down(b_id))
        gw.publish(_down(b_id), b"ack-for-B")
        gw.publish(_down(a_id), b"ack-for-A")
        seen_a = a.wait_for(b"ack-for-A")
        assert all(p != b"ack-for-B" for _, p in seen_a), seen_a
        assert b.wait_for(b"ack-for-B")[-1] == (_down(b_id), b"ack-for-B")
        # A device cannot write downlinks (it could forge its own acks' transport).
        a.publish(_down(b_id), b"forged-down")
        gw.publish(_down(b_id), b"marker-B")
        assert all(p != b"forged-down" for _, p in b.wait_for(b"marker-B"))
    finally:
        for c in (a, b, gw):
            c.close()


def test_device_cannot_read_uplinks(fleet: Fleet) -> None:
    a_id, b_id = fleet.creds["A"]["device"], fleet.creds["B"]["device"]
    a = _connect(fleet, "A")
    b = _connect(fleet, "B")
    try:
        a.subscribe("auxilio/v1/+/up")
        a.subscribe(_down(a_id))
        b.publish(_up(b_id), b"B-alert")
        gw = _gateway(fleet)
        gw.publish(_down(a_id), b"marker")
        gw.close()
        assert all(p != b"B-alert" for _, p in a.wait_for(b"marker"))
    finally:
        a.close()
        b.close()


def test_bad_credentials_revoked_and_anonymous_are_refused(fleet: Fleet) -> None:
    a = fleet.creds["A"]
    assert not Client(fleet.broker.port, a["username"], a["password"] + "x").ok
    assert not Client(fleet.broker.port, fleet.creds["B"]["username"], a["password"]).ok
    c = fleet.creds["C"]  # revoked before the config was written: no broker user at all
    assert not Client(fleet.broker.port, c["username"], c["password"]).ok
    assert not Client(fleet.broker.port, None, None).ok
