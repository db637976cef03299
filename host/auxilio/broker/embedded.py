"""Embedded amqtt broker for demos on machines without mosquitto (never for production).

amqtt 0.12 speaks MQTT 3.1.1 only and is about 4x slower than mosquitto (NOTES.md).
Given a directory written by `auxilio broker config`, it enforces the same password
file and ACL through the two plugins below; without one it is anonymous and open.
`runner.EMBEDDED_NOTE` says so whenever it runs from the CLI.
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

try:
    from amqtt.contexts import Action
    from amqtt.plugins.base import BaseAuthPlugin, BaseTopicPlugin

    _HAVE_AMQTT = True
except ImportError:  # the plugins below are only ever loaded by amqtt itself
    BaseAuthPlugin = BaseTopicPlugin = object  # type: ignore[misc,assignment]
    _HAVE_AMQTT = False


class PasswordFileAuthPlugin(BaseAuthPlugin):  # type: ignore[misc,valid-type]
    """Checks CONNECT credentials against the mosquitto-format ($7$) password file."""

    @dataclass
    class Config:
        directory: str = ""

    def __init__(self, context: Any) -> None:
        super().__init__(context)
        from auxilio.broker.acl import Acl, read_password_file

        d = Path(self.context.config.directory)
        self._users = read_password_file(d / "passwd")
        self._acl = Acl.parse((d / "acl").read_text())

    async def authenticate(self, *, session: Any) -> bool | None:
        from auxilio.broker.acl import check_password

        if not check_password(self._users, session.username, session.password):
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


class AclTopicPlugin(BaseTopicPlugin):  # type: ignore[misc,valid-type]
    """Applies the ACL file to publish, subscribe and every delivery."""

    @dataclass
    class Config:
        directory: str = ""

    def __init__(self, context: Any) -> None:
        super().__init__(context)
        from auxilio.broker.acl import Acl

        self._acl = Acl.parse((Path(self.context.config.directory) / "acl").read_text())

    async def topic_filtering(
        self, *, session: Any = None, topic: str | None = None, action: Any = None
    ) -> bool | None:
        if session is None or topic is None:
            return False
        user, cid = session.username, session.client_id
        if action == Action.PUBLISH:
            return self._acl.may_publish(user, cid, topic)
        if action == Action.SUBSCRIBE:
            return self._acl.may_subscribe(user, cid, topic)
        if action == Action.RECEIVE:
            return self._acl.may_receive(user, cid, topic)
        return False


def broker_config(bind: str, port: int, config_dir: str | Path | None = None) -> dict[str, Any]:
    if config_dir is None:
        plugins: dict[str, Any] = {
            "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}
        }
    else:
        d = str(Path(config_dir).resolve())
        plugins = {
            f"{__name__}.PasswordFileAuthPlugin": {"directory": d},
            f"{__name__}.AclTopicPlugin": {"directory": d},
        }
    return {"listeners": {"default": {"type": "tcp", "bind": f"{bind}:{port}"}}, "plugins": plugins}


def _new_broker(bind: str, port: int, config_dir: str | Path | None) -> Any:
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
    return Broker(broker_config(bind, port, config_dir))


async def serve(
    bind: str, port: int, config_dir: str | Path | None = None, stop: asyncio.Event | None = None
) -> None:
    """Serve until ``stop`` is set (or SIGINT/SIGTERM when run in the main thread)."""
    broker = _new_broker(bind, port, config_dir)
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
    file and ACL; None for an anonymous open broker.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int | None = None,
        config_dir: str | Path | None = None,
    ) -> None:
        if port is None:
            import socket

            with socket.socket() as s:
                s.bind((host, 0))
                port = s.getsockname()[1]
        self.host, self.port, self.config_dir = host, port, config_dir
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
            broker = _new_broker(self.host, self.port, self.config_dir)
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
