"""Broker test helpers: a registry with enrolled devices, generated config, real mosquitto, paho clients."""

from __future__ import annotations

import json
import os
import queue
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from auxilio.broker.config import BrokerFiles, write_config
from auxilio.registry import Registry, open_registry
from auxilio.registry.enrol import enrol_device
from auxilio.testing.mosquitto import Mosquitto, free_port, mosquitto_binary
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

# Bounded waits: generous because several engineers share 2 cores.
WAIT_S = 15.0


@dataclass
class Fleet:
    registry: Registry
    creds: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> provisioning file
    files: BrokerFiles | None = None
    broker: Mosquitto | None = None
    gateway: dict[str, Any] = field(default_factory=dict)


class Client:
    """A paho client with a message queue and bounded waits."""

    def __init__(
        self,
        port: int,
        username: str | None,
        password: str | None,
        tls_ca: Path | None = None,
        tls_port: int | None = None,
    ) -> None:
        self.messages: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self.connect_rc: queue.Queue[Any] = queue.Queue()
        self.subacks: queue.Queue[list[Any]] = queue.Queue()
        self.c = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=username or f"anon-{time.monotonic_ns()}",
            protocol=mqtt.MQTTv311,
        )
        if username is not None:
            self.c.username_pw_set(username, password)
        if tls_ca is not None:
            self.c.tls_set(ca_certs=str(tls_ca))
        self.c.on_connect = lambda c, u, f, rc, p: self.connect_rc.put(rc)
        self.c.on_message = lambda c, u, m: self.messages.put((m.topic, m.payload))
        self.c.on_subscribe = lambda c, u, mid, rcs, p: self.subacks.put(list(rcs))
        self.c.connect("127.0.0.1", tls_port or port, keepalive=30)
        self.c.loop_start()
        self.rc = self.connect_rc.get(timeout=WAIT_S)
        if self.rc.is_failure:
            self.close()  # a refused client must not keep a retrying loop thread

    @property
    def ok(self) -> bool:
        return not self.rc.is_failure

    def subscribe(self, topic: str) -> list[Any]:
        self.c.subscribe(topic, qos=1)
        return self.subacks.get(timeout=WAIT_S)

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        info = self.c.publish(topic, payload, qos=1, retain=retain)
        info.wait_for_publish(WAIT_S)

    def wait_for(self, payload: bytes) -> list[tuple[str, bytes]]:
        """Everything received up to and including ``payload`` (fails after WAIT_S)."""
        from auxilio.testing.livebroker import received_until

        return received_until(self.messages, payload, WAIT_S)

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def make_fleet(tmp_path: Path, names: list[tuple[str, str]], **config: Any) -> Fleet:
    reg = open_registry(tmp_path / "reg.db")
    pub = X25519PrivateKey.generate().public_key()
    fleet = Fleet(reg)
    for name, kind in names:
        out = tmp_path / f"{name}.json"
        board = "bracelet-c3" if kind == "bracelet" else "button-s3"
        enrol_device(reg, pub, kind, board, actor="test", secret_out=out)
        fleet.creds[name] = json.loads(out.read_text())
    return fleet


def start_broker(fleet: Fleet, tmp_path: Path, kind: str = "mosquitto", **config: Any) -> Fleet:
    port = free_port()
    out = tmp_path / "broker"
    fleet.files = write_config(
        out,
        fleet.registry,
        port=port,
        run_as="root" if os.geteuid() == 0 else None,
        log_file=tmp_path / "mosquitto.log",
        **config,
    )
    fleet.gateway = json.loads(fleet.files.gateway.read_text())
    if kind == "mosquitto":
        fleet.broker = Mosquitto(port=port, workdir=out, config_path=fleet.files.conf).start()
    else:
        from auxilio.broker.embedded import EmbeddedBroker

        fleet.broker = _Embedded(EmbeddedBroker(port=port, config_dir=out).start())
    return fleet


class _Embedded:
    """The embedded broker behind the same .port/.close() as the mosquitto runner."""

    def __init__(self, broker: Any) -> None:
        self.b, self.port = broker, broker.port

    def close(self) -> None:
        self.b.stop()


@pytest.fixture(params=["mosquitto", "embedded"])
def fleet(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Fleet]:
    """Devices A (bracelet), B (button), C (revoked) behind a broker with the generated config.

    The same ACL tests run against real mosquitto and the embedded amqtt fallback.
    """
    if request.param == "mosquitto" and mosquitto_binary() is None:
        pytest.skip("mosquitto is not installed")
    if request.param == "embedded":
        pytest.importorskip("amqtt")
    f = make_fleet(tmp_path, [("A", "bracelet"), ("B", "button"), ("C", "bracelet")])
    f.registry.set_state(f.creds["C"]["device"], "revoked", "test")
    start_broker(f, tmp_path, request.param)
    try:
        yield f
    finally:
        if f.broker is not None:
            f.broker.close()
        f.registry.close()
