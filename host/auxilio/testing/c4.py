"""A real C4 for end-to-end tests: a registry with sealed device keys and the in-process gateway.

    def test_alert(c4, mqtt_broker):
        c = c4()                                   # SQLite registry in tmp_path, new gateway key
        secret = c.add_device("0938-0001")         # sealed into the registry
        ...run the firmware with that secret against mqtt_broker.url...
        c.wait(lambda: c.alerts("0938-0001"))       # read the rows back

Everything is read back from the registry the gateway wrote (alerts, events,
devices), never from log lines.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from sqlalchemy import select

from auxilio.protocol import codec
from auxilio.testing.wait import wait_for

# Bounded waits for conditions on a shared, small machine.
WAIT_S = 30.0
GATEWAY_CONNECT_ATTEMPTS = 50


class C4:
    """A registry, the gateway key and a running Gateway on one broker; close() stops both."""

    def __init__(
        self,
        broker_url: str,
        registry_url: str | os.PathLike[str],
        key: X25519PrivateKey | None = None,
        **gateway_kw: Any,
    ) -> None:
        from auxilio.gateway import Gateway
        from auxilio.gateway.clock import ClockState
        from auxilio.registry import open_registry

        self.key = key or X25519PrivateKey.generate()
        self.registry = open_registry(registry_url)
        self.gateway: Gateway | None = None
        # A synchronised gateway clock (production), unless the test says otherwise.
        gateway_kw.setdefault("clock_state", ClockState(True))
        try:
            self.gateway = Gateway(self.registry, self.key, broker_url, **gateway_kw)
            self.gateway.start(connect_attempts=GATEWAY_CONNECT_ATTEMPTS)
            if not self.gateway.connected.wait(WAIT_S):
                raise TimeoutError("gateway did not connect to the broker")
        except BaseException:
            self.close()
            raise

    def add_device(self, device: str, kind: str = "bracelet", board: str = "bracelet-c3") -> bytes:
        """Enrol a device (sealed secret in the registry); returns its plaintext secret."""
        from auxilio.keys import new_device_secret, seal

        did = codec.device_int(device)
        secret = new_device_secret()
        self.registry.add_device(did, kind, board, seal(secret, self.key.public_key(), did))
        return secret

    def alerts(self, device: str, ftype: str | None = None) -> list[dict[str, Any]]:
        """The alerts rows of a device (every stored frame), oldest first."""
        a = self.registry.tables.alerts
        q = select(a).where(a.c.device_id == codec.device_int(device)).order_by(a.c.id)
        if ftype is not None:
            q = q.where(a.c.type == ftype)
        with self.registry.engine.connect() as conn:
            return [dict(r) for r in conn.execute(q).mappings()]

    def events(self, device: str, etype: str) -> list[dict[str, Any]]:
        """C4 events of one type for a device (COUNTER_COLLISION, COUNTER_JUMP, ...)."""
        e = self.registry.tables.events
        q = (
            select(e)
            .where(e.c.device_id == codec.device_int(device), e.c.type == etype)
            .order_by(e.c.id)
        )
        with self.registry.engine.connect() as conn:
            return [dict(r) for r in conn.execute(q).mappings()]

    def high_water(self, device: str) -> int:
        rec = self.registry.require_device(device)
        return rec.high_water or 0

    @staticmethod
    def wait(cond: Callable[[], Any], timeout: float = WAIT_S, what: str = "condition") -> Any:
        """Poll cond until it returns something truthy (bounded); returns that value."""
        return wait_for(cond, timeout, what)

    def close(self) -> None:
        if self.gateway is not None:
            self.gateway.stop()
            self.gateway = None
        self.registry.close()


def c4_factory(broker_url: str, tmp_path: Path) -> tuple[Callable[..., C4], list[C4]]:
    """c4(registry=None, key=None, **gateway_kw) -> a started C4; the list is for cleanup."""
    started: list[C4] = []

    def make(
        registry: str | os.PathLike[str] | None = None,
        key: X25519PrivateKey | None = None,
        **gateway_kw: Any,
    ) -> C4:
        url = registry if registry is not None else tmp_path / f"c4-{len(started)}.db"
        c = C4(broker_url, url, key, **gateway_kw)
        started.append(c)
        return c

    return make, started
