"""The virtual boards' network: a TCP proxy to the broker with link down, latency and loss.

Devices are configured with the proxy's address instead of the broker's. One
thread multiplexes every connection (a fleet has hundreds). Models:
- link down: every connection is cut and new ones are refused (reset);
- latency: each chunk is delivered `latency_ms` later, in order, per direction;
- loss: TCP does not lose bytes, it retransmits; a lost segment costs the
  sender a retransmission timeout. So a dropped chunk is delivered after
  RTO (doubling for consecutive losses), which is what an MQTT client feels.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import random
import selectors
import socket
import threading
import time

log = logging.getLogger(__name__)

CHUNK = 16 * 1024
# Linux's minimum TCP retransmission timeout (TCP_RTO_MIN), the cost of one lost segment.
RTO_S = 0.2
RTO_MAX_S = 3.2
# Reconnect storms of a fleet: the accept backlog.
BACKLOG = 512


class _Pipe:
    """One proxied connection: device side and broker side."""

    def __init__(self, down: socket.socket, up: socket.socket) -> None:
        self.socks = (down, up)
        self.last_due = [0.0, 0.0]  # per direction: keep chunks in order
        self.losses = [0, 0]
        self.pending = [0, 0]
        self.closing = False


class BrokerProxy:
    def __init__(
        self, upstream_host: str, upstream_port: int, port: int = 0, seed: int | None = None
    ):
        self.upstream = (upstream_host, upstream_port)
        self._listen = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listen.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listen.bind(("127.0.0.1", port))
        self._listen.listen(BACKLOG)
        self._listen.setblocking(False)
        self.host, self.port = self._listen.getsockname()[:2]
        self.up = True
        self.latency_ms = 0.0
        self.drop_pct = 0.0
        self._rand = random.Random(seed)
        self._sel = selectors.DefaultSelector()
        self._sel.register(self._listen, selectors.EVENT_READ, None)
        self._pipes: set[_Pipe] = set()
        self._due: list[tuple[float, int, _Pipe, int, bytes]] = []
        self._seq = itertools.count()
        self._lock = threading.Lock()
        self._wake_r, self._wake_w = socket.socketpair()
        self._sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._closed = False
        self.stats = {"accepted": 0, "refused": 0, "bytes_up": 0, "bytes_down": 0, "lost": 0}
        self._thread = threading.Thread(target=self._loop, name="vb-netem", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    def set_link(self, up: bool) -> None:
        """Link down cuts every connection now and refuses new ones until it is up."""
        with self._lock:
            self.up = bool(up)
        self._wake()

    def set_latency(self, ms: float) -> None:
        self.latency_ms = max(0.0, float(ms))

    def set_drop(self, pct: float) -> None:
        self.drop_pct = min(100.0, max(0.0, float(pct)))

    def connections(self) -> int:
        return len(self._pipes)

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"!")
        except OSError:
            pass

    def _loop(self) -> None:
        while not self._closed:
            timeout = 0.5
            if self._due:
                timeout = max(0.0, min(timeout, self._due[0][0] - time.monotonic()))
            try:
                events = self._sel.select(timeout)
            except (OSError, ValueError):
                return
            for key, _ in events:
                if key.data == "wake":
                    try:
                        self._wake_r.recv(4096)
                    except OSError:
                        pass
                elif key.data is None:
                    self._accept()
                else:
                    pipe, direction = key.data
                    self._read(pipe, direction)
            if not self.up and self._pipes:
                for pipe in list(self._pipes):
                    self._close_pipe(pipe)
            self._deliver()

    def _accept(self) -> None:
        while True:
            try:
                down, _ = self._listen.accept()
            except (BlockingIOError, OSError):
                return
            if not self.up:
                self.stats["refused"] += 1
                down.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
                )
                down.close()  # RST, like an unreachable network
                continue
            try:
                up = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                down.close()
                continue
            for s in (down, up):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                s.setblocking(True)
                s.settimeout(5)
            pipe = _Pipe(down, up)
            self._pipes.add(pipe)
            self.stats["accepted"] += 1
            self._sel.register(down, selectors.EVENT_READ, (pipe, 0))
            self._sel.register(up, selectors.EVENT_READ, (pipe, 1))

    def _read(self, pipe: _Pipe, direction: int) -> None:
        try:
            data = pipe.socks[direction].recv(CHUNK)
        except OSError:
            data = b""
        if not data:
            pipe.closing = True
            if not any(pipe.pending):
                self._close_pipe(pipe)
            else:
                for s in pipe.socks:
                    try:
                        self._sel.unregister(s)
                    except (KeyError, ValueError):
                        pass
            return
        now = time.monotonic()
        due = now + self.latency_ms / 1000.0
        if self.drop_pct and self._rand.random() * 100.0 < self.drop_pct:
            pipe.losses[direction] += 1
            self.stats["lost"] += 1
            due += min(RTO_S * (2 ** (pipe.losses[direction] - 1)), RTO_MAX_S)
        else:
            pipe.losses[direction] = 0
        due = max(due, pipe.last_due[direction])
        pipe.last_due[direction] = due
        pipe.pending[direction] += 1
        heapq.heappush(self._due, (due, next(self._seq), pipe, direction, data))

    def _deliver(self) -> None:
        now = time.monotonic()
        while self._due and self._due[0][0] <= now:
            _, _, pipe, direction, data = heapq.heappop(self._due)
            pipe.pending[direction] -= 1
            if pipe not in self._pipes:
                continue
            try:
                pipe.socks[1 - direction].sendall(data)
                self.stats["bytes_up" if direction == 0 else "bytes_down"] += len(data)
            except OSError:
                self._close_pipe(pipe)
                continue
            if pipe.closing and not any(pipe.pending):
                self._close_pipe(pipe)

    def _close_pipe(self, pipe: _Pipe) -> None:
        self._pipes.discard(pipe)
        for s in pipe.socks:
            try:
                self._sel.unregister(s)
            except (KeyError, ValueError):
                pass
            try:
                s.close()
            except OSError:
                pass

    def close(self) -> None:
        self._closed = True
        self._wake()
        self._thread.join(2)
        for pipe in list(self._pipes):
            self._close_pipe(pipe)
        for s in (self._listen, self._wake_r, self._wake_w):
            try:
                s.close()
            except OSError:
                pass
        self._sel.close()
