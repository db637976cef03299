"""Controller side of the host HAL control channel: a TCP server the firmware connects to.

The firmware's host HAL (firmware/hal/host.py) connects as a client to
AUXILIO_HAL_CONTROL=127.0.0.1:PORT, one connection per interpreter, and speaks
newline-delimited JSON: we send {"op": ..., "dev": N}, it sends {"ev": ..., "dev": N}.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

# Events kept for `events()` / `wait_event()`; older ones are dropped first.
EVENTS_KEEP = 100_000
# A firmware line longer than this is garbage, not an event.
MAX_LINE = 64 * 1024

Event = dict[str, Any]


class ControlServer:
    """Listens on 127.0.0.1; commands go to the newest firmware connection."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._server.bind((host, port))
        self._server.listen(8)
        self.host, self.port = self._server.getsockname()[:2]
        self._conn: socket.socket | None = None
        self._send_lock = threading.Lock()
        self._cond = threading.Condition()
        self._events: list[Event] = []
        self._dropped = 0
        self._listeners: list[Callable[[Event], None]] = []
        self.on_connect: Callable[[], None] | None = None  # after each (re)connection
        self.connections = 0  # accepted so far (a reconnect after a reboot adds one)
        self._closed = False
        threading.Thread(target=self._accept, name="vb-control", daemon=True).start()

    @property
    def address(self) -> str:
        """The value for AUXILIO_HAL_CONTROL."""
        return f"{self.host}:{self.port}"

    # -- commands ---------------------------------------------------------------

    def send(self, op: str, dev: int = 0, **fields: Any) -> bool:
        """Send one command; False when no firmware is connected (nothing is queued)."""
        line = (json.dumps({"op": op, "dev": dev, **fields}) + "\n").encode()
        with self._send_lock:
            conn = self._conn
            if conn is None:
                return False
            try:
                conn.sendall(line)
                return True
            except OSError:
                return False

    def wait_connected(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while self._conn is None:
            if time.monotonic() > deadline:
                raise TimeoutError("the firmware did not connect to the control channel")
            time.sleep(0.02)

    def is_connected(self) -> bool:
        return self._conn is not None

    # -- events -------------------------------------------------------------------

    def add_listener(self, callback: Callable[[Event], None]) -> None:
        self._listeners.append(callback)

    def events(self, since: int = 0) -> list[Event]:
        with self._cond:
            return list(self._events[max(0, since - self._dropped) :])

    def mark(self) -> int:
        """An index for `wait_event(since=...)`: only events after this moment count."""
        with self._cond:
            return self._dropped + len(self._events)

    def wait_event(
        self,
        match: Callable[[Event], bool] | None = None,
        timeout: float = 30.0,
        since: int = 0,
        **fields: Any,
    ) -> Event:
        """The first event after `since` with these fields (and `match`), waiting for it."""

        def ok(ev: Event) -> bool:
            return all(ev.get(k) == v for k, v in fields.items()) and (match is None or match(ev))

        deadline = time.monotonic() + timeout
        with self._cond:
            pos = since
            while True:
                start = max(0, pos - self._dropped)
                for i in range(start, len(self._events)):
                    if ok(self._events[i]):
                        return self._events[i]
                pos = self._dropped + len(self._events)
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no control event matching {fields or match}")
                self._cond.wait(min(left, 0.25))

    def next_event(
        self, match: Callable[[Event], bool], timeout: float = 30.0, since: int = 0
    ) -> Event | None:
        """Like wait_event, but None after `timeout` (for callers that report, not raise)."""
        try:
            return self.wait_event(match, timeout=timeout, since=since)
        except TimeoutError:
            return None

    # -- plumbing -----------------------------------------------------------------

    def _accept(self) -> None:
        while not self._closed:
            try:
                conn, _ = self._server.accept()
            except OSError:
                return
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._send_lock:
                old, self._conn = self._conn, conn
            if old is not None:  # a rebooted interpreter reconnected: the old one is dead
                _close(old)
            self.connections += 1
            threading.Thread(target=self._read, args=(conn,), daemon=True).start()
            if self.on_connect is not None:
                try:
                    self.on_connect()
                except Exception:
                    log.exception("control on_connect hook failed")

    def _read(self, conn: socket.socket) -> None:
        buf = b""
        try:
            while True:
                data = conn.recv(65536)
                if not data:
                    break
                buf += data
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    self._on_line(line)
                if len(buf) > MAX_LINE:
                    log.warning("control channel: over-long line dropped")
                    buf = b""
        except OSError:
            pass
        finally:
            with self._send_lock:
                if self._conn is conn:
                    self._conn = None
            _close(conn)

    def _on_line(self, line: bytes) -> None:
        try:
            ev = json.loads(line)
        except ValueError:
            log.warning("control channel: a line that is not JSON was ignored")
            return
        if not isinstance(ev, dict):
            return
        ev.setdefault("dev", 0)
        ev["t"] = time.time()
        with self._cond:
            self._events.append(ev)
            if len(self._events) > EVENTS_KEEP:
                cut = len(self._events) - EVENTS_KEEP
                del self._events[:cut]
                self._dropped += cut
            self._cond.notify_all()
        for cb in list(self._listeners):
            try:
                cb(ev)
            except Exception:
                log.exception("control event listener failed")

    def close(self) -> None:
        self._closed = True
        for sock in (self._server, self._conn):
            if sock is not None:
                _close(sock)


def _close(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass
