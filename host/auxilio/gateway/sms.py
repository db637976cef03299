"""C4 SMS ingest: frames that came as SMS bodies (SPEC §10.4), from pluggable sources.

When a bracelet's data bearer fails it also sends its alert as one SMS: the
same signed frame, in base64, to the C4's number. A source hands each SMS
to the gateway (`deliver`), which decodes the body strictly, checks that the
sender's number is the SIM registered for the device the frame names, and
then verifies the frame exactly like an MQTT uplink (same pipeline, same
replay window, so an alert that arrives by both paths is stored once; the
alert records the path that delivered it first). Once the gateway has
committed (or refused) an SMS it tells the source (`done`), so a spool file
is removed or an HTTP request answered only then: a crash in between means
the SMS is handed over again, never lost.

There is no downlink over SMS: the ACK is published on the device's MQTT
topic as for any frame, and its persistent session delivers it when data
returns; until then the device shows its "sent by SMS" pattern.

Sources, one small interface (start(deliver), done(sms, ok), close()):
  SmscSource     the emulator's operator SMSC (auxilio.emulator.smsc), in process
  GammuInbox     a gammu-smsd "files" inbox directory (a USB modem at the C4)
  HttpSmsSource  an HTTP endpoint for an SMS aggregator's inbound webhook
"""

from __future__ import annotations

import hmac
import http.server
import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qs

from auxilio.errors import UsageError

log = logging.getLogger("auxilio.gateway")

# A body longer than one SMS (160 GSM-7 characters; the largest frame is 68) is
# not a frame: refused before decoding.
MAX_BODY = 160
# How often the gammu inbox is scanned.
GAMMU_POLL_S = 0.5
# How long an HTTP request waits for the gateway to commit its SMS.
HTTP_WAIT_S = 10.0
# gammu-smsd files backend inbox names: IN<YYYYMMDD>_<HHMMSS>_<serial>_<sender>_<part>.txt
_GAMMU_NAME = re.compile(r"^IN(\d{8})_(\d{6})_(\d+)_(.+)_(\d+)\.txt$")


@dataclass
class InboundSms:
    """One mobile-originated SMS as the C4 received it."""

    sender: str
    text: str
    received_at: float
    source: str  # which source delivered it
    handle: Any = None  # the source's own reference (a file path, a pending request)
    outcome: str = ""  # set by the gateway: "" until handled, else a stats reason


Deliver = Callable[[InboundSms], None]


class SmsSource(Protocol):
    name: str

    def start(self, deliver: Deliver) -> None: ...

    def done(self, sms: InboundSms, ok: bool) -> None: ...

    def close(self) -> None: ...


class SmscSource:
    """The emulator's SMSC (auxilio.emulator.smsc.Smsc): every SMS it delivers, in process."""

    name = "smsc"

    def __init__(self, smsc: Any, c4_number: str | None = None) -> None:
        self.smsc = smsc
        self.c4_number = c4_number

    def start(self, deliver: Deliver) -> None:
        def on_sms(sms: Any) -> None:
            if self.c4_number is None or sms.to == self.c4_number:
                deliver(InboundSms(sms.sender, sms.text, time.time(), self.name))

        self.smsc.subscribe(on_sms)

    def done(self, sms: InboundSms, ok: bool) -> None:
        pass  # in memory: nothing to remove

    def close(self) -> None:
        pass


class GammuInbox:
    """A gammu-smsd "files" backend inbox: one file per SMS; removed once handled.

    Files the gateway could not use are moved to `<inbox>/refused/` (kept for an
    operator, never handed over again).
    """

    name = "gammu"

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.dir = Path(directory)
        if not self.dir.is_dir():
            raise UsageError(f"SMS inbox {self.dir} is not a directory")
        self._stop = threading.Event()
        self._seen: set[str] = set()
        self._thread: threading.Thread | None = None

    def start(self, deliver: Deliver) -> None:
        def run() -> None:
            while not self._stop.is_set():
                try:
                    self._scan(deliver)
                except OSError as exc:
                    log.warning("gateway: SMS inbox %s unreadable (%s)", self.dir, exc.strerror)
                self._stop.wait(GAMMU_POLL_S)

        self._thread = threading.Thread(target=run, name="sms-gammu", daemon=True)
        self._thread.start()

    def _scan(self, deliver: Deliver) -> None:
        for path in sorted(self.dir.glob("IN*.txt")):
            if path.name in self._seen:
                continue
            m = _GAMMU_NAME.match(path.name)
            self._seen.add(path.name)
            try:
                text = path.read_bytes()[: MAX_BODY * 4].decode("utf-8", "replace")
            except OSError:
                self._seen.discard(path.name)  # gone or not ready: try again
                continue
            sender = m.group(4) if m else ""
            deliver(InboundSms(sender, text, time.time(), self.name, path))

    def done(self, sms: InboundSms, ok: bool) -> None:
        path: Path = sms.handle
        try:
            if ok:
                path.unlink(missing_ok=True)
            else:
                refused = self.dir / "refused"
                refused.mkdir(exist_ok=True)
                os.replace(path, refused / path.name)
        except OSError as exc:
            log.warning("gateway: could not clear %s (%s)", path.name, exc.strerror)
        self._seen.discard(path.name)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)


@dataclass
class _Pending:
    done: threading.Event = field(default_factory=threading.Event)
    ok: bool = False


class HttpSmsSource:
    """An inbound-SMS webhook for an aggregator: POST {"from", "text"} (JSON or a form).

    Authenticated by a shared token (header `Authorization: Bearer <token>`):
    the endpoint accepts frames for the C4, so it is not open. Loopback by
    default (a reverse proxy with TLS in front of it outside the lab). It
    answers 200 only once the gateway committed the SMS (or 422 when the
    gateway refused it: retrying cannot help), so an aggregator that got no
    answer retries and nothing is lost.
    """

    name = "http"

    def __init__(self, address: str, token: str) -> None:
        host, _sep, port = address.rpartition(":")
        try:
            self.port = int(port)
        except ValueError:
            raise UsageError(f"bad --sms-http address {address!r} (expected host:port)") from None
        self.host = host or "127.0.0.1"
        if len(token) < 16:
            raise UsageError("the SMS webhook token must be at least 16 characters")
        self.token = token
        self._server: http.server.ThreadingHTTPServer | None = None

    def start(self, deliver: Deliver) -> None:
        source = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server API
                auth = self.headers.get("Authorization", "")
                if not hmac.compare_digest(auth.encode(), f"Bearer {source.token}".encode()):
                    self._answer(401, "unauthorized")
                    return
                try:
                    size = int(self.headers.get("Content-Length") or 0)
                except ValueError:
                    size = -1
                if size < 0:
                    self._answer(400, "bad Content-Length")
                    return
                if size > 4096:
                    self._answer(413, "too large")
                    return
                raw = self.rfile.read(size)
                sender, text = _parse_webhook(raw, self.headers.get("Content-Type", ""))
                if text is None:
                    self._answer(400, "expected from and text")
                    return
                pending = _Pending()
                deliver(InboundSms(sender or "", text, time.time(), source.name, pending))
                if not pending.done.wait(HTTP_WAIT_S):
                    self._answer(503, "not committed yet; retry")
                    return
                self._answer(200 if pending.ok else 422, "ok" if pending.ok else "refused")

            def _answer(self, status: int, text: str) -> None:
                body = text.encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a: Any) -> None:
                pass

        try:
            self._server = http.server.ThreadingHTTPServer((self.host, self.port), Handler)
        except OSError as exc:
            raise UsageError(
                f"cannot serve SMS webhook on {self.host}:{self.port}: {exc.strerror}"
            ) from None
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True
        ).start()

    def done(self, sms: InboundSms, ok: bool) -> None:
        pending: _Pending = sms.handle
        pending.ok = ok
        pending.done.set()

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


def _parse_webhook(raw: bytes, ctype: str) -> tuple[str | None, str | None]:
    """(sender, text) from a JSON or form body, the field names aggregators use."""
    try:
        if "json" in ctype:
            obj = json.loads(raw)
            if not isinstance(obj, dict):
                return None, None
            get: Callable[[str], Any] = obj.get
        else:
            form = parse_qs(raw.decode("utf-8", "replace"))
            get = lambda k: (form.get(k) or [None])[0]  # noqa: E731
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None, None
    sender = get("from") or get("From") or get("msisdn") or get("sender")
    text = get("text") or get("Body") or get("body") or get("message")
    if not isinstance(text, str) or (sender is not None and not isinstance(sender, str)):
        return None, None
    return sender, text
