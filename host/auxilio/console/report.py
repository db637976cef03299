"""`auxilio report`: the programme office's figures, read from the registry read-only.

Definitions (also in the README and the JSON's `definitions`):
- An alert is an ALERT row that is not a drill (test flag) and was not rejected
  (a revoked or retired device); drills and rejected rows are counted apart.
- The period selects alerts by their receipt, in local time, whole days:
  --from 00:00 to the end of --to. Each alert falls in the month of its press
  (the device clock at the press), or of its receipt when the press is unknown.
- The outcome of an alert is its latest revision in `outcomes`; "open" has none.
  An effective report is an alert closed `resolved`.
- Time to attend: from the press (else the receipt) to the gateway's attend
  (`attending_at`, set only once the signed ACK went out), never negative;
  p50/p90 by the nearest-rank method; "within goal" is the share attended in
  ANSWER_GOAL_S seconds (NENA: 90% within 10 s).
- Rates are over the period's alerts: false alarms / alerts, cancels (the
  wearer's CANCEL) / alerts.
- Silent devices: assigned devices not heard from (no accepted frame) for more
  than --silent-days, or never.
- Missed self-tests: devices in service whose latest self-test request went
  unanswered (a SELFTEST_MISSED event newer than their latest stored TEST).
- Low battery: devices in service whose latest battery reading is below
  --low-battery percent: the newer of the latest stored ALERT, TEST, POWER or
  LOW_BATTERY frame and the latest accepted HEARTBEAT (registry v8
  devices.health), so a bracelet recharged since its low-battery alert drops
  off the list at its next heartbeat.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import math
from typing import Any

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text
from sqlalchemy import and_, func, select

from auxilio import timefmt
from auxilio.console import queries
from auxilio.console.view import ANSWER_GOAL_S, origin
from auxilio.errors import UsageError
from auxilio.i18n import N_, _
from auxilio.protocol import codec
from auxilio.registry.schema import OUTCOMES
from auxilio.words import word

# Defaults of the command's options.
DEFAULT_SILENT_DAYS = 7
DEFAULT_LOW_BATTERY = 20  # percent; the boards' LOW_BATTERY threshold is of this order
# Frame types whose payload carries a battery reading the gateway stores.
BATTERY_TYPES = ("ALERT", "TEST", "POWER", "LOW_BATTERY")
# Alert ids per query when reading outcomes (bounded IN lists).
_CHUNK = 500

MONTH_FIELDS = (
    "month",
    "alerts",
    *OUTCOMES,
    "open",
    "effective",
    "cancelled",
    "attended",
    "closed_unattended",
    "attend_p50_s",
    "attend_p90_s",
    "attend_within_goal",
    "false_alarm_rate",
    "cancel_rate",
)


def parse_day(value: str | None, end: bool = False) -> dt.date | None:
    """'2026-03-15' -> that day; '2026-03' -> the 1st (or, for --to, the last day of the month)."""
    if value is None:
        return None
    v = value.strip()
    try:
        if len(v) == 7:
            first = dt.date.fromisoformat(v + "-01")
            if not end:
                return first
            return _add_months(first, 1) - dt.timedelta(days=1)
        return dt.date.fromisoformat(v)
    except ValueError:
        raise UsageError(f"bad date {value!r} (expected YYYY-MM-DD or YYYY-MM)") from None


def _add_months(d: dt.date, n: int) -> dt.date:
    y, m = divmod(d.month - 1 + n, 12)
    return dt.date(d.year + y, m + 1, 1)


def _local_midnight(d: dt.date) -> dt.datetime:
    return dt.datetime(d.year, d.month, d.day).astimezone()


def percentile(values: list[float], p: float) -> float | None:
    """Nearest-rank percentile (the smallest value with at least p% of values at or below it)."""
    if not values:
        return None
    s = sorted(values)
    return s[max(0, math.ceil(p / 100 * len(s)) - 1)]


def _rate(n: int, d: int) -> float | None:
    return None if d == 0 else round(n / d, 4)


def _stats(month: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    times = [r["attend_s"] for r in rows if r["attend_s"] is not None]
    out: dict[str, Any] = {"month": month, "alerts": len(rows)}
    for o in OUTCOMES:
        out[o] = sum(1 for r in rows if r["outcome"] == o)
    out["open"] = sum(1 for r in rows if r["outcome"] is None)
    out["effective"] = out["resolved"]
    out["cancelled"] = sum(1 for r in rows if r["cancelled"])
    out["attended"] = len(times)
    out["closed_unattended"] = sum(
        1 for r in rows if r["outcome"] is not None and not r["closed_attended"]
    )
    p50, p90 = percentile(times, 50), percentile(times, 90)
    out["attend_p50_s"] = None if p50 is None else round(p50, 1)
    out["attend_p90_s"] = None if p90 is None else round(p90, 1)
    out["attend_within_goal"] = _rate(sum(1 for t in times if t <= ANSWER_GOAL_S), len(times))
    out["false_alarm_rate"] = _rate(out["false_alarm"], len(rows))
    out["cancel_rate"] = _rate(out["cancelled"], len(rows))
    return out


def _alert_rows(conn: Any, t: Any, start: dt.datetime, end: dt.datetime) -> list[dict[str, Any]]:
    a, o = t.alerts, t.outcomes
    latest = (
        select(o.c.alert_id, func.max(o.c.revision).label("rev")).group_by(o.c.alert_id).subquery()
    )
    cur = o.alias("cur")
    q = (
        select(
            a.c.id,
            a.c.received_at,
            a.c.pressed_at,
            a.c.attending_at,
            a.c.cancelled_at,
            a.c.test,
            a.c.disposition,
            cur.c.outcome,
            cur.c.attended,
        )
        .outerjoin(latest, latest.c.alert_id == a.c.id)
        .outerjoin(cur, and_(cur.c.alert_id == a.c.id, cur.c.revision == latest.c.rev))
        .where(a.c.type == "ALERT", a.c.received_at >= start, a.c.received_at < end)
        .order_by(a.c.id)
    )
    return [dict(r) for r in conn.execute(q).mappings()]


def _low_battery(conn: Any, t: Any, threshold: int) -> list[dict[str, Any]]:
    a, d = t.alerts, t.devices
    newest = (
        select(func.max(a.c.id).label("mid"))
        .where(a.c.type.in_(BATTERY_TYPES))
        .group_by(a.c.device_id)
        .subquery()
    )
    rows = conn.execute(
        select(a.c.device_id, a.c.payload, a.c.received_at, a.c.type, d.c.kind, d.c.state)
        .join(newest, a.c.id == newest.c.mid)
        .join(d, d.c.id == a.c.device_id)
        .where(d.c.state.not_in(("revoked", "retired")))
        .order_by(a.c.device_id)
    ).mappings()
    latest: dict[int, dict[str, Any]] = {}
    for r in rows:
        battery = (r["payload"] or {}).get("battery")
        if battery is not None:
            latest[r["device_id"]] = {**dict(r), "battery": battery}
    beats = conn.execute(
        select(d.c.id, d.c.kind, d.c.state, d.c.health).where(
            d.c.health.is_not(None), d.c.state.not_in(("revoked", "retired"))
        )
    ).mappings()
    for r in beats:
        h = r["health"] or {}
        if h.get("battery") is None or not h.get("at"):
            continue
        at = dt.datetime.fromisoformat(h["at"])
        frame = latest.get(r["id"])
        if frame is None or frame["received_at"] <= at:
            latest[r["id"]] = {
                "device_id": r["id"],
                "kind": r["kind"],
                "state": r["state"],
                "received_at": at,
                "type": "HEARTBEAT",
                "battery": h["battery"],
            }
    return [latest[k] for k in sorted(latest) if latest[k]["battery"] < threshold]


def _selftest_missed(conn: Any, t: Any) -> list[dict[str, Any]]:
    a, d, e = t.alerts, t.devices, t.events
    missed = {
        r[0]: r[1]
        for r in conn.execute(
            select(e.c.device_id, func.max(e.c.at))
            .where(e.c.type == "SELFTEST_MISSED")
            .group_by(e.c.device_id)
        )
    }
    if not missed:
        return []
    tested = {
        r[0]: r[1]
        for r in conn.execute(
            select(a.c.device_id, func.max(a.c.received_at))
            .where(a.c.type == "TEST", a.c.device_id.in_(list(missed)))
            .group_by(a.c.device_id)
        )
    }
    rows = conn.execute(
        select(d.c.id, d.c.kind)
        .where(d.c.id.in_(list(missed)), d.c.state.not_in(("revoked", "retired")))
        .order_by(d.c.id)
    ).mappings()
    out = []
    for r in rows:
        last = tested.get(r["id"])
        if last is None or missed[r["id"]] > last:
            out.append({**dict(r), "missed_at": missed[r["id"]], "last_test": last})
    return out


def build(
    registry: Any,
    start: dt.date | None = None,
    end: dt.date | None = None,
    silent_days: int = DEFAULT_SILENT_DAYS,
    low_battery: int = DEFAULT_LOW_BATTERY,
    now: dt.datetime | None = None,
) -> dict[str, Any]:
    """The report as plain data (JSON-safe). Default period: the last 12 calendar months."""
    now = now or dt.datetime.now(dt.timezone.utc)
    today = now.astimezone().date()
    end = end or today
    start = start or _add_months(today.replace(day=1), -11)
    if start > end:
        raise UsageError("--from is after --to")
    if silent_days < 1:
        raise UsageError("--silent-days must be at least 1")
    if not 1 <= low_battery <= 100:
        raise UsageError("--low-battery must be between 1 and 100 (percent)")
    t0, t1 = _local_midnight(start), _local_midnight(end + dt.timedelta(days=1))
    t = registry.tables
    with registry.reader.connect() as conn, conn.begin():
        alerts = _alert_rows(conn, t, t0, t1)
        d = t.devices
        devices = [
            dict(r)
            for r in conn.execute(
                select(d.c.id, d.c.kind, d.c.state, d.c.last_seen).order_by(d.c.id)
            ).mappings()
        ]
        asg = queries.assignments_of(conn, t, {r["id"] for r in devices})
        low = _low_battery(conn, t, low_battery)
        missed = _selftest_missed(conn, t)
    by_month: dict[str, list[dict[str, Any]]] = {}
    month = start.replace(day=1)
    while month <= end:
        by_month[month.strftime("%Y-%m")] = []
        month = _add_months(month, 1)
    drills = rejected = 0
    for r in alerts:
        if r["test"]:
            drills += 1
            continue
        if r["disposition"] == "rejected":
            rejected += 1
            continue
        began = r["pressed_at"] or r["received_at"]
        key = began.astimezone().strftime("%Y-%m")
        spent = None
        if r["attending_at"] is not None:
            spent = max(0.0, (r["attending_at"] - began).total_seconds())
        by_month.setdefault(key, []).append(
            {
                "outcome": r["outcome"],
                "closed_attended": bool(r["attended"]),
                "cancelled": r["cancelled_at"] is not None,
                "attend_s": spent,
            }
        )
    months = [_stats(k, v) for k, v in sorted(by_month.items())]
    total = _stats("total", [x for v in by_month.values() for x in v])
    cutoff = now - dt.timedelta(days=silent_days)

    def where(dev: int) -> str:
        a = queries.assignment_at(asg.get(dev, []), now)
        return origin({"case_ref": a.get("case_ref"), "site": a.get("site")}) if a else ""

    silent = [
        {
            "device": codec.device_str(r["id"]),
            "kind": r["kind"],
            "where": where(r["id"]),
            "last_seen": timefmt.iso(r["last_seen"]),
            "silent_days": None
            if r["last_seen"] is None
            else round((now - r["last_seen"]).total_seconds() / 86400, 1),
        }
        for r in devices
        if r["state"] == "assigned" and (r["last_seen"] is None or r["last_seen"] < cutoff)
    ]
    return {
        "from": start.isoformat(),
        "to": end.isoformat(),
        "generated_at": timefmt.iso(now),
        "utc_offset": timefmt.offset_label(),
        "months": months,
        "total": total,
        "drills": drills,
        "rejected": rejected,
        "silent_days": silent_days,
        "silent_devices": silent,
        "selftest_missed": [
            {
                "device": codec.device_str(r["id"]),
                "kind": r["kind"],
                "where": where(r["id"]),
                "missed_at": timefmt.iso(r["missed_at"]),
                "last_test": timefmt.iso(r["last_test"]) if r["last_test"] else None,
            }
            for r in missed
        ],
        "low_battery_below": low_battery,
        "low_battery": [
            {
                "device": codec.device_str(r["device_id"]),
                "kind": r["kind"],
                "where": where(r["device_id"]),
                "battery": r["battery"],
                "read_at": timefmt.iso(r["received_at"]),
                "frame": r["type"],
            }
            for r in low
        ],
        "definitions": {
            "period": "alerts received in [from 00:00, to+1 00:00) local time; month of the press",
            "percentiles": "nearest rank",
            "attend_goal_s": ANSWER_GOAL_S,
            "rates": "over alerts (drills and rejected excluded)",
        },
    }


def to_csv(rep: dict[str, Any]) -> str:
    """The monthly table and its total row (rates as fractions, times in seconds)."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=MONTH_FIELDS, lineterminator="\n")
    w.writeheader()
    for row in [*rep["months"], rep["total"]]:
        w.writerow({k: "" if row[k] is None else row[k] for k in MONTH_FIELDS})
    return buf.getvalue()


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{x * 100:.1f}"


def _secs(x: float | None) -> str:
    return "—" if x is None else f"{x:.1f}"


def render(rep: dict[str, Any]) -> Group:
    """The report for people (Spanish first)."""
    head = _("Informe del programa {a} – {b} (hora local {o})").format(
        a=rep["from"], b=rep["to"], o=rep["utc_offset"]
    )
    rows = [*rep["months"], rep["total"]]

    def month_table(title: str | None, headers: tuple[str, ...], cells: Any) -> Table:
        t = Table(title=title, title_justify="left")
        t.add_column(_("Mes"))
        for h in headers:
            t.add_column(_(h), justify="right")
        for row in rows:
            t.add_row(
                _("total") if row["month"] == "total" else row["month"],
                *cells(row),
                style="bold" if row["month"] == "total" else "",
            )
        return t

    outcomes = month_table(
        head,
        (
            N_("Alertas"),
            N_("Resueltas"),
            N_("Falsas"),
            N_("Sin contacto"),
            N_("Prueba"),
            N_("Abiertas"),
            N_("Cancel."),
        ),
        lambda r: [
            str(r[k])
            for k in (
                "alerts",
                "resolved",
                "false_alarm",
                "no_contact",
                "test",
                "open",
                "cancelled",
            )
        ],
    )
    goal = _("≤{s} s").format(s=ANSWER_GOAL_S)
    times = month_table(
        None,
        (N_("Atendidas"), N_("p50"), N_("p90"), goal, N_("% falsas"), N_("% cancel.")),
        lambda r: [
            str(r["attended"]),
            _secs(r["attend_p50_s"]),
            _secs(r["attend_p90_s"]),
            _pct(r["attend_within_goal"]),
            _pct(r["false_alarm_rate"]),
            _pct(r["cancel_rate"]),
        ],
    )
    tot = rep["total"]
    parts: list[Any] = [
        outcomes,
        times,
        Text(_("Reportes efectivos (resueltas): {n}").format(n=tot["effective"]), style="bold"),
        Text(
            _(
                "Simulacros (marca de prueba): {t} · rechazadas: {r} · cerradas sin atender: {u}"
            ).format(t=rep["drills"], r=rep["rejected"], u=tot["closed_unattended"])
        ),
    ]

    def devices(title: str, last: tuple[str, str], rows: list[dict[str, Any]], cells: Any) -> Any:
        """A device list (device, kind, case or site, then two columns of its own), or 'none'."""
        if not rows:
            return Text(title + ": " + _("ninguno"))
        t = Table(title=title, title_justify="left")
        for h in ("Dispositivo", "Tipo", N_("Caso / sitio"), *last):
            t.add_column(_(h))
        for r in rows:
            t.add_row(r["device"], word(r["kind"]), r["where"], *cells(r))
        return t

    def seen(r: dict[str, Any]) -> list[str]:
        at = r["last_seen"]
        days = r["silent_days"]
        return [
            timefmt.stamp(dt.datetime.fromisoformat(at)) if at else _("nunca"),
            "—" if days is None else f"{days:.1f}",
        ]

    parts.append(
        devices(
            _("Dispositivos asignados sin señal más de {d} días").format(d=rep["silent_days"]),
            (N_("Última señal"), N_("Días")),
            rep["silent_devices"],
            seen,
        )
    )
    parts.append(
        devices(
            _("Autopruebas sin respuesta"),
            (N_("Sin respuesta"), N_("Última prueba")),
            rep["selftest_missed"],
            lambda r: [
                timefmt.stamp(dt.datetime.fromisoformat(r["missed_at"])),
                timefmt.stamp(dt.datetime.fromisoformat(r["last_test"]))
                if r["last_test"]
                else _("nunca"),
            ],
        )
    )
    parts.append(
        devices(
            _("Batería baja (menos de {b} %)").format(b=rep["low_battery_below"]),
            (N_("Batería"), N_("Leída")),
            rep["low_battery"],
            lambda r: [
                f"{r['battery']} %",
                timefmt.stamp(dt.datetime.fromisoformat(r["read_at"])),
            ],
        )
    )
    return Group(*parts)


def print_report(rep: dict[str, Any], console: Console | None = None) -> None:
    (console or Console()).print(render(rep))
