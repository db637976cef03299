"""Delivering forward records to dispatch: a worker over the registry's outbox, and its sinks.

An ACK means "stored and on its way to dispatch" (DESIGN §1). The pipeline
writes each forward record (records.py) into ``forward_outbox`` in the same
transaction as the frame it describes; this worker sends pending records
oldest first and marks one delivered only when its sink confirmed it (a
flushed line on stdout, a 2xx from the webhook). On a restart everything
unconfirmed is sent again, so delivery is at-least-once and consumers dedup
on ``key``. Nothing is ever dropped or parked: a sink that keeps failing is
retried with capped backoff, and after FAILING_AFTER_S the gateway raises a
``FORWARD_FAILING`` C4 event with the backlog, then ``FORWARD_RESTORED``.
A JSONL consumer that goes away (broken pipe) ends the gateway with an error
(exit code 6), so its supervisor restarts both and the backlog is resent. A
pipe has no end-to-end confirmation: lines the consumer had not read yet
when it died were lost with the pipe buffer. So JSONL records stay resendable
for JSONL_RESEND_S after they were written, and a broken pipe, or a start on
a new stdout, makes every record written in that window pending again
(duplicates are fine: consumers dedup on ``key``; losing one is not).
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import IO, Any

from auxilio.errors import AuxilioError, UsageError
from auxilio.gateway import records as R
from auxilio.gateway.crash import CrashHook, env_crash_hook
from auxilio.gateway.store import Store

log = logging.getLogger("auxilio.gateway")

# Records fetched per delivery round: under load one round's fixed cost (two
# reads, one transaction with an fsync) is shared by up to this many records.
FETCH = 500
# A round that follows one which delivered records starts at least this long
# after it, so under a stream of alerts one round (one transaction with an
# fsync, holding SQLite's write lock) serves many commits instead of each
# alert's commit waiting behind the previous alert's mark: measured, the JSONL
# forwarder added 1.3 ms to the alert round trip p50 without it, 0.2 ms with it
# (tests/bench bench_gateway fwd_*). After a quiet spell (an empty round) an
# alert is forwarded at once.
COALESCE_S = 0.02
# Retry backoff of a failing sink: first retry after RETRY_MIN_S, doubling up to RETRY_MAX_S.
RETRY_MIN_S = 0.2
RETRY_MAX_S = 5.0
# One POST may take this long before it counts as failed.
POST_TIMEOUT_S = 5.0
# A sink failing for this long (with records waiting) raises FORWARD_FAILING.
FAILING_AFTER_S = 10.0
# While it keeps failing, the event is raised again this often with the new backlog.
FAILING_REPEAT_S = 300.0
# Idle poll period (the pipeline also wakes the worker after each commit).
IDLE_POLL_S = 1.0
# JSONL records written this recently are resent after a broken pipe: a reader
# that died may not have read them (a Linux pipe buffers 64 KiB).
JSONL_RESEND_S = 60.0
# Bodies of JSONL records past JSONL_RESEND_S are erased at most this often: it
# is a write transaction (the hot commit waits for SQLite's write lock), and an
# idle round follows every wake-up under load.
JSONL_ERASE_EVERY_S = 5.0


class SinkGone(AuxilioError):
    """The consumer went away for good (a closed stdout): the gateway must stop."""

    exit_code = 6


class SinkError(Exception):
    """One delivery failed; the record stays pending. `down`: the sink itself is unavailable."""

    def __init__(self, message: str, down: bool = True) -> None:
        super().__init__(message)
        self.down = down


class Sink:
    """Where records go. send() returns only when the sink confirmed the record."""

    name = "none"

    def send(self, body: str, key: str) -> None:
        raise NotImplementedError

    def send_many(self, items: list[tuple[str, str]]) -> int:
        """Deliver in order; returns how many were confirmed (the first failure raises after)."""
        done = 0
        for body, key in items:
            self.send(body, key)
            done += 1
        return done

    def describe(self) -> str:
        return self.name


class JsonlSink(Sink):
    """One JSON object per line on a stream (stdout by default); confirmed once flushed."""

    name = "jsonl"

    def __init__(self, stream: IO[str] | None = None) -> None:
        self.stream = stream or sys.stdout

    def send_many(self, items: list[tuple[str, str]]) -> int:
        text = "".join(body + "\n" for body, _key in items)
        try:
            self.stream.write(text)
            self.stream.flush()
        except (BrokenPipeError, ValueError, OSError) as exc:
            raise SinkGone(f"forward consumer on stdout went away ({type(exc).__name__})") from None
        return len(items)

    def send(self, body: str, key: str) -> None:
        self.send_many([(body, key)])

    def check(self) -> None:
        """Raise SinkGone if the reader went away, even with nothing left to write.

        A pipe whose reader closed reports POLLERR to the writer at once; without
        this, lines written just before the reader died would be lost unnoticed
        when no later write comes to fail.
        """
        probe = getattr(self.stream, "broken", None)
        if probe is not None:  # a test stream standing for a pipe (auxilio.testing.sinks)
            if probe():
                raise SinkGone("forward consumer on stdout went away (pipe closed)")
            return
        try:
            fd = self.stream.fileno()
        except (AttributeError, ValueError, OSError):
            return
        import select

        p = select.poll()
        p.register(fd, select.POLLERR | select.POLLHUP)
        if p.poll(0):
            raise SinkGone("forward consumer on stdout went away (pipe closed)")

    def describe(self) -> str:
        return "jsonl (stdout)"


class WebhookSink(Sink):
    """POST each record as JSON with an Idempotency-Key header; 2xx confirms it.

    One persistent HTTP/1.1 connection (reopened after any failure): a new TCP
    connection and urllib's machinery per record cost the forwarder most of a
    core under load, and it shares the hot commit's GIL.
    """

    name = "webhook"

    def __init__(self, url: str) -> None:
        from urllib.parse import urlsplit

        self.url = url
        u = urlsplit(url)
        self._https = u.scheme == "https"
        self._host = u.hostname or ""
        self._port = u.port
        self._path = (u.path or "/") + (f"?{u.query}" if u.query else "")
        self._conn: Any = None

    def _connection(self) -> Any:
        import http.client

        if self._conn is None:
            cls = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
            self._conn = cls(self._host, self._port, timeout=POST_TIMEOUT_S)
        return self._conn

    def _drop(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def send(self, body: str, key: str) -> None:
        data = body.encode()
        headers = {"Content-Type": "application/json", "Idempotency-Key": key}
        try:
            conn = self._connection()
            conn.request("POST", self._path, body=data, headers=headers)
            resp = conn.getresponse()
            resp.read()  # the connection is reusable only once the body is consumed
            status = resp.status
            if resp.will_close:
                self._drop()
        except (OSError, ValueError) as exc:  # http.client errors are OSError/HTTPException
            self._drop()
            raise SinkError(type(exc).__name__) from None
        except Exception as exc:  # noqa: BLE001 - http.client.HTTPException and kin
            self._drop()
            raise SinkError(type(exc).__name__) from None
        if not 200 <= status < 300:
            # 4xx other than "not there right now" refuses this one record; the
            # sink itself is up, so later records are still tried (never parked).
            down = status >= 500 or status in (404, 408, 425, 429)
            raise SinkError(f"HTTP {status}", down=down)

    def describe(self) -> str:
        port = f":{self._port}" if self._port else ""
        return f"webhook {'https' if self._https else 'http'}://{self._host}{port}{self._path}"


class ForwardWorker:
    """Sends the outbox's pending records through one sink, on its own thread."""

    def __init__(
        self,
        store: Store,
        sink: Sink,
        stats: Counter[str],
        *,
        clock: Callable[[], float] = time.time,
        on_fatal: Callable[[BaseException], None] | None = None,
        failing_after_s: float = FAILING_AFTER_S,
        retry_min_s: float = RETRY_MIN_S,
        crash: CrashHook | None = None,
        mark: Callable[[list[int], float, bool], None] | None = None,
        drop: Callable[[float], None] | None = None,
    ) -> None:
        self.store = store
        self.sink = sink
        self.stats = stats
        self.clock = clock
        self.on_fatal = on_fatal
        self.failing_after_s = failing_after_s
        self.backlog = 0
        self.failing = False
        self._fail_since: float | None = None
        self._failing_event_at = 0.0
        self.retry_min_s = retry_min_s
        self.killed = False
        self._after = 0  # a pipe's watermark: ids up to it are delivered
        # Marking delivered records: by default its own transaction; the gateway
        # passes its own, so the marks ride on its group commit and the hot commit
        # never waits for this thread's hold on SQLite's write lock.
        self._mark = mark or self.store.forward_done
        self._drop = drop or self.store.forward_drop_before
        self._unmarked: set[int] = set()  # delivered, mark not yet committed
        self._unmarked_lock = threading.Lock()
        self._delay = retry_min_s
        self._erased_at = -JSONL_ERASE_EVERY_S  # time.monotonic() of the last erase
        self._round_at = 0.0  # time.monotonic() of the last round's start
        self._delivered = 0  # records the last round delivered
        self._drain = False  # close(): one last round before the thread ends
        self._wake = threading.Event()
        self._stop = threading.Event()
        # Crash points for the tests (crash.py): after_forward, before_mark.
        self._crash = crash or env_crash_hook()
        self._thread = threading.Thread(target=self._run, name="forward", daemon=True)

    def start(self) -> ForwardWorker:
        if isinstance(self.sink, JsonlSink):
            # A new stdout is a new pipe: what the last one carried in its final
            # JSONL_RESEND_S may have died unread with its reader (or with us).
            n = self.store.forward_unmark_since(self.clock() - JSONL_RESEND_S)
            if n:
                log.info("gateway: re-sending %d recent JSONL record(s) on the new stdout", n)
        self._thread.start()
        return self

    def wake(self) -> None:
        self._wake.set()

    def close(self) -> None:
        """Stop after one last round: what was committed just before a clean stop goes out
        now, not after the restart (a simulated crash, Gateway.abort/kill, skips it)."""
        self._drain = True
        self._stop.set()
        self._wake.set()
        self.join()

    def marked(self, ids: list[int]) -> None:
        """The marks for these records are committed (see `mark`)."""
        with self._unmarked_lock:
            self._unmarked.difference_update(ids)

    def kill(self) -> None:
        self.killed = True
        self._stop.set()
        self._wake.set()

    def join(self) -> None:
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=POST_TIMEOUT_S + 2)

    # ---------------------------------------------------------------- loop ---

    def _run(self) -> None:
        while not self._stop.is_set():
            gap = self._round_at + COALESCE_S - time.monotonic()
            if self._delivered and gap > 0 and self._stop.wait(gap):
                break
            progressed = self._guarded_round()
            if progressed is None:
                return
            if not progressed:
                self._wake.wait(IDLE_POLL_S)
                self._wake.clear()
        if self._drain:
            self._guarded_round()

    def _guarded_round(self) -> bool | None:
        """round(), surviving a registry error (with backoff); None after SinkGone (fatal)."""
        self._round_at = time.monotonic()
        self._delivered = 0
        try:
            return self.round()
        except SinkGone as exc:
            log.error("gateway: %s; stopping so the backlog is resent on restart", exc)
            if self.on_fatal is not None:
                self.on_fatal(exc)
            return None
        except Exception as exc:  # noqa: BLE001 - e.g. the registry is down: retry
            self.stats["forward_internal_error"] += 1
            log.warning("gateway: forwarder error (%s); retrying", type(exc).__name__)
            self._stop.wait(self._delay)
            self._delay = min(self._delay * 2, RETRY_MAX_S)
            return False

    def round(self) -> bool:
        """One delivery round; False when nothing was due (the worker then idles)."""
        now = self.clock()
        pipe = isinstance(self.sink, JsonlSink)
        if pipe:
            try:
                self.sink.check()
            except SinkGone:
                n = self.store.forward_unmark_since(now - JSONL_RESEND_S)
                self._after = 0
                log.error("gateway: %d recently written record(s) will be sent again", n)
                raise
        # A pipe never fails one record and not the next: everything up to the last
        # id it took is delivered (or kept for resending), so start after it.
        pending = self.store.forward_pending(now, FETCH, self._after if pipe else 0)
        with self._unmarked_lock:
            if self._unmarked:
                pending = [p for p in pending if p["id"] not in self._unmarked]
        if not pending:
            self.backlog = 0
            self._health(now, ok=True)
            if pipe and time.monotonic() - self._erased_at >= JSONL_ERASE_EVERY_S:
                self._erased_at = time.monotonic()
                self._drop(now - JSONL_RESEND_S)
            return False
        delivered: list[int] = []
        error: SinkError | None = None
        if pipe:
            try:
                self.sink.send_many([(p["body"], p["key"]) for p in pending])
            except SinkGone:
                n = self.store.forward_unmark_since(now - JSONL_RESEND_S)
                self._after = 0
                log.error("gateway: %d recently written record(s) will be sent again", n)
                raise
            delivered = [p["id"] for p in pending]
            self._crash("after_forward")
        else:
            for p in pending:
                try:
                    self.sink.send(p["body"], p["key"])
                except SinkError as exc:
                    self.stats["forward_failed"] += 1
                    retry = now + self._delay
                    self.store.forward_failed(p["id"], str(exc), retry)
                    error = exc
                    if exc.down:
                        break  # the sink is down: do not hammer it with the rest
                    continue
                delivered.append(p["id"])
                if len(delivered) == 1:
                    self._crash("after_forward")
        if delivered:
            self._crash("before_mark")
            if self._stop.is_set() and self.killed:
                return False  # a killed process marks nothing
            with self._unmarked_lock:
                self._unmarked.update(delivered)
            self._mark(delivered, self.clock(), pipe)
            if pipe:
                self._after = max(self._after, delivered[-1])
            self.stats["forwarded"] += len(delivered)
            self._delivered = len(delivered)
        self.backlog, _oldest = self.store.forward_backlog()
        if error is not None:
            log.warning(
                "gateway: forward to %s failed (%s); %d record(s) waiting",
                self.sink.describe(),
                error,
                self.backlog,
            )
            self._health(now, ok=False)
            self._stop.wait(self._delay)  # the backoff; then at once to the next attempt
            self._delay = min(self._delay * 2, RETRY_MAX_S)
            return True
        self._delay = self.retry_min_s
        self._health(now, ok=True)
        return True

    def _health(self, now: float, ok: bool) -> None:
        """Raise FORWARD_FAILING once the sink has failed for failing_after_s; RESTORED after."""
        if ok:
            self._fail_since = None
            if self.failing and self.backlog == 0:
                self.failing = False
                self.store.add_events([R.event_row(None, R.FORWARD_RESTORED, now, {})])
                log.warning("gateway: forwarding to %s restored", self.sink.describe())
            return
        if self._fail_since is None:
            self._fail_since = now
        if now - self._fail_since < self.failing_after_s:
            return
        if not self.failing or now - self._failing_event_at >= FAILING_REPEAT_S:
            self.failing = True
            self._failing_event_at = now
            self.stats["forward_failing"] += 1
            self.store.add_events(
                [
                    R.event_row(
                        None,
                        R.FORWARD_FAILING,
                        now,
                        {"sink": self.sink.describe(), "backlog": self.backlog},
                    )
                ]
            )
            log.error(
                "gateway: FORWARD_FAILING: %s has failed for %.0fs; %d record(s) waiting",
                self.sink.describe(),
                now - self._fail_since,
                self.backlog,
            )


def make_sink(spec: str | None, url: str | None) -> Sink | None:
    """CLI helper: --forward jsonl | webhook URL (None: no forwarding)."""
    if not spec:
        return None
    if spec == "jsonl":
        return JsonlSink()
    if spec == "webhook":
        if not url or not url.startswith(("http://", "https://")):
            raise UsageError("--forward webhook needs an http:// or https:// URL")
        return WebhookSink(url)
    raise UsageError(f"unknown forwarder {spec!r} (use jsonl or webhook URL)")


def describe(sink: Sink | None) -> str:
    return "none" if sink is None else sink.describe()


__all__ = [
    "ForwardWorker",
    "JsonlSink",
    "Sink",
    "SinkError",
    "SinkGone",
    "WebhookSink",
    "describe",
    "make_sink",
]
