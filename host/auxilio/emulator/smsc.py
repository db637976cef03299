"""The emulated operator SMSC: takes MO SMS from emulated modems, delivers them to the C4 inbox.

The C4 inbox interface (what the gateway's SMS ingest reads) is deliberately
small, so the same ingest code can read this emulator, an aggregator webhook
or a gammu-smsd spool:

* in process: ``Smsc.subscribe(callback)`` (callback(Sms) on the SMSC thread,
  must not block) or ``Smsc.inbox()`` / ``Smsc.wait(...)``;
* on disk: with ``inbox_dir`` every delivered SMS is also written the way
  gammu-smsd's "files" backend writes its inbox (``IN<YYYYMMDD>_<HHMMSS>_<serial>
  _<sender>_00.txt``, the body as UTF-8 text), atomically (temp file + rename),
  so a gammu-smsd ingest source can read emulated SMS unchanged.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

log = logging.getLogger(__name__)

# Delivered SMS kept in memory (oldest dropped first; the disk inbox keeps all).
KEEP = 10_000


@dataclass(frozen=True)
class Sms:
    """One mobile-originated SMS as the C4 receives it."""

    sender: str  # the device SIM's MSISDN (E.164)
    to: str  # the number it was sent to (the C4's)
    text: str
    ref: int  # the SMSC's message reference (what +CMGS returned to the modem)
    submitted_at: float  # unix time the modem submitted it
    delivered_at: float  # unix time it reached the inbox


class Smsc:
    """Store and forward with a fixed delivery delay; one thread, started on first use."""

    def __init__(self, deliver_s: float = 3.0, inbox_dir: str | os.PathLike[str] | None = None):
        self.deliver_s = deliver_s
        self.inbox_dir = Path(inbox_dir) if inbox_dir else None
        if self.inbox_dir is not None:
            self.inbox_dir.mkdir(parents=True, exist_ok=True)
        self._refs = itertools.count(1)
        self._due: list[tuple[float, int, Sms]] = []
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._inbox: list[Sms] = []
        self._subs: list[Callable[[Sms], None]] = []
        self._serial = itertools.count()
        self._thread: threading.Thread | None = None
        self._closed = False
        self.submitted = 0

    def submit(self, sender: str, to: str, text: str, deliver_s: float | None = None) -> int:
        """Accept one SMS; returns the message reference (0..255, as in +CMGS: <mr>)."""
        ref = next(self._refs) % 256
        now = time.time()
        sms = Sms(sender, to, text, ref, now, 0.0)
        delay = self.deliver_s if deliver_s is None else deliver_s
        with self._cond:
            self.submitted += 1
            heapq.heappush(self._due, (time.monotonic() + delay, next(self._seq), sms))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="vb-smsc", daemon=True)
                self._thread.start()
            self._cond.notify_all()
        return ref

    def subscribe(self, callback: Callable[[Sms], None]) -> None:
        with self._cond:
            self._subs.append(callback)

    def inbox(self) -> list[Sms]:
        with self._cond:
            return list(self._inbox)

    def wait(self, timeout: float = 30.0, count: int = 1, **match: str) -> list[Sms]:
        """Wait until `count` delivered SMS match the fields given (sender=..., to=...)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                got = [s for s in self._inbox if all(getattr(s, k) == v for k, v in match.items())]
                if len(got) >= count:
                    return got
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{count} SMS matching {match} not delivered")
                self._cond.wait(min(left, 0.2))

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(2)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._closed and (not self._due or self._due[0][0] > time.monotonic()):
                    wait = self._due[0][0] - time.monotonic() if self._due else 1.0
                    self._cond.wait(max(0.0, min(wait, 1.0)))
                if self._closed:
                    return
                _, _, sms = heapq.heappop(self._due)
                sms = Sms(sms.sender, sms.to, sms.text, sms.ref, sms.submitted_at, time.time())
                self._inbox.append(sms)
                if len(self._inbox) > KEEP:
                    del self._inbox[: len(self._inbox) - KEEP]
                subs = list(self._subs)
                self._cond.notify_all()
            self._write(sms)
            for cb in subs:
                try:
                    cb(sms)
                except Exception:  # a consumer bug must not stop deliveries
                    log.exception("SMS inbox subscriber failed")

    def _write(self, sms: Sms) -> None:
        if self.inbox_dir is None:
            return
        t = datetime.fromtimestamp(sms.delivered_at, timezone.utc)
        name = (
            f"IN{t:%Y%m%d}_{t:%H%M%S}_{next(self._serial) % 100:02d}_"
            f"{sms.sender.replace('/', '_')}_00.txt"
        )
        tmp = self.inbox_dir / f".{name}.tmp"
        tmp.write_text(sms.text, encoding="utf-8")
        os.replace(tmp, self.inbox_dir / name)
