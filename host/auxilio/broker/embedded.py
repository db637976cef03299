"""Embedded amqtt broker for demos on machines without mosquitto (never for production).

amqtt 0.12 speaks MQTT 3.1.1 only and is about 4x slower than mosquitto (NOTES.md).
Given a directory written by `auxilio broker config`, it enforces the same password
file and ACL through the two plugins below; without one it is anonymous and open.
`runner.EMBEDDED_NOTE` says so whenever it runs from the CLI.

Given the registry too, it takes device logins from the registry live (issue 11 §2:
the simplest correct authority for a broker that runs beside it): a device added or
re-keyed logs in at once, and a revoked, retired or re-keyed session can no longer
publish, subscribe or receive within LIVE_RECHECK_S (amqtt has no way to drop one).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from auxilio.errors import AuxilioError, ConnectionFailed

log = logging.getLogger(__name__)

# How long start() waits for the listener before giving up.
START_TIMEOUT_S = 15.0
# How long a device's registry row is trusted before it is read again: bounds how
# late a revoke reaches a live session (issue 11: within 1 s of the command).
LIVE_RECHECK_S = 0.2

try:
    from amqtt.contexts import Action
    from amqtt.plugins.base import BaseAuthPlugin, BaseTopicPlugin

    _HAVE_AMQTT = True
except ImportError:  # the plugins below are only ever loaded by amqtt itself
    BaseAuthPlugin = BaseTopicPlugin = object  # type: ignore[misc,assignment]
    _HAVE_AMQTT = False


class LiveLogins:
    """Device logins read from the registry (read-only), each row trusted for LIVE_RECHECK_S."""

    def __init__(self, registry_url: str) -> None:
        from auxilio.registry import open_registry

        self._registry = open_registry(registry_url, readonly=True)
        self._rows: dict[str, tuple[float, str | None]] = {}
        self._verified: dict[tuple[str, str, str], bool] = {}

    def password_hash(self, label: str) -> str | None:
        """The device's hash if it may log in now (a connectable state), else None."""
        import time

        from auxilio.broker.config import CONNECTABLE_STATES

        now = time.monotonic()
        seen = self._rows.get(label)
        if seen is None or now - seen[0] > LIVE_RECHECK_S:
            rec = self._registry.get_device(label)
            ok = rec is not None and rec.state in CONNECTABLE_STATES
            seen = (now, rec.mqtt_password_hash if ok and rec is not None else None)
            self._rows[label] = seen
        return seen[1]

    def accepts(self, label: str, password: str | None) -> bool:
        from auxilio.broker.passwords import verify_password

        encoded = self.password_hash(label)
        if encoded is None or password is None:
            return False
        key = (label, encoded, password)
        if key not in self._verified:  # PBKDF2 once per login, not per message
            if len(self._verified) > 10000:
                self._verified.clear()
            self._verified[key] = verify_password(password, encoded)
        return self._verified[key]

    def close(self) -> None:
        self._registry.close()


def _live(registry: str) -> LiveLogins | None:
    return LiveLogins(registry) if registry else None


class PasswordFileAuthPlugin(BaseAuthPlugin):  # type: ignore[misc,valid-type]
    """Checks CONNECT credentials against the mosquitto-format ($7$) password file,
    and devices against the registry when one is given."""

    @dataclass
    class Config:
        directory: str = ""
        registry: str = ""

    def __init__(self, context: Any) -> None:
        super().__init__(context)
        from auxilio.broker.acl import Acl, read_password_file

        d = Path(self.context.config.directory)
        self._users = read_password_file(d / "passwd")
        self._acl = Acl.parse((d / "acl").read_text())
        self._live = _live(self.context.config.registry)

    async def authenticate(self, *, session: Any) -> bool | None:
        from auxilio.broker.acl import check_password
        from auxilio.broker.authority import is_device_username

        if self._live is not None and is_device_username(session.username or ""):
            if not self._live.accepts(session.username, session.password):
                return False
        elif not check_password(self._users, session.username, session.password):
            return False
        # mosquitto's use_username_as_clientid replaces the client id with the
        # username; amqtt cannot, so it refuses any other id. Either way no login
        # can take another's session (issue 8 §2).
        if session.client_id != session.username:
            return False
        # A will is published by the broker on the client's behalf: same rule as a publish.
        if session.will_topic and not self._acl.may_publish(
            session.username, session.client_id, session.will_topic
        ):
            return False
        return True

    async def close(self) -> None:
        if self._live is not None:
            self._live.close()


class AclTopicPlugin(BaseTopicPlugin):  # type: ignore[misc,valid-type]
    """Applies the ACL file to publish, subscribe and every delivery; with a registry,
    only while the device's login is still valid there."""

    @dataclass
    class Config:
        directory: str = ""
        registry: str = ""

    def __init__(self, context: Any) -> None:
        super().__init__(context)
        from auxilio.broker.acl import Acl

        self._acl = Acl.parse((Path(self.context.config.directory) / "acl").read_text())
        self._live = _live(self.context.config.registry)

    async def topic_filtering(
        self, *, session: Any = None, topic: str | None = None, action: Any = None
    ) -> bool | None:
        from auxilio.broker.authority import is_device_username

        if session is None or topic is None:
            return False
        user, cid = session.username, session.client_id
        if self._live is not None and is_device_username(user or ""):
            if not self._live.accepts(user, session.password):
                return False  # revoked, retired or re-keyed since it logged in
        if action == Action.PUBLISH:
            return self._acl.may_publish(user, cid, topic)
        if action == Action.SUBSCRIBE:
            return self._acl.may_subscribe(user, cid, topic)
        if action == Action.RECEIVE:
            return self._acl.may_receive(user, cid, topic)
        return False

    async def close(self) -> None:
        if self._live is not None:
            self._live.close()


def broker_config(
    bind: str, port: int, config_dir: str | Path | None = None, registry: str | None = None
) -> dict[str, Any]:
    """amqtt's config; ``registry`` (path or URL) makes device logins live (needs config_dir)."""
    if config_dir is None:
        plugins: dict[str, Any] = {
            "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}
        }
    else:
        d = str(Path(config_dir).resolve())
        opts = {"directory": d, "registry": str(registry or "")}
        plugins = {
            f"{__name__}.PasswordFileAuthPlugin": opts,
            f"{__name__}.AclTopicPlugin": dict(opts),
        }
    return {"listeners": {"default": {"type": "tcp", "bind": f"{bind}:{port}"}}, "plugins": plugins}


def _new_broker(
    bind: str, port: int, config_dir: str | Path | None, registry: str | None = None
) -> Any:
    if not _HAVE_AMQTT:
        raise AuxilioError(
            "neither mosquitto nor amqtt is installed (apt-get install mosquitto, "
            "or pip install 'auxilio[embedded-broker]')"
        )
    from amqtt.broker import Broker

    if config_dir is not None:
        for name in ("passwd", "acl"):
            if not (Path(config_dir) / name).is_file():
                raise AuxilioError(
                    f"{Path(config_dir) / name} not found (run `auxilio broker config`)"
                )
    # amqtt logs every connection at INFO; keep demo output readable.
    logging.getLogger("amqtt").setLevel(logging.WARNING)
    logging.getLogger("transitions").setLevel(logging.WARNING)
    return Broker(broker_config(bind, port, config_dir, registry))


async def serve(
    bind: str,
    port: int,
    config_dir: str | Path | None = None,
    stop: asyncio.Event | None = None,
    registry: str | None = None,
) -> None:
    """Serve until ``stop`` is set (or SIGINT/SIGTERM when run in the main thread)."""
    broker = _new_broker(bind, port, config_dir, registry)
    try:
        await broker.start()
    except Exception as exc:  # noqa: BLE001 - amqtt raises its own BrokerError/OSError mix
        raise ConnectionFailed(f"embedded broker cannot listen on {bind}:{port}: {exc}") from None
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
    log.warning(
        "embedded broker listening on %s:%d (%s)",
        bind,
        port,
        "password file + ACL" if config_dir else "anonymous, no ACL",
    )
    try:
        await stop.wait()
    finally:
        await broker.shutdown()


class EmbeddedBroker:
    """amqtt in a background thread: ``start()``, ``.url``, ``stop()`` (for demos/tests).

    ``config_dir``: a directory from `auxilio broker config` to enforce its password
    file and ACL; None for an anonymous open broker. ``registry``: take device logins
    from this registry live (with config_dir).
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int | None = None,
        config_dir: str | Path | None = None,
        registry: str | Path | None = None,
    ) -> None:
        if port is None:
            import socket

            with socket.socket() as s:
                s.bind((host, 0))
                port = s.getsockname()[1]
        self.host, self.port, self.config_dir = host, port, config_dir
        self.registry = str(registry) if registry is not None else None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    def _main(self) -> None:
        async def body() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            broker = _new_broker(self.host, self.port, self.config_dir, self.registry)
            await broker.start()
            self._ready.set()
            try:
                await self._stop.wait()
            finally:
                await broker.shutdown()

        try:
            asyncio.run(body())
        except BaseException as exc:  # noqa: BLE001 - reported to start()
            self._error = exc
            self._ready.set()

    def start(self) -> EmbeddedBroker:
        self._thread = threading.Thread(target=self._main, name="amqtt-broker", daemon=True)
        self._thread.start()
        if not self._ready.wait(START_TIMEOUT_S):
            raise ConnectionFailed("embedded broker did not start in time")
        if self._error is not None:
            raise ConnectionFailed(f"embedded broker failed to start: {self._error}")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(10)
        self._thread = None

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
