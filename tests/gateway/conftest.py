"""Fixtures for gateway tests: a registry with sealed device keys, an in-process gateway, simulated devices."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from auxilio.gateway import Gateway
from auxilio.gateway.clock import ClockState
from auxilio.gateway.simulator import SimDevice
from auxilio.keys import new_device_secret, seal
from auxilio.registry import open_registry
from auxilio.testing.postgres import postgres_cluster, postgres_url  # noqa: F401 - fixtures
from auxilio.testing.wait import WAIT_S, wait_for  # noqa: F401 - bounded polling, for the tests here
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey


@pytest.fixture
def gw_key() -> X25519PrivateKey:
    return X25519PrivateKey.generate()


@pytest.fixture
def gw_key_file(tmp_path: Path, gw_key: X25519PrivateKey) -> Path:
    from cryptography.hazmat.primitives import serialization

    p = tmp_path / "gateway.key"
    p.write_bytes(
        gw_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    os.chmod(p, 0o600)
    return p


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def registry_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return str(tmp_path / "registry.db")
    return request.getfixturevalue("postgres_url")


@pytest.fixture
def registry(registry_url: str) -> Iterator[Any]:
    reg = open_registry(registry_url)
    yield reg
    reg.close()


class Fleet:
    """Adds devices to the registry (sealed secrets) and opens simulated devices for them."""

    def __init__(self, registry: Any, key: X25519PrivateKey, broker: Any) -> None:
        self.registry = registry
        self.key = key
        self.broker = broker
        self.secrets: dict[int, bytes] = {}
        self.sims: list[SimDevice] = []
        self._next = 0x1234500

    def add(self, kind: str = "bracelet", device: int | None = None) -> tuple[int, bytes]:
        if device is None:
            device = self._next
            self._next += 1
        secret = new_device_secret()
        self.registry.add_device(
            device, kind, "devkit-esp32", seal(secret, self.key.public_key(), device)
        )
        self.secrets[device] = secret
        return device, secret

    def sim(self, kind: str = "bracelet", secret: bytes | None = None, **kw: Any) -> SimDevice:
        device, real = self.add(kind)
        s = SimDevice(device, secret or real, self.broker.host, self.broker.port, **kw)
        self.sims.append(s)
        return s

    def close(self) -> None:
        for s in self.sims:
            s.close()


@pytest.fixture
def fleet(registry: Any, gw_key: X25519PrivateKey, mqtt_broker: Any) -> Iterator[Fleet]:
    f = Fleet(registry, gw_key, mqtt_broker)
    yield f
    f.close()


@pytest.fixture
def gateway_factory(
    registry: Any, gw_key: X25519PrivateKey, mqtt_broker: Any
) -> Iterator[Callable[..., Gateway]]:
    started: list[Gateway] = []

    def make(**kw: Any) -> Gateway:
        # A gateway whose clock is synchronised (production), unless a test says otherwise.
        kw.setdefault("clock_state", ClockState(True))
        gw = Gateway(registry, gw_key, mqtt_broker.url, **kw)
        gw.start(connect_attempts=50)
        assert gw.connected.wait(WAIT_S), "gateway did not connect"
        started.append(gw)
        return gw

    yield make
    for gw in started:
        gw.stop()


@pytest.fixture
def gateway(gateway_factory: Callable[..., Gateway]) -> Gateway:
    return gateway_factory()


@pytest.fixture
def secure_chain(tmp_path: Path) -> Iterator[Any]:
    """The generated broker config on a real mosquitto, two enrolled devices (bracelet, button)."""
    from auxilio.testing.chain import SecureChain
    from auxilio.testing.mosquitto import mosquitto_binary

    if mosquitto_binary() is None:
        pytest.skip("mosquitto is not installed")
    chain = SecureChain(tmp_path, devices=[("bracelet", "bracelet-c3"), ("button", "button-s3")])
    try:
        yield chain
    finally:
        chain.close()
