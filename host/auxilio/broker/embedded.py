"""Embedded amqtt broker for demos on machines without mosquitto (never for production).

amqtt 0.12 speaks MQTT 3.1.1 only, is about 4x slower than mosquitto and keeps no
per-device ACL here (NOTES.md); `runner.EMBEDDED_NOTE` says so whenever it runs.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from typing import Any

from auxilio.errors import AuxilioError, ConnectionFailed

log = logging.getLogger(__name__)

# How long start() waits for the listener before giving up.
START_TIMEOUT_S = 15.0


def broker_config(bind: str, port: int) -> dict[str, Any]:
    return {
        "listeners": {"default": {"type": "tcp", "bind": f"{bind}:{port}"}},
        "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
    }


def _new_broker(bind: str, port: int) -> Any:
    try:
        from amqtt.broker import Broker
    except ImportError:
        raise AuxilioError(
            "neither mosquitto nor amqtt is installed (apt-get install mosquitto, "
            "or pip install 'auxilio[embedded-broker]')"
        ) from None
    # amqtt logs every connection at INFO; keep demo output readable.
    logging.getLogger("amqtt").setLevel(logging.WARNING)
    logging.getLogger("transitions").setLevel(logging.WARNING)
    return Broker(broker_config(bind, port))


async def serve(bind: str, port: int, stop: asyncio.Event | None = None) -> None:
    """Serve until ``stop`` is set (or SIGINT/SIGTERM when run in the main thread)."""
    broker = _new_broker(bind, port)
    try:
        await broker.start()
    except Exception as exc:  # noqa: BLE001 - amqtt raises its own BrokerError/OSError mix
        raise ConnectionFailed(f"embedded broker cannot listen on {bind}:{port}: {exc}") from None
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
    log.warning("embedded broker listening on %s:%d", bind, port)
    try:
        await stop.wait()
    finally:
        await broker.shutdown()


class EmbeddedBroker:
    """amqtt in a background thread: ``start()``, ``.url``, ``stop()`` (for demos/tests)."""

    def __init__(self, host: str = "127.0.0.1", port: int | None = None) -> None:
        if port is None:
            import socket

            with socket.socket() as s:
                s.bind((host, 0))
                port = s.getsockname()[1]
        self.host, self.port = host, port
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
            broker = _new_broker(self.host, self.port)
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
