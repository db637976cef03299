"""Forwarding verified alerts and C4 events to dispatch: JSON lines on stdout, or a webhook with a durable queue.

Record schema (one JSON object, "auxilio.forward/1"; documented in the README):
  schema      "auxilio.forward/1"
  key         idempotency key, stable across redeliveries: "alert:<device>:<counter>",
              "event:<device>:<TYPE>:<counter>" for frame events, and
              "event:<device>:<TYPE>:<unix time>" for supervision events
  kind        "alert" (ALERT, CANCEL) | "event" (TAMPER, POWER, LOW_BATTERY, BOOT,
              SUPERVISION_LOST, SUPERVISION_RESTORED, REJECTED, LOST_DEVICE)
  type        frame type name or event type
  device      printed device id "XXXX-XXXX"
  counter     uplink counter (alerts / frame events), else null
  at          ISO-8601 UTC time the gateway stored it
  fields      decoded payload (ALERT: lat_e7, lon_e7, accuracy_m, fix_age_s, battery, rssi, bearer)
  lost        true when the device is marked lost (the C4 decides what to do)
  disposition for alerts, the disposition sent to the device ("received"); null for events
  detail      free text (empty today)
Only verified frames are ever forwarded; TEST frames and frames with the test
flag never are. Delivery is at-least-once: consumers dedup on "key".
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import IO, Any

log = logging.getLogger(__name__)

SCHEMA = "auxilio.forward/1"
# Webhook retry backoff: first retry after RETRY_MIN_S, doubling up to RETRY_MAX_S.
RETRY_MIN_S = 0.2
RETRY_MAX_S = 5.0
# One POST may take this long before it counts as failed.
POST_TIMEOUT_S = 5.0


class Forwarder:
    """Interface: enqueue() durably before the DB commit, release() after it."""

    def enqueue(self, records: list[dict[str, Any]]) -> None:
        raise NotImplementedError

    def release(self) -> None:
        """The records enqueued so far are committed in the registry: deliver them."""

    def close(self) -> None:
        pass


class NullForwarder(Forwarder):
    def enqueue(self, records: list[dict[str, Any]]) -> None:
        pass


class JsonlForwarder(Forwarder):
    """One JSON object per line on a stream (stdout by default), printed after commit."""

    def __init__(self, stream: IO[str] | None = None) -> None:
        self.stream = stream or sys.stdout
        self._pending: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def enqueue(self, records: list[dict[str, Any]]) -> None:
        with self._lock:
            self._pending.extend(records)

    def release(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, []
        if not pending:
            return
        text = "".join(json.dumps(r, sort_keys=True, separators=(",", ":")) + "\n" for r in pending)
        try:
            self.stream.write(text)
            self.stream.flush()
        except (BrokenPipeError, ValueError, OSError) as exc:
            log.warning("jsonl forward: stdout unavailable (%s)", type(exc).__name__)


class DurableQueue:
    """A directory of JSON files, one per record, fsynced; named so sorting gives FIFO order."""

    def __init__(self, directory: Path) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir, 0o700)  # records carry locations
        for tmp in self.dir.glob("*.tmp"):  # a crash mid-write: the record was never enqueued
            tmp.unlink(missing_ok=True)
        existing = sorted(self.dir.glob("*.json"))
        self._seq = int(existing[-1].name.split("-", 1)[0]) + 1 if existing else 0
        self._lock = threading.Lock()

    def put_many(self, records: list[dict[str, Any]]) -> list[Path]:
        paths = []
        with self._lock:
            for rec in records:
                name = f"{self._seq:016d}-{len(paths)}.json"
                self._seq += 1
                tmp = self.dir / (name + ".tmp")
                with open(tmp, "w") as f:
                    json.dump(rec, f, sort_keys=True)
                    f.flush()
                    os.fsync(f.fileno())
                final = self.dir / name
                os.replace(tmp, final)
                paths.append(final)
            if paths:
                fd = os.open(self.dir, os.O_RDONLY)
                try:
                    os.fsync(fd)  # the renames themselves are durable
                finally:
                    os.close(fd)
        return paths

    def items(self) -> list[Path]:
        return sorted(self.dir.glob("*.json"))

    def __len__(self) -> int:
        return len(self.items())


class WebhookForwarder(Forwarder):
    """POST each record as JSON with an Idempotency-Key header; retry forever with backoff.

    Records are written to the on-disk queue before the registry commit, and
    only become eligible for sending after it (release()). At start-up every
    file in the queue is eligible: it was verified, and the alert it describes
    is either committed or will be on redelivery, so at-least-once holds.
    """

    def __init__(self, url: str, queue_dir: Path) -> None:
        self.url = url
        self.queue = DurableQueue(queue_dir)
        self._held: set[Path] = set()
        self._cond = threading.Condition()
        self._stop = False
        self.sent = 0
        self.failures = 0
        self.rejected = 0
        self._thread = threading.Thread(target=self._run, name="webhook", daemon=True)
        self._thread.start()

    def enqueue(self, records: list[dict[str, Any]]) -> None:
        if not records:
            return
        paths = self.queue.put_many(records)
        with self._cond:
            self._held.update(paths)

    def release(self) -> None:
        with self._cond:
            self._held.clear()
            self._cond.notify()

    def close(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify()
        self._thread.join(timeout=POST_TIMEOUT_S + 1)

    def _post(self, path: Path) -> bool:
        try:
            body = path.read_bytes()
            rec = json.loads(body)
        except (OSError, ValueError):
            log.warning("webhook queue: unreadable record %s removed", path.name)
            path.unlink(missing_ok=True)
            return True
        req = urllib.request.Request(
            self.url,
            data=body,
            method="POST",
            headers={
                "Content-Type": "application/json",
                "Idempotency-Key": str(rec.get("key", "")),
            },
        )
        try:
            with urllib.request.urlopen(req, timeout=POST_TIMEOUT_S) as resp:
                ok = 200 <= resp.status < 300
        except urllib.error.HTTPError as exc:
            ok = False
            err = f"HTTP {exc.code}"
            if 400 <= exc.code < 500 and exc.code not in (408, 425, 429):
                # The receiver refuses this record for good: park it (still on
                # disk, for an operator) instead of blocking every later record.
                dead = self.queue.dir / "rejected"
                dead.mkdir(exist_ok=True)
                os.replace(path, dead / path.name)
                self.rejected += 1
                log.warning("webhook: record refused (%s), kept in %s", err, dead)
                return True
        except (urllib.error.URLError, OSError, ValueError) as exc:
            ok = False
            err = type(getattr(exc, "reason", exc)).__name__
        if ok:
            path.unlink(missing_ok=True)
            self.sent += 1
            return True
        self.failures += 1
        log.warning("webhook: delivery failed (%s); %d queued, retrying", err, len(self.queue))
        return False

    def _run(self) -> None:
        delay = RETRY_MIN_S
        while True:
            with self._cond:
                if self._stop:
                    return
                ready = [p for p in self.queue.items() if p not in self._held]
                if not ready:
                    self._cond.wait(timeout=1.0)
                    continue
            for path in ready:
                if self._stop:
                    return
                if not self._post(path):
                    with self._cond:
                        self._cond.wait(timeout=delay)
                    delay = min(delay * 2, RETRY_MAX_S)
                    break
                delay = RETRY_MIN_S

    def pending(self) -> int:
        return len(self.queue)


def make_forwarder(spec: str | None, url: str | None, queue_dir: Path | None) -> Forwarder:
    """CLI helper: --forward jsonl | webhook URL."""
    from auxilio.errors import UsageError

    if not spec:
        return NullForwarder()
    if spec == "jsonl":
        return JsonlForwarder()
    if spec == "webhook":
        if not url or not url.startswith(("http://", "https://")):
            raise UsageError("--forward webhook needs an http:// or https:// URL")
        try:
            return WebhookForwarder(url, queue_dir or Path("var/forward-queue"))
        except OSError as exc:
            raise UsageError(f"webhook queue directory unusable: {exc.strerror}") from None
    raise UsageError(f"unknown forwarder {spec!r} (use jsonl or webhook URL)")
