"""`auxilio devices …`: the device registry for people (tables) and machines (--json).

Never prints a secret: `add` writes the plaintext secret and MQTT password only to a
0600 provisioning file given with --secret-out.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
from typing import Any

from auxilio.i18n import N_, _
from auxilio.words import action_word, word


def _common(json_flag: bool = True) -> argparse.ArgumentParser:
    c = argparse.ArgumentParser(add_help=False)
    c.add_argument(
        "--registry",
        help=_("ruta o URL del registro (por omisión $AUXILIO_REGISTRY o var/auxilio.db)"),
    )
    c.add_argument(
        "--actor",
        help=_("quién actúa, para la bitácora (por omisión $AUXILIO_ACTOR o cli:<usuario>)"),
    )
    if json_flag:
        c.add_argument("--json", action="store_true", help=_("salida JSON para máquinas"))
    return c


def _broker_option() -> argparse.ArgumentParser:
    b = argparse.ArgumentParser(add_help=False)
    b.add_argument(
        "--broker-admin",
        metavar="FILE",
        help=_(
            "archivo de administración del broker (broker-admin.json de `auxilio broker "
            "config`): aplica el cambio en el broker al instante (por omisión "
            "$AUXILIO_BROKER_ADMIN; sin él, solo el registro)"
        ),
    )
    return b


def add_arguments(p: argparse.ArgumentParser) -> None:
    common = _common()
    broker = _broker_option()  # issue 11 §5: lifecycle changes reach the broker at once
    sub = p.add_subparsers(dest="devices_cmd", metavar="ACTION", required=True)

    a = sub.add_parser(
        "add",
        parents=[common, broker],
        help=_("da de alta un dispositivo con un secreto nuevo sellado"),
    )
    a.add_argument(
        "--id", dest="device", help=_("id impreso del dispositivo (por omisión: uno libre al azar)")
    )
    a.add_argument("--kind", required=True, choices=["bracelet", "button"])
    a.add_argument("--board", required=True, help=_("nombre de la placa (boards/<nombre>.json)"))
    a.add_argument("--fw", help=_("versión del firmware, p. ej. 1.0.0"))
    a.add_argument(
        "--pubkey",
        help=_(
            "archivo de la clave pública de la pasarela (por omisión <dir. de claves>/gateway.pub)"
        ),
    )
    a.add_argument(
        "--keys-dir", help=_("directorio de claves (por omisión $AUXILIO_KEYS_DIR o var/keys)")
    )
    a.add_argument(
        "--secret-out",
        metavar="FILE",
        help=_(
            "escribe aquí el secreto y la contraseña MQTT en claro (modo 0600) para aprovisionar"
        ),
    )

    ls = sub.add_parser("list", parents=[common], help=_("lista los dispositivos"))
    ls.add_argument(
        "--state", choices=["provisioning", "spare", "assigned", "lost", "revoked", "retired"]
    )

    sh = sub.add_parser(
        "show", parents=[common], help=_("un dispositivo, su asignación y su historial")
    )
    sh.add_argument("device", help=_("id impreso del dispositivo, p. ej. 0938-NKRT"))

    asg = sub.add_parser(
        "assign", parents=[common], help=_("asigna un caso (pulsera) o un sitio (botón)")
    )
    asg.add_argument("device")
    asg.add_argument(
        "--case", help=_("referencia seudónima del caso, p. ej. PR-2026-00123 (nunca un nombre)")
    )
    asg.add_argument("--site", help=_("nombre público del sitio (botón)"))
    asg.add_argument("--lat", help=_("latitud (botón)"))
    asg.add_argument("--lon", help=_("longitud (botón)"))
    asg.add_argument("--sector", help=_("sector del C4 (botón)"))
    asg.add_argument(
        "--from", dest="valid_from", help=_("vigente desde (ISO 8601, por omisión ahora)")
    )
    asg.add_argument(
        "--to", dest="valid_to", help=_("vigente hasta (ISO 8601, por omisión sin fin)")
    )
    asg.add_argument(
        "--reassign",
        action="store_true",
        help=_("reemplaza el caso o sitio actual del dispositivo (sin esto se rechaza)"),
    )

    un = sub.add_parser("unassign", parents=[common], help=_("termina la asignación actual"))
    un.add_argument("device")

    for name, help_text in (
        (
            "mark-lost",
            N_("marca un dispositivo como perdido (sus alertas se siguen guardando, señaladas)"),
        ),
        ("revoke", N_("revoca un dispositivo: sus tramas se rechazan y se informan")),
        ("retire", N_("retira un dispositivo para siempre")),
    ):
        s = sub.add_parser(name, parents=[common, broker], help=_(help_text))
        s.add_argument("device")
        s.add_argument("--note", help=_("por qué (queda en la bitácora)"))

    rk = sub.add_parser(
        "rekey",
        parents=[common, broker],
        help=_("secreto y contraseña MQTT nuevos (recuperado, devuelto, rotación)"),
    )
    rk.add_argument("device")
    rk.add_argument(
        "--secret-out", required=True, metavar="FILE", help=_("archivo de aprovisionamiento (0600)")
    )
    rk.add_argument(
        "--pubkey",
        help=_(
            "archivo de la clave pública de la pasarela (por omisión <dir. de claves>/gateway.pub)"
        ),
    )
    rk.add_argument(
        "--keys-dir", help=_("directorio de claves (por omisión $AUXILIO_KEYS_DIR o var/keys)")
    )
    from auxilio.lifecycle import DEFAULT_REKEY_GRACE_S

    rk.add_argument(
        "--grace",
        type=float,
        default=DEFAULT_REKEY_GRACE_S,
        metavar="SECONDS",
        help=_(
            "las tramas con la clave anterior se siguen aceptando este tiempo (por omisión "
            "{default}; 0: se rechazan al instante; nunca para un dispositivo perdido o "
            "revocado). La contraseña del broker cambia al instante: la lleva el archivo "
            "de aprovisionamiento nuevo"
        ).format(default=DEFAULT_REKEY_GRACE_S),
    )

    sim = sub.add_parser(
        "set-sim",
        parents=[common],
        help=_(
            "registra el número de la SIM: el C4 acepta SMS de alerta del dispositivo solo desde él"
        ),
    )
    sim.add_argument("device")
    sim.add_argument("number", nargs="?", help=_("E.164, como +525512340000"))
    sim.add_argument("--clear", action="store_true", help=_("olvida el número (SIM retirada)"))

    im = sub.add_parser(
        "import-csv", parents=[common, broker], help=_("importa dispositivos y asignaciones")
    )
    im.add_argument("file", help=_("archivo CSV ('-' para la entrada estándar)"))
    im.add_argument(
        "--secret-dir",
        help=_(
            "da de alta los dispositivos desconocidos y escribe aquí sus archivos <ID>.json (modo 0600)"
        ),
    )
    im.add_argument(
        "--pubkey", help=_("archivo de la clave pública de la pasarela (para dar de alta)")
    )
    im.add_argument(
        "--keys-dir", help=_("directorio de claves (por omisión $AUXILIO_KEYS_DIR o var/keys)")
    )
    im.add_argument(
        "--reassign",
        action="store_true",
        help=_("las filas pueden reemplazar el caso o sitio actual (si no, se rechazan)"),
    )

    ex = sub.add_parser(
        "export-csv", parents=[common], help=_("exporta dispositivos y asignaciones")
    )
    ex.add_argument(
        "file", nargs="?", default="-", help=_("archivo CSV (por omisión la salida estándar)")
    )


def _actor(args: argparse.Namespace) -> str:
    if args.actor:
        return args.actor
    env = os.environ.get("AUXILIO_ACTOR")
    if env:
        return env
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli"


def _fmt_time(t: Any) -> str:
    from auxilio import timefmt

    return timefmt.stamp(t)


def _health_text(h: dict[str, Any] | None) -> str:
    """The latest heartbeat in one line: battery, bearer, signal, modem fault, firmware, when."""
    if not h:
        return "—"
    import datetime as dt

    parts = [
        _("batería {p} %").format(p=h["battery"]) if h.get("battery") is not None else None,
        (h.get("bearer") or "").upper() if h.get("bearer") not in (None, "none") else None,
        f"{h['rssi']} dBm" if h.get("rssi") is not None else None,
        _("módem: {f}").format(f=h["modem_fault"])
        if h.get("modem_fault") not in (None, "none")
        else None,
        f"fw {h['fw']}" if h.get("fw") else None,
    ]
    at = dt.datetime.fromisoformat(h["at"]) if h.get("at") else None
    return " · ".join(p for p in parts if p) + f" ({_fmt_time(at)})"


def _assignment_text(a: dict[str, Any] | None) -> str:
    if a is None:
        return _("sin asignar")
    if a["kind"] == "case":
        return _("caso") + f" {a['case_ref']}"
    return f"{a['site']} ({a['sector']})"


def _assignment_json(a: dict[str, Any] | None) -> dict[str, Any] | None:
    if a is None:
        return None
    out = {k: a[k] for k in ("kind", "case_ref", "site", "lat", "lon", "sector", "active")}
    out["valid_from"] = a["valid_from"].isoformat()
    out["valid_to"] = a["valid_to"].isoformat() if a["valid_to"] else None
    return {k: val for k, val in out.items() if val is not None or k == "valid_to"}


def _console() -> Any:
    from rich.console import Console

    return Console(soft_wrap=False)


def _device_table(rows: list[tuple[Any, dict[str, Any] | None]]) -> Any:
    from rich.table import Table

    t = Table(title=_("Dispositivos"))
    for h in (
        "Dispositivo",
        "Tipo",
        "Placa",
        N_("Firmware"),
        N_("Estado"),
        N_("Asignación"),
        N_("Última señal"),
    ):
        t.add_column(_(h))
    for rec, a in rows:
        t.add_row(
            rec.label,
            word(rec.kind),
            rec.board,
            rec.fw_version or "—",
            word(rec.state),
            _assignment_text(a),
            _fmt_time(rec.last_seen),
        )
    return t


def run(args: argparse.Namespace) -> int:
    from auxilio.registry import open_registry

    cmd = args.devices_cmd
    # Everything that can be checked without the registry is, before it is opened:
    # a mistake changes nothing, not even by creating an empty registry file.
    if cmd in _CHECKS:
        _CHECKS[cmd](args)
    # The broker to tell (issue 11 §5): a missing or bad admin file changes nothing.
    args.broker = _broker_admin(args) if hasattr(args, "broker_admin") else None
    # Only enrolment may start a registry; every other action needs one that exists
    # (a mistyped --registry must not leave an empty database behind).
    registry = open_registry(args.registry, create=cmd in _CREATES)
    try:
        return _HANDLERS[cmd](args, registry)
    finally:
        registry.close()


def _public_key(args: argparse.Namespace) -> Any:
    from auxilio import keys

    return keys.load_public_key(args.pubkey or keys.keys_dir(args.keys_dir) / keys.PUBLIC_KEY_FILE)


def _check_add(args: argparse.Namespace) -> None:
    from auxilio.boards import board_for
    from auxilio.registry.enrol import check_secret_out

    board_for(args.board, args.kind)
    check_secret_out(args.secret_out)
    args.public_key = _public_key(args)


def _check_rekey(args: argparse.Namespace) -> None:
    from auxilio.registry import validate
    from auxilio.registry.enrol import check_secret_out

    validate.rekey_grace(args.grace)
    check_secret_out(args.secret_out)
    args.public_key = _public_key(args)


def _add(args: argparse.Namespace, registry: Any) -> int:
    from auxilio.registry.enrol import enrol_device

    e = enrol_device(
        registry,
        args.public_key,
        args.kind,
        args.board,
        device_id=args.device,
        fw_version=args.fw,
        actor=_actor(args),
        secret_out=args.secret_out,
    )
    if args.json:
        print(
            json.dumps(
                {
                    "device": e.label,
                    "id": e.device_id,
                    "kind": e.kind,
                    "board": e.board,
                    "state": "spare",
                    "secret_out": str(e.secret_file) if e.secret_file else None,
                }
            )
        )
        return _tell_broker(args.broker, registry, e.device_id, e.password)
    from rich.table import Table

    t = Table(title=_("Dispositivo registrado"), show_header=False)
    t.add_row(_("Dispositivo"), e.label)
    t.add_row(_("Tipo"), word(e.kind))
    t.add_row(_("Placa"), e.board)
    t.add_row(
        _("Archivo de aprovisionamiento"),
        str(e.secret_file) if e.secret_file else _("ninguno: el secreto queda sellado"),
    )
    _console().print(t)
    return _tell_broker(args.broker, registry, e.device_id, e.password)


def _list(args: argparse.Namespace, registry: Any) -> int:
    recs = registry.list_devices(args.state)
    current = registry.current_assignments()
    rows = [(r, current.get(r.id)) for r in recs]
    if args.json:
        print(json.dumps([{**r.public_dict(), "assignment": _assignment_json(a)} for r, a in rows]))
        return 0
    _console().print(_device_table(rows))
    return 0


def _show(args: argparse.Namespace, registry: Any) -> int:
    rec = registry.require_device(args.device)
    a = registry.current_assignment(rec.id)
    history = registry.audit_log(limit=20, target=rec.label)
    if args.json:
        print(
            json.dumps(
                {
                    **rec.public_dict(),
                    "assignment": _assignment_json(a),
                    "history": [
                        {
                            "at": h["at"].isoformat(),
                            "actor": h["actor"],
                            "action": h["action"],
                            "detail": h["detail"],
                        }
                        for h in history
                    ],
                }
            )
        )
        return 0
    from rich.table import Table

    t = Table(title=rec.label, show_header=False)
    for label, value in (
        ("Tipo", word(rec.kind)),
        ("Placa", rec.board),
        (N_("Firmware"), rec.fw_version or "—"),
        (N_("Estado"), word(rec.state)),
        (N_("Época de clave"), str(rec.key_epoch)),
        (N_("Clave anterior"), _previous_key_text(rec)),
        (N_("Latido (s)"), str(rec.heartbeat_s) if rec.heartbeat_s else "—"),
        (N_("Salud"), _health_text(rec.health)),
        ("SIM", rec.msisdn or "—"),
        (N_("Asignación"), _assignment_text(a)),
        (
            N_("Vigencia"),
            f"{_fmt_time(a['valid_from'])} → {_fmt_time(a['valid_to'])}" if a else "—",
        ),
        (N_("Última señal"), _fmt_time(rec.last_seen)),
        (N_("Creado"), _fmt_time(rec.created_at)),
        (N_("Actualizado"), _fmt_time(rec.updated_at)),
    ):
        t.add_row(_(label), value)
    h = Table(title=_("Historial"))
    for col in (N_("Cuándo"), N_("Quién"), N_("Acción"), N_("Detalle")):
        h.add_column(_(col))
    for e in history:
        h.add_row(_fmt_time(e["at"]), e["actor"], action_word(e["action"]), e["detail"])
    con = _console()
    con.print(t)
    con.print(h)
    return 0


def _assign(args: argparse.Namespace, registry: Any) -> int:
    from auxilio.errors import UsageError

    site_args = (args.site, args.lat, args.lon, args.sector)
    if args.case and any(x is not None for x in site_args):
        raise UsageError("give either --case or --site/--lat/--lon/--sector, not both")
    if args.case:
        registry.assign_case(
            args.device,
            args.case,
            args.valid_from,
            args.valid_to,
            actor=_actor(args),
            reassign=args.reassign,
        )
    elif all(x is not None for x in site_args):
        registry.assign_site(
            args.device,
            *site_args,
            args.valid_from,
            args.valid_to,
            actor=_actor(args),
            reassign=args.reassign,
        )
    else:
        raise UsageError("assign needs --case REF, or --site, --lat, --lon and --sector")
    return _done(args, registry, args.device)


def _previous_key_text(rec: Any) -> str:
    """The key a rekey replaced, while its grace lasts (SPEC §12.1), else a dash."""
    from auxilio.registry import utcnow

    old = rec.previous_key
    if old is None or not old.valid_at(utcnow()):
        return "—"
    until = _fmt_time(old.valid_until)
    return _("época {epoch}, aceptada hasta {until}").format(epoch=old.epoch, until=until)


def _done(args: argparse.Namespace, registry: Any, device: str) -> int:
    rec = registry.require_device(device)
    a = registry.current_assignment(rec.id)
    if args.json:
        print(json.dumps({**rec.public_dict(), "assignment": _assignment_json(a)}))
    else:
        print(f"{rec.label}: {word(rec.state)} — {_assignment_text(a)}")
    return 0


def _unassign(args: argparse.Namespace, registry: Any) -> int:
    registry.unassign(args.device, actor=_actor(args))
    return _done(args, registry, args.device)


def _state(target: str) -> Any:
    def handler(args: argparse.Namespace, registry: Any) -> int:
        registry.set_state(args.device, target, _actor(args), note=args.note)
        return _done(args, registry, args.device) or _tell_broker(
            args.broker, registry, args.device
        )

    return handler


def _rekey(args: argparse.Namespace, registry: Any) -> int:
    from auxilio.registry.enrol import rekey_device

    e = rekey_device(
        registry,
        args.public_key,
        args.device,
        actor=_actor(args),
        secret_out=args.secret_out,
        grace_s=args.grace,
    )
    return _done(args, registry, args.device) or _tell_broker(
        args.broker, registry, e.device_id, e.password
    )


def _broker_admin(args: argparse.Namespace) -> Any:
    """The broker to tell (issue 11 §5), read before the registry opens; None: none."""
    from auxilio.broker.lifecycle import load_admin

    return load_admin(args.broker_admin)


def _tell_broker(admin: Any, registry: Any, device: int | str, password: str | None = None) -> int:
    """Apply the committed change at the broker; non-zero (with one warning line) if it lags."""
    from auxilio.broker.lifecycle import after_change

    return after_change(admin, registry, device, password)


def _set_sim(args: argparse.Namespace, registry: Any) -> int:
    from auxilio.errors import UsageError

    if args.clear == (args.number is not None):
        raise UsageError("set-sim needs a NUMBER, or --clear")
    registry.set_msisdn(args.device, None if args.clear else args.number, actor=_actor(args))
    return _done(args, registry, args.device)


def _check_import(args: argparse.Namespace) -> None:
    from auxilio.errors import UsageError

    try:
        # utf-8-sig: a spreadsheet's "CSV UTF-8" export starts with a byte-order mark.
        if args.file == "-":
            args.text = sys.stdin.read()
        else:
            with open(args.file, encoding="utf-8-sig") as f:
                args.text = f.read()
    except OSError as exc:
        raise UsageError(f"cannot read {args.file}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise UsageError(
            f"{args.file} is not UTF-8 text (save it from the spreadsheet as 'CSV UTF-8')"
        ) from None
    if args.secret_dir and not os.path.isdir(args.secret_dir):
        raise UsageError(f"--secret-dir {args.secret_dir} is not a directory")


def _import(args: argparse.Namespace, registry: Any) -> int:
    from auxilio.registry import csvio

    text = args.text
    plan = csvio.read_csv(text, registry, can_enrol=bool(args.secret_dir), reassign=args.reassign)
    pub = _public_key(args) if any(r["existing"] is None for r in plan.rows) else None
    result = csvio.apply_plan(plan, registry, _actor(args), pub, args.secret_dir)
    summary = result.as_dict()
    if args.json:
        print(json.dumps(summary))
    else:
        print(" ".join(f"{k}={v}" for k, v in summary.items()))
    from auxilio.broker.lifecycle import after_changes

    # Enrolled devices log in at once, a revoked or retired row's login goes (issue 11 §5).
    changed = dict.fromkeys([*result.added, *result.state_changed])
    return after_changes(
        args.broker, registry, [(label, result.passwords.get(label)) for label in changed]
    )


def _export(args: argparse.Namespace, registry: Any) -> int:
    from auxilio.errors import UsageError
    from auxilio.registry import csvio

    rows = csvio.export_rows(registry)
    if args.file == "-":
        n = csvio.write_csv(rows, sys.stdout)
    else:
        try:
            with open(args.file, "w", encoding="utf-8", newline="") as f:
                n = csvio.write_csv(rows, f)
        except OSError as exc:
            raise UsageError(f"cannot write {args.file}: {exc.strerror}") from None
    # Who took a copy of the case references is worth knowing.
    registry.audit(_actor(args), "export-csv", "devices", f"{n} rows")
    if args.file != "-":
        print(json.dumps({"rows": n, "file": args.file}) if args.json else f"{n} → {args.file}")
    return 0


# The actions that may create the registry (its first device).
_CREATES = ("add", "import-csv")
# Checks made before the registry is opened.
_CHECKS = {"add": _check_add, "rekey": _check_rekey, "import-csv": _check_import}

_HANDLERS = {
    "add": _add,
    "list": _list,
    "show": _show,
    "assign": _assign,
    "unassign": _unassign,
    "mark-lost": _state("lost"),
    "revoke": _state("revoked"),
    "retire": _state("retired"),
    "rekey": _rekey,
    "set-sim": _set_sim,
    "import-csv": _import,
    "export-csv": _export,
}
