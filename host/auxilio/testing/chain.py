"""A secured C4 chain for tests: registry, enrolled devices, the generated broker config on a real
mosquitto, the gateway with its own login, and simulated devices with theirs.

This is the chain an attacker meets in production (no anonymous access,
per-device users and ACLs, client ids tied to usernames), so tests of
poison messages, session takeovers, forged attends and replays run against
it rather than against an open broker.

    with SecureChain(tmp_path, devices=[("bracelet", "bracelet-c3")]) as chain:
        gw = chain.start_gateway()
        dev = chain.device(0)           # a SimDevice logged in as itself
        c = dev.send("ALERT"); dev.wait_ack(c)
        chain.operator_url              # the operator console's login
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from auxilio.broker.client import make_client
from auxilio.broker.config import BrokerFiles, write_config
from auxilio.broker.mosquitto import Mosquitto, free_port
from auxilio.broker.url import parse_broker_url, with_credentials
from auxilio.gateway.clock import ClockState
from auxilio.gateway.simulator import SimDevice
from auxilio.private import write_private
from auxilio.registry import open_registry
from auxilio.registry.enrol import enrol_device

# How long start_gateway() waits for the gateway to subscribe, and a Login for its CONNACK.
CONNECT_TIMEOUT_S = 20.0


def ack_latency(dev: SimDevice, n: int = 5) -> float:
    """Median press-to-ACK seconds of n alerts from a simulated device (a same-run baseline)."""
    import statistics
    import time

    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        c = dev.send("ALERT")
        if dev.wait_ack(c, timeout=10) is None:
            raise AssertionError("no ACK for the baseline alert")
        times.append(dev.ack_times[c] - t0)
    return statistics.median(times)


class Login:
    """A paho client logged in as somebody (any client id it likes: an attacker's choice)."""

    def __init__(self, url: str, client_id: str | None = None, clean_session: bool = True) -> None:
        addr = parse_broker_url(url)
        self.connected = threading.Event()
        self.rc: Any = None
        self.c = make_client(addr, client_id or addr.username or "", clean_session=clean_session)

        def on_connect(client: Any, userdata: Any, flags: Any, rc: Any, props: Any = None) -> None:
            self.rc = rc
            self.connected.set()

        self.c.on_connect = on_connect
        self.c.connect(addr.host, addr.port, 30)
        self.c.loop_start()
        if not self.connected.wait(CONNECT_TIMEOUT_S):
            self.close()
            raise AssertionError("no CONNACK")

    def publish(self, topic: str, payload: bytes, wait: bool = True) -> Any:
        info = self.c.publish(topic, payload, qos=1)
        if wait:
            info.wait_for_publish(CONNECT_TIMEOUT_S)
            if not info.is_published():
                raise AssertionError("the broker did not take the message")
        return info

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


class SecureChain:
    """Everything from enrolment to a running gateway, torn down by close()."""

    def __init__(
        self,
        workdir: Path,
        devices: Sequence[tuple[str, str]] = (("bracelet", "bracelet-c3"),),
        prefix: str = "auxilio",
        authority: str = "files",
        key: X25519PrivateKey | None = None,
    ) -> None:
        """``authority``: who holds device logins (broker/authority.py: files or dynsec)."""
        self.dir = Path(workdir)
        self.prefix = prefix
        self.registry_path = self.dir / "registry.db"
        self.registry = open_registry(self.registry_path)
        self.key = key or X25519PrivateKey.generate()
        self.creds: list[dict[str, Any]] = []
        for i, (kind, board) in enumerate(devices):
            out = self.dir / f"device-{i}.json"
            enrol_device(
                self.registry, self.key.public_key(), kind, board, actor="test", secret_out=out
            )
            self.creds.append(json.loads(out.read_text()))
        self.port = free_port()
        self.files: BrokerFiles = write_config(
            self.dir / "broker",
            self.registry,
            port=self.port,
            prefix=prefix,
            run_as="root" if os.geteuid() == 0 else None,
            log_file=self.dir / "mosquitto.log",
            authority=authority,
        )
        assert self.files.admin is not None
        # `--broker-admin` for lifecycle commands that must reach this broker at once.
        self.admin_file: Path = self.files.admin
        self.broker = Mosquitto(
            port=self.port, workdir=self.dir / "broker", config_path=self.files.conf
        ).start()
        self.url = f"mqtt://127.0.0.1:{self.port}"
        self.gateway_url = with_credentials(self.url, self.files.gateway)
        self.operator_url = with_credentials(self.url, self.files.operator)
        self._gateways: list[Any] = []
        self._sims: list[SimDevice] = []

    # ------------------------------------------------------------ parts ---

    def device_id(self, i: int) -> int:
        from auxilio.protocol import codec

        return codec.device_int(self.creds[i]["device"])

    def secret(self, i: int) -> bytes:
        return bytes.fromhex(self.creds[i]["secret"])

    def password(self, i: int) -> str:
        return str(self.creds[i]["password"])

    def device_url(self, i: int) -> str:
        """The broker URL with device i's own login (what a stolen device would give)."""
        from urllib.parse import quote

        return f"mqtt://{quote(self.creds[i]['device'])}:{quote(self.password(i))}@127.0.0.1:{self.port}"

    def board_config(self, i: int = 0, role: str = "bracelet", **extra: Any) -> dict[str, Any]:
        """Device i's config.json for a virtual board running the real firmware (its own login)."""
        from auxilio.provision.config import device_config
        from auxilio.provision.identity import Identity

        rec = self.registry.require_device(self.device_id(i))
        ident = Identity(self.device_id(i), self.secret(i), self.password(i)).with_registry(
            rec.key_epoch, self.registry.counter_floor(rec.id), rec.sealed_secret
        )
        cfg = device_config(ident, role, self.url, prefix=self.prefix)
        cfg.update(extra)
        return cfg

    def device(self, i: int = 0, **kw: Any) -> SimDevice:
        """A simulated device logged in with its own credentials."""
        sim = SimDevice(
            self.device_id(i),
            self.secret(i),
            "127.0.0.1",
            self.port,
            prefix=self.prefix,
            password=self.password(i),
            **kw,
        )
        self._sims.append(sim)
        return sim

    def start_gateway(self, **kw: Any) -> Any:
        """An in-process gateway with the generated gateway login (clock synced unless told)."""
        from auxilio.gateway import Gateway

        kw.setdefault("clock_state", ClockState(True))
        gw = Gateway(self.registry, self.key, self.gateway_url, prefix=self.prefix, **kw)
        gw.start(connect_attempts=50)
        if not gw.connected.wait(CONNECT_TIMEOUT_S):
            gw.stop()
            raise AssertionError("gateway did not subscribe")
        self._gateways.append(gw)
        return gw

    def gateway_cmd(self, *extra: str, credentials: Path | None = None) -> list[str]:
        """The `auxilio gateway` command line for this chain (a real process, e.g. for kill -9)."""
        import sys

        return [
            sys.executable,
            "-m",
            "auxilio.cli",
            "gateway",
            "--broker",
            self.url,
            "--broker-credentials",
            str(credentials or self.files.gateway),
            "--registry",
            str(self.registry_path),
            "--keys",
            str(self.gateway_key_file()),
            "--assume-clock-synced",
            *extra,
        ]

    def gateway_key_file(self) -> Path:
        from cryptography.hazmat.primitives import serialization

        p = self.dir / "gateway.key"
        if not p.exists():
            write_private(
                p,
                self.key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                ),
            )
        return p

    # --------------------------------------------------------- teardown ---

    def stop_gateways(self) -> None:
        for gw in self._gateways:
            gw.stop()
        self._gateways.clear()

    def close(self) -> None:
        for sim in self._sims:
            try:
                sim.close()
            except Exception:  # noqa: BLE001 - tearing down anyway
                pass
        self.stop_gateways()
        self.broker.close()
        self.registry.close()

    def __enter__(self) -> SecureChain:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
