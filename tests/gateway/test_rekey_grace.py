"""Issue 11 §5 "Rotate-key": after a rekey, frames under the new key are accepted at once, frames
under the old key until the grace period ends and never after (SPEC §12.1, §11 step 7).

The gateway's clock is the test's (Gateway(clock=...)): both sides of the boundary are reached by
moving it, not by waiting. Every answer is read back from the registry (alert rows under which key
epoch, the old key's replay state, dead letters), not from log lines.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from auxilio.gateway.simulator import SimDevice
from auxilio.keys import new_device_secret, seal
from sqlalchemy import select

from .conftest import WAIT_S, wait_for

pytestmark = pytest.mark.integration

GRACE_S = 60.0


class TestClock:
    """Wall time plus an offset the test moves (the gateway's only clock)."""

    __test__ = False

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


def _rows(registry: Any, device: int) -> list[tuple[int, int, str]]:
    a = registry.tables.alerts
    with registry.engine.connect() as conn:
        q = select(a.c.key_epoch, a.c.counter, a.c.disposition).where(
            a.c.device_id == device, a.c.type == "ALERT"
        )
        return [tuple(r) for r in conn.execute(q.order_by(a.c.id))]


def _dead(registry: Any, reason: str) -> int:
    d = registry.tables.dead_letters
    with registry.engine.connect() as conn:
        return len(conn.execute(select(d.c.id).where(d.c.reason == reason)).all())


class Rotation:
    """One device with its old key and, after rekey(), its new one: two simulated devices on
    their own client ids (the same device before and after its new config)."""

    def __init__(self, fleet: Any, gw_key: Any, registry: Any) -> None:
        self.registry = registry
        self.device, self.old_secret = fleet.add()
        self.key = gw_key
        self.broker = fleet.broker
        self.old = self._sim(self.old_secret, "old-key")
        self.new: SimDevice | None = None
        self._sims = [self.old]

    def _sim(self, secret: bytes, name: str, counter: int = 1) -> SimDevice:
        return SimDevice(
            self.device, secret, self.broker.host, self.broker.port, username=name, counter=counter
        )

    def rekey(self, grace_s: float) -> None:
        new_secret = new_device_secret()
        self.registry.rekey(
            self.device,
            seal(new_secret, self.key.public_key(), self.device),
            "test",
            grace_s=grace_s,
        )
        self.new = self._sim(new_secret, "new-key")
        self._sims.append(self.new)

    def close(self) -> None:
        for s in self._sims:
            s.close()


@pytest.fixture
def rotation(fleet: Any, gw_key: Any, registry: Any) -> Any:
    r = Rotation(fleet, gw_key, registry)
    yield r
    r.close()


def _acked(sim: SimDevice) -> dict[str, Any]:
    c = sim.send("ALERT")
    ack = sim.wait_ack(c, timeout=WAIT_S)
    assert ack is not None, f"no ACK for counter {c}"
    return ack


@pytest.mark.parametrize(
    "registry_url", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True
)
def test_old_key_is_accepted_until_the_grace_ends_then_rejected(
    gateway_factory: Any, rotation: Any, registry: Any
) -> None:
    clock = TestClock()
    gateway_factory(clock=clock)
    assert _acked(rotation.old)["disposition"] == "received"  # epoch 1 in service
    rotation.rekey(GRACE_S)
    until = registry.get_device(rotation.device).previous_key.valid_until.timestamp()
    # New key: accepted at once, as epoch 2 from counter 1.
    assert _acked(rotation.new)["disposition"] == "received"
    # Old key, just inside the grace: accepted, answered with the old key, stored under epoch 1.
    clock.offset = until - time.time() - 1.0
    assert _acked(rotation.old)["disposition"] == "received"
    assert _rows(registry, rotation.device) == [
        (1, 1, "received"),
        (2, 1, "received"),
        (1, 2, "received"),
    ]
    # The old key's replay state is its own and durable: the same counter again is a replay.
    assert registry.get_device(rotation.device).previous_key.high_water == 2
    replayed = rotation.old.frame("ALERT", counter=1)[1]
    rotation.old.publish(replayed)
    ack = rotation.old.wait_ack(1, timeout=WAIT_S, n=2)
    assert ack is not None and ack["disposition"] == "received"  # the stored answer (duplicate)
    # Just past the grace: the old key is no longer the device's (SPEC §11 step 7, bad_tag):
    # nothing stored, nothing answered, a dead letter kept.
    clock.offset = until - time.time() + 1.0
    bad_before = rotation.old.bad_downlinks
    late = rotation.old.send("ALERT")
    wait_for(lambda: _dead(registry, "bad_tag") == 1, WAIT_S, "the old-key frame's dead letter")
    # A new-key frame after it is acked; by then an answer to the old one would have come.
    assert _acked(rotation.new)["disposition"] == "received"
    wait_for(lambda: rotation.old.bad_downlinks > bad_before, WAIT_S, "the new-key ACK")
    assert rotation.old.acks.get(late) is None
    assert [r for r in _rows(registry, rotation.device) if r[0] == 1] == [
        (1, 1, "received"),
        (1, 2, "received"),
    ]
    # Past the grace the sealed old secret is not kept either (the gateway's hourly purge).
    assert registry.drop_expired_previous_keys(clock()) == 1
    row = registry.get_device(rotation.device)
    assert row.previous_key is None and row.key_epoch == 2


@pytest.mark.parametrize("registry_url", ["sqlite"], indirect=True)
def test_no_grace_rejects_the_old_key_at_once(
    gateway_factory: Any, rotation: Any, registry: Any
) -> None:
    gateway_factory()
    assert _acked(rotation.old)["disposition"] == "received"
    rotation.rekey(0)
    assert registry.get_device(rotation.device).previous_key is None
    rotation.old.send("ALERT")
    wait_for(lambda: _dead(registry, "bad_tag") == 1, WAIT_S, "the old-key frame's dead letter")
    assert _acked(rotation.new)["disposition"] == "received"
    assert [r[0] for r in _rows(registry, rotation.device)] == [1, 2]


@pytest.mark.parametrize("registry_url", ["sqlite"], indirect=True)
def test_revoke_during_the_grace_ends_it(
    gateway_factory: Any, rotation: Any, registry: Any
) -> None:
    gateway_factory()
    rotation.rekey(GRACE_S)
    assert _acked(rotation.old)["disposition"] == "received"  # the gateway holds the old key
    registry.set_state(rotation.device, "revoked", "test")
    assert registry.get_device(rotation.device).previous_key is None
    # The gateway drops the old key with the next turn's state read: bad_tag, not acked.
    rotation.old.send("ALERT")
    wait_for(lambda: _dead(registry, "bad_tag") == 1, WAIT_S, "the old-key frame's dead letter")
    ack = _acked(rotation.new)
    assert (ack["disposition"], ack["reason"]) == ("rejected", "revoked")


@pytest.mark.parametrize("registry_url", ["sqlite"], indirect=True)
def test_a_lost_or_revoked_device_gets_no_grace(registry: Any, fleet: Any, gw_key: Any) -> None:
    for state in ("lost", "revoked"):
        device, _secret = fleet.add()
        registry.set_state(device, state, "test")
        registry.rekey(device, seal(new_device_secret(), gw_key.public_key(), device), "t", 300)
        rec = registry.get_device(device)
        assert rec.previous_key is None and rec.key_epoch == 2
    audit = registry.audit_log(target=None, limit=5)
    assert not any("grace" in (a.get("detail") or "") for a in audit)
