"""The C4 operator console: recent alerts, C4 events and device health from the registry (rich).

Spanish first (auxilio.i18n; AUXILIO_LANG=en for English). Coordinates are shown
only for real alerts, rounded to ~100 m, since the console is for dispatch; they
never go to logs. Keys in the live view: ↑/↓ or j/k select an alert, "a" asks
the gateway to attend it, "q" quits. The console reads the registry read-only:
an alert shows "atendiendo" only once the gateway has signed the ACK and the
broker took it; a request that failed says why, on one line (issue 8 §4).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import select
import sys
import threading
import time
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from auxilio.gateway.store import Store
from auxilio.i18n import _, register
from auxilio.protocol import codec

log = logging.getLogger(__name__)

# Live view refresh period.
REFRESH_S = 1.0
# Rows shown per table.
DEFAULT_LIMIT = 15

register(
    {
        "Alertas recientes": "Recent alerts",
        "Eventos C4": "C4 events",
        "Salud de dispositivos": "Device health",
        "Dispositivo": "Device",
        "Tipo": "Type",
        "Contador": "Counter",
        "Recibida": "Received",
        "Confirmada": "Acked",
        "Atendida por": "Attended by",
        "Disposición": "Disposition",
        "Ubicación": "Location",
        "Rol": "Role",
        "Estado": "State",
        "Visto por última vez": "Last seen",
        "Supervisión": "Supervision",
        "Hora": "Time",
        "Detalle": "Detail",
        "perdida": "lost",
        "correcta": "ok",
        "prueba": "test",
        "sin datos": "no data",
        "↑/↓ seleccionar · a atender · q salir": "↑/↓ select · a attend · q quit",
        "Alerta {id}: atención enviada; la usuaria recibe el aviso (operadora {op})": "Alert {id}: attend sent; the wearer is being told (operator {op})",
        "Alerta {id}: atención fallida: {reason}": "Alert {id}: attend failed: {reason}",
        "Alerta {id}: atención solicitada, sin respuesta de la pasarela todavía": "Alert {id}: attend requested, no answer from the gateway yet",
        "Alerta {id}: solicitando atención…": "Alert {id}: requesting attend…",
        "la pasarela no respondió en {s:.0f} s (solicitud {r} en espera)": "the gateway did not answer within {s:.0f} s (request {r} waiting)",
        "Atención": "Attend",
        "pulsada {p} · recibida {r}": "pressed {p} · received {r}",
        "solicitada": "requested",
        "enviada": "sent",
        "fallida": "failed",
        "recibida": "received",
        "atendiendo": "attending",
        "reloj desfasado": "clock skew (time NAK)",
        "rechazada": "rejected",
        "pulsera": "bracelet",
        "botón": "button",
        "en reserva": "spare",
        "asignado": "assigned",
        "perdido": "lost",
        "revocado": "revoked",
        "retirado": "retired",
    }
)

# Codes stored in the registry -> the Spanish words operators read (the JSON
# snapshot keeps the codes; only the console shows words).
_VALUE_ES = {
    "received": "recibida",
    "attending": "atendiendo",
    "time_nak": "reloj desfasado",
    "rejected": "rechazada",
    "bracelet": "pulsera",
    "button": "botón",
    "spare": "en reserva",
    "assigned": "asignado",
    "lost": "perdido",
    "revoked": "revocado",
    "retired": "retirado",
}


# Why the gateway refused an attend (attend.py reasons) in the operator's words.
_ATTEND_REASON_ES = {
    "unknown_alert": "alerta desconocida",
    "not_an_alert": "no es una alerta (evento)",
    "test_alert": "alerta de prueba",
    "alert_rejected": "la alerta fue rechazada",
    "unknown_device": "dispositivo desconocido",
    "device_revoked": "dispositivo revocado",
    "device_retired": "dispositivo retirado",
    "old_key_epoch": "el dispositivo cambió de clave",
    "not_stored_by_gateway": "registro no creado por la pasarela",
    "frame_does_not_verify": "la trama guardada no verifica",
    "frame_does_not_match": "la trama guardada no coincide",
    "gateway_error": "error en la pasarela",
    "already_attended": "ya estaba atendida",
}
register(
    {
        "alerta desconocida": "unknown alert",
        "no es una alerta (evento)": "not an alert (an event)",
        "alerta de prueba": "test alert",
        "la alerta fue rechazada": "the alert was rejected",
        "dispositivo desconocido": "unknown device",
        "dispositivo revocado": "device revoked",
        "dispositivo retirado": "device retired",
        "el dispositivo cambió de clave": "the device was re-keyed",
        "registro no creado por la pasarela": "row not stored by the gateway",
        "la trama guardada no verifica": "the stored frame does not verify",
        "la trama guardada no coincide": "the stored frame does not match",
        "error en la pasarela": "gateway error",
        "ya estaba atendida": "already attended",
    }
)


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
    why = _(_ATTEND_REASON_ES[reason]) if reason in _ATTEND_REASON_ES else reason
    return _("Alerta {id}: atención fallida: {reason}").format(id=alert_id, reason=why)


def _word(code: str | None) -> str:
    """A registry code as the operator's word (unknown codes pass through)."""
    if not code:
        return ""
    return _(_VALUE_ES[code]) if code in _VALUE_ES else code


def _t(ts: dt.datetime | None) -> str:
    if ts is None:
        return "—"
    return ts.astimezone().strftime("%H:%M:%S")


def _location(row: dict[str, Any]) -> str:
    p = row.get("payload") or {}
    if row.get("type") != "ALERT" or p.get("lat_e7") is None:
        return ""
    return f"{p['lat_e7'] / 1e7:.3f}, {p['lon_e7'] / 1e7:.3f}"


def snapshot(registry: Any, limit: int = DEFAULT_LIMIT) -> dict[str, Any]:
    """Plain data for one screen: alerts, events, devices (JSON-safe)."""
    st = Store(registry)
    alerts = []
    rows = st.recent_alerts(limit)
    attends = st.attend_states([r["id"] for r in rows])
    for r in rows:
        req = attends.get(r["id"])
        alerts.append(
            {
                "id": r["id"],
                "device": codec.device_str(r["device_id"]),
                "kind": r["kind"],
                "type": r["type"],
                "counter": r["counter"],
                "received_at": r["received_at"].isoformat() if r["received_at"] else None,
                "pressed_at": r["pressed_at"].isoformat() if r.get("pressed_at") else None,
                "acked_at": r["acked_at"].isoformat() if r["acked_at"] else None,
                "attending_at": r["attending_at"].isoformat() if r["attending_at"] else None,
                "attending_by": r["attending_by"],
                "disposition": r["disposition"],
                "test": bool(r["test"]),
                "lost": bool(r["lost"]),
                "location": _location(r),
                "attend": None
                if req is None
                else {"state": req["state"], "reason": req["reason"], "operator": req["operator"]},
                "_row": r,
            }
        )
    events = [
        {
            "id": e["id"],
            "device": codec.device_str(e["device_id"]) if e["device_id"] is not None else None,
            "type": e["type"],
            "at": e["at"].isoformat() if e["at"] else None,
            "detail": {
                k: v for k, v in (e["detail"] or {}).items() if k not in ("lat_e7", "lon_e7")
            },
            "_row": e,
        }
        for e in st.recent_events(limit)
    ]
    devices = [
        {
            "device": codec.device_str(d["id"]),
            "kind": d["kind"],
            "state": d["state"],
            "last_seen": d["last_seen"].isoformat() if d["last_seen"] else None,
            "supervision": d["supervision"],
            "_row": d,
        }
        for d in st.devices_health()
    ]
    return {"alerts": alerts, "events": events, "devices": devices}


def public(snap: dict[str, Any]) -> dict[str, Any]:
    """The snapshot without internal row objects (for --json)."""
    return {
        k: [{kk: vv for kk, vv in r.items() if not kk.startswith("_")} for r in v]
        for k, v in snap.items()
    }


def render(snap: dict[str, Any], selected: int | None = None, footer: str = "") -> Group:
    at = Table(title=_("Alertas recientes"), expand=True)
    for col in (
        "ID",
        _("Dispositivo"),
        _("Tipo"),
        _("Contador"),
        _("Recibida"),
        _("Confirmada"),
        _("Disposición"),
        _("Atendida por"),
        _("Atención"),
        _("Ubicación"),
    ):
        at.add_column(col)
    for i, a in enumerate(snap["alerts"]):
        r = a["_row"]
        kind = (
            a["type"]
            + (f" ({_('prueba')})" if a["test"] else "")
            + (f" [{_('perdida')}]" if a["lost"] else "")
        )
        style = (
            "reverse"
            if selected == i
            else (
                "bold red"
                if a["type"] == "ALERT" and not a["test"] and not a["attending_by"]
                else ""
            )
        )
        at.add_row(
            str(a["id"]),
            a["device"],
            kind,
            str(a["counter"]),
            _received(r),
            _t(r["acked_at"]),
            _word(a["disposition"]),
            a["attending_by"] or "",
            _attend_cell(a["attend"]),
            a["location"],
            style=style,
        )
    et = Table(title=_("Eventos C4"), expand=True)
    for col in (_("Hora"), _("Dispositivo"), _("Tipo"), _("Detalle")):
        et.add_column(col)
    for e in snap["events"]:
        style = (
            "bold yellow"
            if e["type"] in ("SUPERVISION_LOST", "TAMPER", "REJECTED", "LOST_DEVICE")
            else ""
        )
        detail = ", ".join(f"{k}={v}" for k, v in e["detail"].items())
        et.add_row(_t(e["_row"]["at"]), e["device"] or "", e["type"], detail, style=style)
    dt_ = Table(title=_("Salud de dispositivos"), expand=True)
    for col in (
        _("Dispositivo"),
        _("Rol"),
        _("Estado"),
        _("Visto por última vez"),
        _("Supervisión"),
    ):
        dt_.add_column(col)
    for d in snap["devices"]:
        sup = {"lost": _("perdida"), "ok": _("correcta"), None: _("sin datos")}[d["supervision"]]
        dt_.add_row(
            d["device"],
            _word(d["kind"]),
            _word(d["state"]),
            _t(d["_row"]["last_seen"]),
            sup,
            style="bold red" if d["supervision"] == "lost" else "",
        )
    parts: list[Any] = [at, et, dt_]
    if footer:
        parts.append(Text(footer))
    return Group(*parts)


# A press delivered this much later than it happened is shown with both times.
LATE_DELIVERY_S = 10


def _received(r: dict[str, Any]) -> str:
    """Delivery time; after an outage also the press: "pulsada 19:00:05 · recibida 19:05:40"."""
    got, pressed = r["received_at"], r.get("pressed_at")
    if got is None or pressed is None or (got - pressed).total_seconds() < LATE_DELIVERY_S:
        return _t(got)
    return _("pulsada {p} · recibida {r}").format(p=_t(pressed), r=_t(got))


def _attend_cell(req: dict[str, Any] | None) -> str:
    if req is None:
        return ""
    word = {"requested": "solicitada", "sent": "enviada", "failed": "fallida"}.get(req["state"])
    text = _(word) if word else req["state"]
    if req["state"] == "failed" and req["reason"]:
        r = req["reason"]
        text += ": " + (_(_ATTEND_REASON_ES[r]) if r in _ATTEND_REASON_ES else r)
    return text


def print_once(
    registry: Any, limit: int = DEFAULT_LIMIT, as_json: bool = False, console: Console | None = None
) -> dict[str, Any]:
    snap = snapshot(registry, limit)
    if as_json:
        print(json.dumps(public(snap), sort_keys=True))
    else:
        (console or Console()).print(render(snap))
    return snap


def run_live(
    registry: Any,
    broker_url: str | None,
    operator: str,
    prefix: str = "auxilio",
    limit: int = DEFAULT_LIMIT,
) -> None:
    """Interactive console until 'q' or Ctrl-C."""
    from auxilio.gateway.control import request_attend

    interactive = sys.stdin.isatty()
    selected = 0
    message = ""
    shown: list[str] = []  # the latest attend outcome, written by the request thread

    def ask(alert_id: int) -> None:
        try:
            res = request_attend(broker_url or "", alert_id, operator, prefix)
            shown.append(attend_message(alert_id, res.state, res.reason, operator))
        except Exception as exc:  # noqa: BLE001 - show it on one line, keep the console up
            shown.append(attend_message(alert_id, "failed", str(exc), operator))

    old = None
    if interactive:
        import termios
        import tty

        fd = sys.stdin.fileno()
        old = termios.tcgetattr(fd)
        tty.setcbreak(fd)
    try:
        with Live(render(snapshot(registry, limit)), refresh_per_second=4, screen=False) as live:
            next_refresh = 0.0
            while True:
                key = ""
                if interactive:
                    r, _w, _x = select.select([sys.stdin], [], [], 0.1)
                    if r:
                        key = os.read(sys.stdin.fileno(), 8).decode(errors="ignore")
                else:
                    time.sleep(0.1)
                snap = None
                if key in ("q", "Q"):
                    return
                if key in ("k", "\x1b[A"):
                    selected = max(0, selected - 1)
                elif key in ("j", "\x1b[B"):
                    selected += 1
                elif key in ("a", "A"):
                    snap = snapshot(registry, limit)
                    if snap["alerts"]:
                        a = snap["alerts"][min(selected, len(snap["alerts"]) - 1)]
                        message = _("Alerta {id}: solicitando atención…").format(id=a["id"])
                        threading.Thread(target=ask, args=(a["id"],), daemon=True).start()
                if shown:
                    message = shown.pop()
                    key = key or "refresh"
                now = time.monotonic()
                if key or now >= next_refresh:
                    snap = snap or snapshot(registry, limit)
                    selected = min(selected, max(len(snap["alerts"]) - 1, 0))
                    live.update(
                        render(
                            snap,
                            selected,
                            (message + "   " if message else "")
                            + _("↑/↓ seleccionar · a atender · q salir"),
                        )
                    )
                    next_refresh = now + REFRESH_S
    except KeyboardInterrupt:
        return
    finally:
        if old is not None:
            import termios

            termios.tcsetattr(sys.stdin.fileno(), termios.TCSADRAIN, old)
