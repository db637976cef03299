"""Forward sinks for tests: a real webhook receiver with a fault schedule, and a pipe-like consumer.

``WebhookReceiver`` is a real HTTP server on 127.0.0.1 (the gateway's
WebhookSink talks to it over TCP like to any dispatch system). Its
``faults`` callable decides per request: 2xx, an error status (404 as a
reverse proxy answers during a deploy, 503...), or a dropped connection.

``PipeConsumer`` stands for a JSONL consumer reading the gateway's stdout:
writes land in a pipe buffer, the consumer reads lines from it, and when it
dies the unread buffer is lost and every later write raises BrokenPipeError,
which is exactly what a real pipe does.
"""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Callable
from typing import Any

# A fault schedule: (request number from 1, record) -> HTTP status to answer, or 0
# to drop the connection without answering.
Faults = Callable[[int, dict[str, Any]], int]


def always_ok(n: int, record: dict[str, Any]) -> int:
    return 204


class WebhookReceiver:
    """Records every POSTed record it accepted (2xx), by idempotency key."""

    def __init__(self, faults: Faults = always_ok) -> None:
        self.faults = faults
        self.requests = 0
        self.accepted: list[dict[str, Any]] = []
        self.keys: list[str] = []
        self.refused = 0
        self._cond = threading.Condition()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            # Keep-alive, as dispatch systems behind a reverse proxy speak it.
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 - http.server API
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                try:
                    record = json.loads(body)
                except ValueError:
                    record = {}
                with receiver._cond:
                    receiver.requests += 1
                    n = receiver.requests
                status = receiver.faults(n, record)
                if status == 0:
                    self.close_connection = True
                    return  # no answer: the client sees a dropped connection
                if 200 <= status < 300:
                    with receiver._cond:
                        receiver.accepted.append(record)
                        receiver.keys.append(self.headers.get("Idempotency-Key", ""))
                        receiver._cond.notify_all()
                else:
                    with receiver._cond:
                        receiver.refused += 1
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *a: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/c4"
        # A short poll interval: shutdown() waits for it (0.5 s by default, per test).
        self._thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def accepted_keys(self) -> set[str]:
        with self._cond:
            return {r.get("key", "") for r in self.accepted}

    def wait_keys(self, keys: set[str], timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(
                lambda: keys <= {r.get("key", "") for r in self.accepted}, timeout
            )

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> WebhookReceiver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class PipeConsumer:
    """A text stream with a pipe's semantics and a consumer at the other end."""

    def __init__(self, die_after_lines: int | None = None) -> None:
        self.die_after_lines = die_after_lines
        self.buffer = ""
        self.lines: list[dict[str, Any]] = []  # what the consumer actually read
        self.dead = False
        self._lock = threading.Lock()

    def write(self, text: str) -> int:
        with self._lock:
            if self.dead:
                raise BrokenPipeError(32, "Broken pipe")
            self.buffer += text
        return len(text)

    def flush(self) -> None:
        with self._lock:
            if self.dead:
                raise BrokenPipeError(32, "Broken pipe")

    def consume(self) -> None:
        """The consumer reads what is in the pipe (it may die partway, per die_after_lines)."""
        with self._lock:
            while not self.dead and "\n" in self.buffer:
                line, self.buffer = self.buffer.split("\n", 1)
                self.lines.append(json.loads(line))
                if self.die_after_lines is not None and len(self.lines) >= self.die_after_lines:
                    self.kill()

    def kill(self) -> None:
        """The consumer dies: what it had not read is gone with the pipe."""
        self.dead = True
        self.buffer = ""

    def broken(self) -> bool:
        """What poll() reports to the writer of a pipe whose reader is gone (POLLERR)."""
        return self.dead

    def keys(self) -> set[str]:
        with self._lock:
            return {r.get("key", "") for r in self.lines}
