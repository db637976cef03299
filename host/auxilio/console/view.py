"""What the operator reads: registry rows -> alert context, words, elapsed time, map links, tables.

One home for the console's columns and words: the live console (app.py) and
`monitor --once` (rich tables) draw the same cells, and `--json` carries the
same facts as codes and ISO-8601 times with the offset. Times are local with
their offset (auxilio.timefmt). Spanish first (auxilio.i18n).

Locations are shown to the operator because dispatch needs them (to about a
metre, with the fix's accuracy and age, and a map link); they never go to logs.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from auxilio import timefmt
from auxilio.console import queries
from auxilio.console.outcomes import outcome_word
from auxilio.i18n import N_, _
from auxilio.protocol import codec
from auxilio.words import word

# NENA call answering standard: 90% of calls answered within 10 s. An
# unattended alert older than this is overdue and stands out.
ANSWER_GOAL_S = 10
# A press delivered this much later than it happened is shown with both times.
LATE_DELIVERY_S = 10
# From this many columns the alert table shows device, kind, accuracy, battery, bearer, press time.
WIDE_COLUMNS = 120
# Decimals of the coordinates shown (5: about 1 m) and in geo: URIs (7: the wire's 1e-7 degree).
COORD_DECIMALS = 5
GEO_DECIMALS = 7
# OpenStreetMap zoom of the map link (18: a street block).
MAP_ZOOM = 18


# Why the gateway refused an attend (gateway/attend.py reasons), in the operator's words.
ATTEND_REASON_ES = {
    "unknown_alert": N_("alerta desconocida"),
    "not_an_alert": N_("no es una alerta (evento)"),
    "test_alert": N_("alerta de prueba"),
    "alert_rejected": N_("la alerta fue rechazada"),
    "unknown_device": N_("dispositivo desconocido"),
    "device_revoked": N_("dispositivo revocado"),
    "device_retired": N_("dispositivo retirado"),
    "old_key_epoch": N_("el dispositivo cambió de clave"),
    "not_stored_by_gateway": N_("registro no creado por la pasarela"),
    "frame_does_not_verify": N_("la trama guardada no verifica"),
    "frame_does_not_match": N_("la trama guardada no coincide"),
    "gateway_error": N_("error en la pasarela"),
    "already_attended": N_("ya estaba atendida"),
}

# C4 event types -> the operator's words; the detail that matters is added by _event_text.
EVENT_ES = {
    "TAMPER": N_("manipulación"),
    "POWER": N_("alimentación"),
    "LOW_BATTERY": N_("batería baja"),
    "BOOT": N_("arranque"),
    "SUPERVISION_LOST": N_("supervisión perdida"),
    "SUPERVISION_RESTORED": N_("supervisión restablecida"),
    "FORWARD_FAILING": N_("reenvío fallando"),
    "FORWARD_RESTORED": N_("reenvío restablecido"),
    "COUNTER_COLLISION": N_("colisión de contador"),
    "COUNTER_JUMP": N_("salto de contador"),
    "REJECTED": N_("trama rechazada"),
    "LOST_DEVICE": N_("dispositivo perdido en uso"),
    "SELFTEST_REQUESTED": N_("autoprueba solicitada"),
    "SELFTEST_MISSED": N_("autoprueba sin respuesta"),
}
# Events that need an operator's eyes (shown in bold red); the rest are information.
EVENT_ALARMS = frozenset(
    {
        "TAMPER",
        "SUPERVISION_LOST",
        "FORWARD_FAILING",
        "COUNTER_COLLISION",
        "COUNTER_JUMP",
        "SELFTEST_MISSED",  # the device may not reach the C4 when it matters
    }
)
EVENT_WARNINGS = frozenset({"LOW_BATTERY", "POWER", "REJECTED", "LOST_DEVICE"})


def attend_reason(reason: str) -> str:
    return _(ATTEND_REASON_ES[reason]) if reason in ATTEND_REASON_ES else reason


def attend_message(alert_id: int, state: str, reason: str, operator: str) -> str:
    """One line for the operator: what became of an attend request."""
    if state == "sent":
        return _(
            "Alerta {id}: atención enviada; la usuaria recibe el aviso (operadora {op})"
        ).format(id=alert_id, op=operator)
    if state == "requested":
        return _("Alerta {id}: atención solicitada, sin respuesta de la pasarela todavía").format(
            id=alert_id
        )
    return _("Alerta {id}: atención fallida: {reason}").format(
        id=alert_id, reason=attend_reason(reason)
    )


def elapsed_text(seconds: float | None) -> str:
    """'0:42', '12:05', '1:02:05', '3 d 04 h' (the time since the press, at a glance)."""
    if seconds is None:
        return timefmt.NONE
    s = max(0, int(seconds))
    if s < 3600:
        return f"{s // 60}:{s % 60:02d}"
    if s < 86400:
        return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"
    return f"{s // 86400} d {s % 86400 // 3600:02d} h"


def coords(lat: float, lon: float, decimals: int = COORD_DECIMALS) -> str:
    return f"{lat:.{decimals}f},{lon:.{decimals}f}"


def map_links(lat: float, lon: float, accuracy_m: int | None = None) -> dict[str, str]:
    """A geo: URI (RFC 5870, with the uncertainty) and an OpenStreetMap link with a marker."""
    geo = "geo:" + coords(lat, lon, GEO_DECIMALS) + (f";u={accuracy_m}" if accuracy_m else "")
    la, lo = f"{lat:.{COORD_DECIMALS}f}", f"{lon:.{COORD_DECIMALS}f}"
    return {
        "geo": geo,
        "osm": f"https://www.openstreetmap.org/?mlat={la}&mlon={lo}&zoom={MAP_ZOOM}",
    }


def _assignment_fields(asg: dict[str, Any] | None) -> dict[str, Any]:
    if asg is None:
        return {"case_ref": None, "site": None, "sector": None, "site_lat": None, "site_lon": None}
    return {
        "case_ref": asg.get("case_ref"),
        "site": asg.get("site"),
        "sector": asg.get("sector"),
        "site_lat": asg.get("lat"),
        "site_lon": asg.get("lon"),
    }


def _state(r: dict[str, Any], outcome: Any) -> str:
    if outcome is not None:
        return "closed"
    if r["attending_at"] is not None:
        return "attending"
    if r["test"]:
        return "test"
    if r["disposition"] == "rejected":
        return "rejected"
    return "pending"


def alert_view(raw: queries.Raw, r: dict[str, Any]) -> dict[str, Any]:
    """One alert with its context, as plain data (JSON-safe except the `_row` entry)."""
    p = r["payload"] or {}
    pressed, got = r.get("pressed_at"), r["received_at"]
    start = pressed or got
    out = raw.outcomes.get(r["id"])
    req = raw.attends.get(r["id"])
    state = _state(r, out)
    elapsed = (raw.now - start).total_seconds() if start else None
    fix = None
    if p.get("lat_e7") is not None and p.get("lon_e7") is not None:
        fix = {
            "lat": p["lat_e7"] / 1e7,
            "lon": p["lon_e7"] / 1e7,
            "accuracy_m": p.get("accuracy_m"),
            "fix_age_s": p.get("fix_age_s"),
        }
    asg = _assignment_fields(queries.assignment_at(raw.assignments.get(r["device_id"], []), got))
    where = None
    if fix is not None:
        where = map_links(fix["lat"], fix["lon"], fix["accuracy_m"])
    elif asg["site_lat"] is not None and asg["site_lon"] is not None:
        where = map_links(asg["site_lat"], asg["site_lon"])
    location = ""
    if fix is not None:
        location = coords(fix["lat"], fix["lon"])
    elif asg["site_lat"] is not None:
        location = coords(asg["site_lat"], asg["site_lon"])
    return {
        "id": r["id"],
        "device": codec.device_str(r["device_id"]),
        "kind": r["kind"],
        "type": r["type"],
        "counter": r["counter"],
        "test": bool(r["test"]),
        "lost": bool(r["lost"]),
        "disposition": r["disposition"],
        "via": r.get("via"),
        "pressed_at": timefmt.iso(pressed),
        "received_at": timefmt.iso(got),
        "acked_at": timefmt.iso(r["acked_at"]),
        "attending_at": timefmt.iso(r["attending_at"]),
        "attending_by": r["attending_by"],
        "cancelled_at": timefmt.iso(r["cancelled_at"]),
        "since": "pressed" if pressed else "received",
        "elapsed_s": None if elapsed is None else round(elapsed, 1),
        "attend_s": None
        if r["attending_at"] is None or start is None
        else round(max(0.0, (r["attending_at"] - start).total_seconds()), 1),
        "state": state,
        "overdue": state == "pending" and elapsed is not None and elapsed >= ANSWER_GOAL_S,
        **asg,
        "fix": fix,
        "map": where,
        "location": location,
        "battery": p.get("battery"),
        "bearer": p.get("bearer"),
        "rssi": p.get("rssi"),
        "attend": None
        if req is None
        else {"state": req["state"], "reason": req["reason"], "operator": req["operator"]},
        "outcome": None if out is None else out.public(),
        "_row": r,
        "_outcome": out,
    }


def event_view(raw: queries.Raw, e: dict[str, Any]) -> dict[str, Any]:
    dev = e["device_id"]
    asg = queries.assignment_at(raw.assignments.get(dev, []), e["at"]) if dev is not None else None
    detail = {
        k: v for k, v in (e["detail"] or {}).items() if k not in ("lat_e7", "lon_e7", "fields")
    }
    return {
        "id": e["id"],
        "device": codec.device_str(dev) if dev is not None else None,
        "type": e["type"],
        "at": timefmt.iso(e["at"]),
        "detail": detail,
        **_assignment_fields(asg),
        "_row": e,
    }


def device_view(raw: queries.Raw, d: dict[str, Any]) -> dict[str, Any]:
    seen = d["last_seen"]
    supervised = seen is not None and d["state"] not in ("revoked", "retired")
    health = d.get("health") or {}
    return {
        "device": codec.device_str(d["id"]),
        "kind": d["kind"],
        "state": d["state"],
        "last_seen": timefmt.iso(seen),
        "silent_s": None if seen is None else round((raw.now - seen).total_seconds()),
        "supervision": None
        if not supervised
        else ("lost" if d["id"] in raw.supervision_lost else "ok"),
        "fw_version": d["fw_version"],
        # The latest accepted HEARTBEAT (registry v8 devices.health).
        "battery": health.get("battery"),
        "bearer": health.get("bearer"),
        "modem_fault": health.get("modem_fault"),
        **_assignment_fields(queries.assignment_at(raw.assignments.get(d["id"], []), raw.now)),
        "_row": d,
    }


def snapshot(
    registry: Any,
    limit: int = queries.DEFAULT_LIMIT,
    with_devices: bool = True,
    now: dt.datetime | None = None,
) -> dict[str, Any]:
    """One screen of plain data: the queue, recent alerts, events, devices, and the summary."""
    raw = queries.load(registry, limit, with_devices=with_devices, now=now)
    pending = [alert_view(raw, r) for r in raw.pending]
    recent = [alert_view(raw, r) for r in raw.recent]
    return {
        "now": timefmt.iso(raw.now),
        "pending_total": raw.pending_total,
        "overdue": sum(1 for a in pending if a["overdue"]),
        "supervision_lost": len(raw.supervision_lost),
        "forward_failing": raw.forward_failing,
        "alerts": pending + recent,
        "events": [event_view(raw, e) for e in raw.events],
        "devices": [device_view(raw, d) for d in raw.devices],
    }


def public(snap: dict[str, Any]) -> dict[str, Any]:
    """The snapshot without internal entries (for --json)."""

    def clean(x: Any) -> Any:
        if isinstance(x, list):
            return [clean(i) for i in x]
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items() if not k.startswith("_")}
        return x

    return clean(snap)


# ----------------------------------------------------------------- cells ---


def origin(a: dict[str, Any]) -> str:
    """Whose alert: the case reference of a bracelet, the site of a button."""
    if a.get("case_ref"):
        return a["case_ref"]
    if a.get("site"):
        return a["site"]
    return _("sin asignar")


def state_text(a: dict[str, Any]) -> str:
    """The alert's state in one short cell; a request in flight or refused shows in the queue."""
    st = a["state"]
    if st == "closed":
        text = _("cerrada: {o}").format(o=outcome_word(a["outcome"]["outcome"]))
    elif st == "attending":
        text = _("atendiendo") + (f" ({a['attending_by']})" if a["attending_by"] else "")
    elif st == "test":
        text = _("prueba")
    elif st == "rejected":
        text = _("rechazada")
    else:
        req = a["attend"]
        if req is not None and req["state"] == "requested":
            text = _("solicitada…")
        elif req is not None and req["state"] == "failed":
            text = _("fallida: {r}").format(r=attend_reason(req["reason"]))
        else:
            text = _("SIN ATENDER")
    if a["cancelled_at"] and st in ("pending", "attending"):
        text += " · " + _("cancelada")
    return text


def elapsed_cell(a: dict[str, Any]) -> str:
    text = elapsed_text(a["elapsed_s"])
    return ("! " + text) if a["overdue"] else text


def location_cell(a: dict[str, Any]) -> str:
    return a["location"] or _("sin ubicación")


def accuracy_cell(a: dict[str, Any]) -> str:
    f = a["fix"]
    if f is None:
        return _("sitio fijo") if a["location"] else ""
    acc = "?" if f["accuracy_m"] is None else str(f["accuracy_m"])
    age = "?" if f["fix_age_s"] is None else str(f["fix_age_s"])
    return f"±{acc} m · {age} s"


def received_cell(a: dict[str, Any]) -> str:
    """The press time; after a late delivery, both: "pulsada 19:00:05 · recibida 19:05:40"."""
    r = a["_row"]
    got, pressed = r["received_at"], r.get("pressed_at")
    if pressed is None:
        return timefmt.clock(got)
    if got is None or (got - pressed).total_seconds() < LATE_DELIVERY_S:
        return timefmt.clock(pressed)
    return _("pulsada {p} · recibida {r}").format(p=timefmt.clock(pressed), r=timefmt.clock(got))


@dataclass(frozen=True)
class Col:
    """One table column: its header (Spanish msgid), width, whether only wide screens show it."""

    header: str
    width: int
    cell: Callable[[dict[str, Any]], str]
    wide: bool = False


ALERT_COLUMNS = (
    Col("ID", 5, lambda a: str(a["id"])),
    Col(N_("Hace"), 9, elapsed_cell),
    Col("Dispositivo", 11, lambda a: a["device"], wide=True),
    Col("Tipo", 7, lambda a: word(a["kind"]), wide=True),
    Col(N_("Caso / sitio"), 16, origin),
    Col(N_("Sector"), 10, lambda a: a["sector"] or "", wide=True),
    Col(N_("Ubicación"), 19, location_cell),
    Col(N_("Precisión"), 13, accuracy_cell, wide=True),
    Col(N_("Bat."), 5, lambda a: "" if a["battery"] is None else f"{a['battery']}%", wide=True),
    Col(N_("Vía"), 5, lambda a: a["bearer"] or "", wide=True),
    Col(N_("Hora"), 10, received_cell, wide=True),
    Col(N_("Estado"), 18, state_text),
)


def _event_text(e: dict[str, Any]) -> str:
    t, d = e["type"], e["detail"]
    base = _(EVENT_ES[t]) if t in EVENT_ES else t
    if t == "TAMPER" and "open" in d:
        return f"{base}: " + (_("carcasa abierta") if d["open"] else _("carcasa cerrada"))
    if t == "POWER" and "mains" in d:
        return _("red eléctrica restablecida") if d["mains"] else _("sin red eléctrica")
    if t == "LOW_BATTERY" and d.get("battery") is not None:
        return f"{base} {d['battery']}%"
    if t == "REJECTED" and d.get("reason"):
        return f"{base}: {d['reason']}"
    if t == "COUNTER_JUMP" and "to" in d:
        return f"{base} {d.get('from')}→{d['to']}"
    if t in ("COUNTER_COLLISION", "LOST_DEVICE") and d.get("type"):
        return f"{base}: {d['type']}"
    if t == "BOOT" and d.get("reset_cause"):
        return f"{base}: {d['reset_cause']}"
    return base


def _event_origin(e: dict[str, Any]) -> str:
    if e["device"] is None:
        return ""
    return origin(e)


EVENT_COLUMNS = (
    Col(N_("Hora"), 14, lambda e: timefmt.clock(e["_row"]["at"])),
    Col("Dispositivo", 11, lambda e: e["device"] or ""),
    Col(N_("Evento"), 28, _event_text),
    Col(N_("Caso / sitio"), 17, _event_origin),
    Col(
        N_("Detalle"),
        40,
        lambda e: ", ".join(f"{k}={v}" for k, v in e["detail"].items()),
        wide=True,
    ),
)


def _supervision(d: dict[str, Any]) -> str:
    return {"lost": _("perdida"), "ok": _("correcta"), None: _("sin datos")}[d["supervision"]]


DEVICE_COLUMNS = (
    Col("Dispositivo", 11, lambda d: d["device"]),
    Col("Tipo", 7, lambda d: word(d["kind"])),
    Col(N_("Estado"), 9, lambda d: word(d["state"])),
    Col(N_("Caso / sitio"), 16, origin),
    Col(
        N_("Última señal"),
        14,
        lambda d: timefmt.clock(d["_row"]["last_seen"]) if d["_row"]["last_seen"] else _("nunca"),
    ),
    Col(N_("Supervisión"), 11, _supervision),
    Col(N_("Bat."), 5, lambda d: "" if d["battery"] is None else f"{d['battery']}%", wide=True),
    Col(N_("Red"), 12, lambda d: _network(d), wide=True),
)


def _network(d: dict[str, Any]) -> str:
    """The bearer of the latest heartbeat, or its modem fault when it reported one."""
    if d.get("modem_fault") not in (None, "none"):
        return _("módem: {f}").format(f=d["modem_fault"])
    return "" if d.get("bearer") in (None, "none") else str(d["bearer"]).upper()


def columns(cols: tuple[Col, ...], width: int) -> list[Col]:
    """The columns a screen this wide shows."""
    return [c for c in cols if width >= WIDE_COLUMNS or not c.wide]


def alert_style(a: dict[str, Any]) -> str:
    if a["state"] == "pending":
        return "bold white on red" if a["overdue"] else "bold red"
    if a["state"] == "closed":
        return "dim"
    return ""


def event_style(e: dict[str, Any]) -> str:
    if e["type"] in EVENT_ALARMS:
        return "bold red"
    if e["type"] in EVENT_WARNINGS:
        return "yellow"
    return "dim" if e["type"] == "BOOT" else ""


def device_style(d: dict[str, Any]) -> str:
    return "bold red" if d["supervision"] == "lost" else ""


def summary(snap: dict[str, Any]) -> str:
    """The top line: now (with the offset), the queue, what is wrong."""
    now = dt.datetime.fromisoformat(snap["now"])
    parts = [
        "C4 " + timefmt.stamp(now),
        _("sin atender {n}").format(n=snap["pending_total"]),
    ]
    if snap["overdue"]:
        parts.append(_("vencidas {n}").format(n=snap["overdue"]))
    if snap["supervision_lost"]:
        parts.append(_("sin supervisión {n}").format(n=snap["supervision_lost"]))
    if snap["forward_failing"]:
        parts.append(_("reenvío FALLANDO"))
    return " · ".join(parts)


def detail_lines(a: dict[str, Any] | None, width: int = WIDE_COLUMNS) -> list[Text]:
    """The selected alert in full: who, when (with the offset), where, map links, state.

    At 80 columns the geo: URI is left out (the OpenStreetMap link is on its own line).
    """
    if a is None:
        return [Text(_("ninguna alerta"), style="dim")]
    who = [_("alerta {id}").format(id=a["id"]), f"{word(a['kind'])} {a['device']}"]
    if a["case_ref"]:
        who.append(_("caso {c}").format(c=a["case_ref"]))
    elif a["site"]:
        who.append(
            a["site"] + (" (" + _("sector {s}").format(s=a["sector"]) + ")" if a["sector"] else "")
        )
    else:
        who.append(_("sin asignar"))
    if a["battery"] is not None:
        who.append(_("batería {b} %").format(b=a["battery"]))
    if a["bearer"]:
        who.append(a["bearer"])
    if a["lost"]:
        who.append(_("dispositivo marcado perdido"))
    r = a["_row"]
    if r.get("pressed_at"):
        when = _("pulsada {p} · recibida {r}").format(
            p=timefmt.stamp(r["pressed_at"]), r=timefmt.clock(r["received_at"])
        )
    else:
        when = _("recibida {r} (hora de pulsación desconocida)").format(
            r=timefmt.stamp(r["received_at"])
        )
    when += " · " + _("hace {e}").format(e=elapsed_text(a["elapsed_s"]))
    lines = [Text(" · ".join(who), style="bold"), Text(when)]
    f, m = a["fix"], a["map"]
    if f is not None:
        if f["accuracy_m"] is not None and f["fix_age_s"] is not None:
            place = _("ubicación {c} ±{a} m, fijada hace {f} s").format(
                c=coords(f["lat"], f["lon"]), a=f["accuracy_m"], f=f["fix_age_s"]
            )
        else:
            place = _("ubicación {c}").format(c=coords(f["lat"], f["lon"]))
    elif m is not None:
        place = _("coordenadas fijas del sitio {c}").format(c=a["location"])
    else:
        place = _("sin ubicación: ni fijación ni sitio asignado")
    if m is not None:
        lines.append(Text(place + (" · " + m["geo"] if width >= WIDE_COLUMNS else "")))
        lines.append(Text(_("mapa {u}").format(u=m["osm"]), style=f"link {m['osm']}"))
    else:
        lines.append(Text(place, style="yellow"))
    lines.append(Text(_state_line(a), style=alert_style(a) or ""))
    return lines


def _state_line(a: dict[str, Any]) -> str:
    r, req, out = a["_row"], a["attend"], a["_outcome"]
    parts = []
    if a["state"] == "pending":
        parts.append(_("SIN ATENDER") + " " + elapsed_text(a["elapsed_s"]))
    if r["attending_at"] is not None:
        parts.append(
            _("atendida por {op} a las {t} (a los {e})").format(
                op=a["attending_by"],
                t=timefmt.clock(r["attending_at"]),
                e=elapsed_text(a["attend_s"]),
            )
        )
    elif req is not None and req["state"] == "requested":
        parts.append(
            _("atención solicitada por {op}, esperando a la pasarela").format(op=req["operator"])
        )
    elif req is not None and req["state"] == "failed":
        parts.append(
            _("atención fallida ({op}): {r}").format(
                op=req["operator"], r=attend_reason(req["reason"])
            )
        )
    if r["cancelled_at"] is not None:
        parts.append(
            _(
                "cancelada por la usuaria a las {t}: confirme (una cancelación puede ser forzada)"
            ).format(t=timefmt.clock(r["cancelled_at"]))
        )
    if out is not None:
        parts.append(
            _("cerrada por {op} ({t}): {o}").format(
                op=out.operator, t=timefmt.stamp(out.closed_at), o=outcome_word(out.outcome)
            )
        )
        if out.note:
            parts.append(_("nota: {n}").format(n=out.note))
    if a["test"]:
        parts.append(_("prueba"))
    return " · ".join(parts) or state_text(a)


# ------------------------------------------------------------ --once text ---


def _table(title: str, cols: list[Col], rows: list[dict[str, Any]], style: Callable) -> Table:
    t = Table(title=title, title_justify="left")
    for c in cols:
        t.add_column(_(c.header), overflow="fold")
    for r in rows:
        t.add_row(*(c.cell(r) for c in cols), style=style(r))
    return t


def render(snap: dict[str, Any], width: int) -> Group:
    """`monitor --once`: the summary, the queue, recent alerts, events and devices as tables."""
    pending = [a for a in snap["alerts"] if a["state"] == "pending"]
    recent = [a for a in snap["alerts"] if a["state"] != "pending"]
    parts: list[Any] = [Text(summary(snap), style="bold")]
    acols = columns(ALERT_COLUMNS, width)
    parts.append(_table(_("Alertas sin atender"), acols, pending, alert_style))
    for a in pending:
        parts.extend(detail_lines(a, width))
    parts.append(_table(_("Alertas recientes"), acols, recent, alert_style))
    parts.append(
        _table(_("Eventos C4"), columns(EVENT_COLUMNS, width), snap["events"], event_style)
    )
    parts.append(
        _table(_("Dispositivos"), columns(DEVICE_COLUMNS, width), snap["devices"], device_style)
    )
    return Group(*parts)


def print_once(
    registry: Any,
    limit: int = queries.DEFAULT_LIMIT,
    as_json: bool = False,
    console: Console | None = None,
) -> dict[str, Any]:
    """One snapshot on stdout: tables for people, or JSON (codes, ISO times with the offset)."""
    snap = snapshot(registry, limit)
    if as_json:
        print(json.dumps(public(snap), sort_keys=True))
    else:
        console = console or Console()
        console.print(render(snap, console.width))
    return snap
