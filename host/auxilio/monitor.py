"""The C4 operator console: recent alerts, C4 events and device health from the registry (rich).

Spanish first (auxilio.i18n; AUXILIO_LANG=en for English). Coordinates are shown
only for real alerts, rounded to ~100 m, since the console is for dispatch; they
never go to logs. Keys in the live view: ↑/↓ or j/k select an alert, "a" attends
it (registry + signed ACK via the gateway), "q" quits.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import select
import sys
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
        "Alerta {id} ({device} #{counter}) atendida por {op}": "Alert {id} ({device} #{counter}) attended by {op}",
        "No se pudo atender: {err}": "Could not attend: {err}",
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
    for r in st.recent_alerts(limit):
        alerts.append(
            {
                "id": r["id"],
                "device": codec.device_str(r["device_id"]),
                "kind": r["kind"],
                "type": r["type"],
                "counter": r["counter"],
                "received_at": r["received_at"].isoformat() if r["received_at"] else None,
                "acked_at": r["acked_at"].isoformat() if r["acked_at"] else None,
                "attending_at": r["attending_at"].isoformat() if r["attending_at"] else None,
                "attending_by": r["attending_by"],
                "disposition": r["disposition"],
                "test": bool(r["test"]),
                "lost": bool(r["lost"]),
                "location": _location(r),
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
            _t(r["received_at"]),
            _t(r["acked_at"]),
            _word(a["disposition"]),
            a["attending_by"] or "",
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
    from auxilio.gateway.control import attend

    interactive = sys.stdin.isatty()
    selected = 0
    message = ""
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
                        try:
                            row = attend(registry, a["id"], operator, broker_url, prefix)
                            message = _(
                                "Alerta {id} ({device} #{counter}) atendida por {op}"
                            ).format(
                                id=row["id"],
                                device=a["device"],
                                counter=row["counter"],
                                op=operator,
                            )
                        except Exception as exc:  # noqa: BLE001 - show it, keep the console up
                            message = _("No se pudo atender: {err}").format(err=exc)
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
