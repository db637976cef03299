"""A real mosquitto whose device logins follow the registry live (issue 11 §2), for tests and benches.

    with LiveBroker(tmp_path, authority="dynsec") as lb:
        dev = lb.add_device()                     # `auxilio devices add --broker-admin …`
        s = lb.session(dev["username"], dev["password"])
        assert not s.refused
        lb.cli("devices", "revoke", dev["device"])
        wait_for(lambda: s.dropped_at, timeout=1.0)

``Session`` is one MQTT login that remembers its CONNACK, when the broker dropped it,
which subscriptions were refused and what it received, so tests read the broker's
behaviour back rather than trusting a command's output.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import queue
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

from auxilio import keys
from auxilio.broker.client import nodelay
from auxilio.testing.chain import SecureChain

# Bounds for CONNACK/SUBACK/PUBACK waits: generous, the machine is shared.
WAIT_S = 15.0


def received_until(
    messages: queue.Queue[tuple[str, bytes]], marker: bytes, timeout: float = WAIT_S
) -> list[tuple[str, bytes]]:
    """Every (topic, payload) taken from ``messages`` up to and including the payload
    ``marker``: publish a marker after what is under test, and what did not arrive by
    then never will (the broker keeps one session's order)."""
    seen: list[tuple[str, bytes]] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            m = messages.get(timeout=0.1)
        except queue.Empty:
            continue
        seen.append(m)
        if m[1] == marker:
            return seen
    raise AssertionError(f"{marker!r} never arrived; got {seen}")


class Session:
    """One MQTT 3.1.1 login (client id = username, as use_username_as_clientid forces)."""

    def __init__(self, port: int, username: str, password: str | None) -> None:
        self.messages: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self._connack: queue.Queue[Any] = queue.Queue()
        self._subacks: queue.Queue[list[Any]] = queue.Queue()
        self.dropped_at: float | None = None  # perf_counter() of an unasked disconnect
        self._closing = False
        c = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=username, protocol=mqtt.MQTTv311
        )
        c.username_pw_set(username, password)
        c.on_socket_open = nodelay
        c.on_connect = lambda cl, u, f, rc, p: self._connack.put(rc)
        c.on_subscribe = lambda cl, u, mid, rcs, p: self._subacks.put(list(rcs))
        c.on_message = lambda cl, u, m: self.messages.put((m.topic, m.payload))
        c.on_disconnect = self._on_disconnect
        self.c = c
        c.connect("127.0.0.1", port, keepalive=30)
        c.loop_start()
        self.rc = self._connack.get(timeout=WAIT_S)
        if self.refused:
            self.close()  # never leave a refused login retrying in the background

    def _on_disconnect(self, *_a: Any) -> None:
        if not self._closing and self.dropped_at is None:
            self.dropped_at = time.perf_counter()
            self.c.loop_stop()  # no reconnect: the test asks again when it wants to

    @property
    def refused(self) -> bool:
        return bool(self.rc.is_failure)

    def subscribe(self, topic: str) -> bool:
        """True when the broker granted the subscription (SUBACK not 0x80)."""
        self.c.subscribe(topic, qos=1)
        return not self._subacks.get(timeout=WAIT_S)[0].is_failure

    def publish(self, topic: str, payload: bytes) -> None:
        """QoS 1 and wait for the PUBACK (mosquitto acks denied publishes too, MQTT 3.1.1)."""
        info = self.c.publish(topic, payload, qos=1)
        info.wait_for_publish(WAIT_S)

    def received_until(self, marker: bytes) -> list[tuple[str, bytes]]:
        """Everything received up to and including the message ``marker``."""
        return received_until(self.messages, marker)

    def close(self) -> None:
        self._closing = True
        self.c.disconnect()
        self.c.loop_stop()


class LiveBroker(SecureChain):
    """The secured chain (registry, generated broker config with ``authority``, a real
    mosquitto, the gateway on demand) with the CLI run against it and MQTT sessions."""

    def __init__(
        self,
        workdir: Path,
        authority: str = "dynsec",
        devices: Sequence[tuple[str, str]] = (("bracelet", "bracelet-c3"),),
        prefix: str = "auxilio",
    ) -> None:
        # Key files on disk: `auxilio devices add/rekey` seal to the public one.
        self.keys_dir = Path(workdir) / "keys"
        keys.init_keys(self.keys_dir)
        key = keys.load_private_key(self.keys_dir / keys.PRIVATE_KEY_FILE)
        super().__init__(workdir, devices, prefix, authority=authority, key=key)
        self.gateway: dict[str, Any] = json.loads(self.files.gateway.read_text())
        self._sessions: list[Session] = []
        self._n = 0

    # ----------------------------------------------------------- the CLI ---

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "AUXILIO_REGISTRY": str(self.registry_path),
            "AUXILIO_KEYS_DIR": str(self.keys_dir),
            "AUXILIO_LANG": "en",
            "AUXILIO_ACTOR": "test",
        }

    def cli(self, *argv: str, admin: bool = True) -> tuple[int, str, str]:
        """`auxilio …` in this process: (exit code, stdout, stderr), with this broker's
        --broker-admin for `devices` commands unless given or ``admin`` is False."""
        from auxilio.cli import main

        args = list(argv)
        if admin and argv[:1] == ("devices",) and "--broker-admin" not in argv:
            args += ["--broker-admin", str(self.admin_file)]
        out, err = io.StringIO(), io.StringIO()
        old = {k: os.environ.get(k) for k in self.env()}
        os.environ.update(self.env())
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                rc = main(args)
        finally:
            for k, v in old.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        return rc, out.getvalue(), err.getvalue()

    def cli_process(self, *argv: str) -> tuple[subprocess.CompletedProcess[str], float]:
        """`python -m auxilio.cli …` as a real process: (result, perf_counter() at its exit)."""
        r = subprocess.run(
            [sys.executable, "-m", "auxilio.cli", *argv],
            capture_output=True,
            text=True,
            timeout=120,
            env=self.env(),
        )
        return r, time.perf_counter()

    def add_device(self, kind: str = "bracelet", board: str = "bracelet-c3") -> dict[str, Any]:
        """Enrol a device through `auxilio devices add` while the broker runs; its credentials."""
        self._n += 1
        out = self.dir / f"added-{self._n}.json"
        rc, _o, err = self.cli(
            "devices", "add", "--kind", kind, "--board", board, "--secret-out", str(out)
        )
        assert rc == 0, err
        return json.loads(out.read_text())

    # --------------------------------------------------------- the broker ---

    def session(self, username: str, password: str | None) -> Session:
        s = Session(self.port, username, password)
        self._sessions.append(s)
        return s

    def gateway_session(self) -> Session:
        s = self.session(self.gateway["username"], self.gateway["password"])
        assert not s.refused, s.rc
        return s

    def admin(self) -> Any:
        """A connected dynsec admin client (to change the broker behind the registry's back)."""
        from auxilio.broker.authority import AdminConfig
        from auxilio.broker.dynsec import DynsecAdmin

        cfg = AdminConfig.load(self.admin_file)
        assert cfg.url and cfg.username and cfg.password
        return DynsecAdmin(cfg.url, cfg.username, cfg.password).connect()

    def side_door(self, label: str) -> tuple[str, str]:
        """A second broker login holding the device's own topics that the registry knows
        nothing of: how a frame under the device's key still reaches the gateway when the
        broker lags behind a revoke (or comes by SMS). Returns (username, password)."""
        from auxilio.broker.authority import device_rules
        from auxilio.broker.dynsec import role_acls
        from auxilio.broker.passwords import new_password

        user, password, role = f"side-door-{self._n}", new_password(), f"side-door-{self._n}"
        self._n += 1
        admin = self.admin()
        try:
            admin.run(
                [
                    {"command": "createRole", "rolename": role},
                    {
                        "command": "modifyRole",
                        "rolename": role,
                        "acls": role_acls(device_rules(self.prefix, label)),
                    },
                    {"command": "createClient", "username": user, "password": password},
                    {"command": "addClientRole", "username": user, "rolename": role},
                ]
            )
        finally:
            admin.close()
        return user, password

    def topic(self, label: str, leaf: str) -> str:
        return f"{self.prefix}/v1/{label}/{leaf}"

    def close(self) -> None:
        for s in self._sessions:
            with contextlib.suppress(Exception):
                s.close()
        super().close()

    def __enter__(self) -> LiveBroker:
        return self


def wait_dropped(session: Session, timeout: float) -> float:
    """perf_counter() at which the broker dropped the session (AssertionError after timeout)."""
    from auxilio.testing.wait import wait_for

    return float(wait_for(lambda: session.dropped_at, timeout=timeout, what="the session drop"))
