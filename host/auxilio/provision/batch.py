"""`auxilio provision --batch FILE.csv`: a tray of boards, one CSV row each, in parallel, with a report.

CSV (UTF-8, a header row; a spreadsheet's "CSV UTF-8" export works):

    port,role,case,site,lat,lon,sector,board,wifi_ssid,apn
    5A3F0C1D2E01,bracelet,PR-2026-00123,,,,,,,iot.example
    /dev/ttyUSB1,button,,Plaza de la Constitución,19.4326,-99.1332,Centro,,c4-wifi,

``port`` is a port, an rfc2217:// URL or the board's USB serial number (ports
are matched by serial number, so a tray can be replugged in any order). Every
row is checked before any board is touched; a bad row is reported on its own
line and never started, the good ones run. Rows run in threads (the work waits
on serial links and the C4, not the CPU); the wearer's press (the live test) is
one row at a time, since staff handle one bracelet at a time. Each row is all
or nothing: provision.run rolls back a row that fails before its BOOT reached
the C4. The report (reports/provision-<UTC>-<pid>.csv and .json) mirrors the
flashing tray's.
"""

from __future__ import annotations

import csv
import io
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from auxilio.errors import AuxilioError, UsageError
from auxilio.i18n import _

log = logging.getLogger(__name__)

MAX_PARALLEL = 8  # boards provisioned at once (a USB hub, and the C4's patience)
COLUMNS = ("port", "role", "case", "site", "lat", "lon", "sector", "board", "wifi_ssid", "apn")
REPORT_COLUMNS = (
    "row",
    "port",
    "role",
    "device",
    "mac",
    "key_epoch",
    "assignment",
    "config_sha256",
    "boot_s",
    "test_ms",
    "label_png",
    "result",
    "seconds",
    "error",
)


@dataclass
class Row:
    """One CSV line: where the board is and what it becomes (`error` set: refused)."""

    n: int  # the line number in the file (the header is line 1)
    port: str
    role: str
    fields: dict[str, str] = field(default_factory=dict)
    error: str | None = None


@dataclass
class BatchResult:
    results: list[dict[str, Any]]
    csv: Path | None = None
    json: Path | None = None

    @property
    def ok(self) -> int:
        return sum(1 for r in self.results if r.get("result") == "ok")


def _request(row: Row, port: str, **base: Any) -> Any:
    """The provision Request for one row (base: the run's shared fields)."""
    from auxilio.provision.run import Request

    f = row.fields
    return Request(
        port=port,
        role=row.role,
        board=f.get("board"),
        case=f.get("case"),
        site=f.get("site"),
        lat=f.get("lat"),
        lon=f.get("lon"),
        sector=f.get("sector"),
        **base,
    )


def parse_batch(text: str, force: bool = False) -> list[Row]:
    """Every row, checked on its own (no board, no registry yet): bad ones carry `error`."""
    from auxilio.provision.run import check_request

    reader = csv.DictReader(io.StringIO(text))
    header = [h.strip().lower() for h in (reader.fieldnames or [])]
    missing = [c for c in ("port", "role") if c not in header]
    if missing:
        raise UsageError(f"the CSV needs the columns {', '.join(missing)} (header row first)")
    unknown = [h for h in header if h not in COLUMNS]
    if unknown:
        raise UsageError(f"unknown CSV columns {', '.join(unknown)} (known: {', '.join(COLUMNS)})")
    rows: list[Row] = []
    ports: dict[str, int] = {}
    cases: dict[str, int] = {}
    for i, raw in enumerate(reader, start=2):
        vals = {k.strip().lower(): (val or "").strip() for k, val in raw.items() if k}
        if not any(vals.values()):
            continue  # a blank line
        row = Row(i, vals.get("port", ""), vals.get("role", ""))
        row.fields = {k: val for k, val in vals.items() if val and k not in ("port", "role")}
        rows.append(row)
        try:
            if not row.port:
                raise UsageError("no port")
            if row.port in ports:
                raise UsageError(f"port {row.port} is already on row {ports[row.port]}")
            ports[row.port] = i
            probe = _request(row, row.port, broker_url="", registry=None, public_key=None)
            want, _board = check_request(probe, offline=True)
            if "case" in want:
                if want["case"] in cases and not force:
                    raise UsageError(
                        f"case {want['case']} is already on row {cases[want['case']]} "
                        "(--force to give it two bracelets)"
                    )
                cases[want["case"]] = i
        except AuxilioError as exc:
            row.error = str(exc)
    if not rows:
        raise UsageError("the CSV has no rows")
    return rows


def read_batch(path: str | Path, force: bool = False) -> list[Row]:
    """parse_batch of a file; an unreadable file is one UsageError."""
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise UsageError(f"{path} is not UTF-8 text (save it as 'CSV UTF-8')") from None
    return parse_batch(text, force)


def run_batch(
    rows: list[Row],
    base: dict[str, Any],
    say: Callable[[str], None],
    *,
    reports_dir: Path | None = None,
    parallel: int = MAX_PARALLEL,
) -> BatchResult:
    """Provision every good row (threads over ports), refuse the bad ones, write the report."""
    from auxilio.flash import report
    from auxilio.provision.config import network
    from auxilio.provision.run import Request, provision, resolve_port

    started = time.time()
    out: dict[int, dict[str, Any]] = {}
    # One wearer's press at a time; the gateway checked once: the station has one broker
    # login, and the broker lets a login hold one session (use_username_as_clientid).
    base = {**base, "press_lock": threading.Lock(), "gateway_checked": True}
    if base.get("broker_credentials") is not None and any(r.error is None for r in rows):
        from auxilio.provision.run import gateway_answers

        gateway_answers(Request(port="", role="bracelet", **base))
    lock = threading.Lock()

    def line(text: str) -> None:
        with lock:
            say(text)

    def work(row: Row) -> None:
        t0 = time.monotonic()
        rec: dict[str, Any] = {"row": row.n, "port": row.port, "role": row.role}
        try:
            net = base.get("net")
            if row.fields.get("wifi_ssid") or row.fields.get("apn"):
                net = {
                    **(net or {}),
                    **network(wifi_ssid=row.fields.get("wifi_ssid"), apn=row.fields.get("apn")),
                }
            req = _request(row, resolve_port(row.port), **{**base, "net": net})

            def progress(text: str) -> None:
                line(_("fila {n} ({port}): {line}").format(n=row.n, port=row.port, line=text))

            res = provision(req, progress)
            rec.update({k: v for k, v in res.as_dict().items() if k in REPORT_COLUMNS})
            rec.update(result="ok", port=row.port)
            what = res.assignment or ""
            line(
                _("fila {n} ({port}): LISTO {device} {what} en {s:.1f} s").format(
                    n=row.n, port=row.port, device=res.device, what=what, s=time.monotonic() - t0
                )
            )
        except AuxilioError as exc:
            rec.update(result="failed", error=str(exc))
            line(_("fila {n} ({port}): FALLÓ: {error}").format(n=row.n, port=row.port, error=exc))
        except Exception as exc:  # a bug: this row fails, the tray goes on
            log.exception("provision: row %d crashed", row.n)
            rec.update(result="failed", error=f"internal error: {type(exc).__name__}")
        rec["seconds"] = round(time.monotonic() - t0, 2)
        with lock:
            out[row.n] = rec

    good = []
    for row in rows:
        if row.error is not None:
            out[row.n] = {
                "row": row.n,
                "port": row.port,
                "role": row.role,
                "result": "refused",
                "error": row.error,
            }
            line(_("fila {n}: RECHAZADA: {error}").format(n=row.n, error=row.error))
        else:
            good.append(row)
    if good:
        with ThreadPoolExecutor(max_workers=max(1, min(parallel, len(good)))) as pool:
            list(pool.map(work, good))
    results = [out[r.n] for r in rows]
    meta = {"started": started, "finished": time.time(), "rows": len(rows)}
    csv_path, json_path = report.write("provision", results, REPORT_COLUMNS, meta, reports_dir)
    return BatchResult(results, csv_path, json_path)
