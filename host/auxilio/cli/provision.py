"""`auxilio provision`: one board (--port) or a tray (--batch FILE.csv) from blank to a tested, labelled device.

A thin shell over auxilio.provision.run (one pass) and auxilio.provision.batch
(a CSV of rows in parallel). Progress lines are for field staff (Spanish
first); with --json they go to stderr and stdout carries the result.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from auxilio.i18n import N_, _


def add_station_arguments(p: argparse.ArgumentParser) -> None:
    """The station's registry, gateway key, broker admin and audit options (rotate-key too)."""
    p.add_argument(
        "--registry",
        help=_("ruta o URL del registro (por omisión $AUXILIO_REGISTRY o var/auxilio.db)"),
    )
    p.add_argument(
        "--pubkey",
        help=_(
            "archivo de la clave pública del gateway (por omisión <dir. de claves>/gateway.pub)"
        ),
    )
    p.add_argument(
        "--keys-dir", help=_("directorio de claves (por omisión $AUXILIO_KEYS_DIR o var/keys)")
    )
    p.add_argument(
        "--broker-admin",
        help=_(
            "archivo de administración del broker (por omisión $AUXILIO_BROKER_ADMIN): "
            "el acceso del dispositivo llega al broker en el acto"
        ),
    )
    p.add_argument(
        "--broker-config",
        type=Path,
        help=_(
            "un directorio de `auxilio broker config`: renueva sus usuarios y recarga el broker tras cada registro (brokers sin gestión de usuarios en vivo)"
        ),
    )
    p.add_argument(
        "--actor", help=_("quién aprovisiona, para la bitácora (por omisión $AUXILIO_ACTOR)")
    )
    p.add_argument(
        "--station",
        help=_("nombre de esta estación para la bitácora (por omisión el nombre del equipo)"),
    )


def add_arguments(p: argparse.ArgumentParser) -> None:
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--port", help=_("puerto serie, URL rfc2217:// o número de serie USB"))
    where.add_argument(
        "--batch", metavar="FILE.csv", help=_("una bandeja: una fila por dispositivo (ver README)")
    )
    p.add_argument(
        "--role", choices=["bracelet", "button"], help=_("en qué se convierte el dispositivo")
    )
    p.add_argument(
        "--board", help=_("nombre de placa en boards/ (por omisión: el board.json del dispositivo)")
    )
    p.add_argument(
        "--case",
        help=_("pulsera: referencia de caso seudónima, p. ej. PR-2026-00123 (nunca un nombre)"),
    )
    p.add_argument("--site", help=_("botón: nombre del sitio público"))
    p.add_argument("--lat", help=_("botón: latitud"))
    p.add_argument("--lon", help=_("botón: longitud"))
    p.add_argument("--sector", help=_("botón: sector del C4"))
    p.add_argument(
        "--reassign",
        action="store_true",
        help=_("reaprovisiona un dispositivo asignado a otra persona (clave nueva)"),
    )
    p.add_argument(
        "--force",
        action="store_true",
        help=_("permite una referencia de caso que ya tiene otra pulsera"),
    )
    p.add_argument(
        "--broker",
        default=os.environ.get("AUXILIO_BROKER"),
        help=_("URL del broker al que se conectan los dispositivos (por omisión $AUXILIO_BROKER)"),
    )
    p.add_argument("--tls-ca", type=Path, help=_("la CA del broker (DER) para un broker mqtts://"))
    p.add_argument(
        "--prefix", default="auxilio", help=_("prefijo de temas MQTT (por omisión auxilio)")
    )
    p.add_argument("--wifi-ssid", help=_("nombre de la red Wi-Fi"))
    p.add_argument(
        "--wifi-password",
        default=os.environ.get("AUXILIO_WIFI_PASSWORD"),
        help=_(
            "contraseña Wi-Fi (por omisión $AUXILIO_WIFI_PASSWORD; la línea de órdenes la ven otros usuarios)"
        ),
    )
    p.add_argument("--apn", help=_("APN de LTE"))
    p.add_argument("--sim-pin", default=os.environ.get("AUXILIO_SIM_PIN"), help=argparse.SUPPRESS)
    p.add_argument("--sms-to", help=_("número SMS del C4 (E.164) para el respaldo por SMS"))
    p.add_argument(
        "--heartbeat", type=int, help=_("intervalo de latido en segundos (por omisión el del rol)")
    )
    add_station_arguments(p)
    p.add_argument("--labels", type=Path, default=Path("labels"), help=_("directorio de etiquetas"))
    p.add_argument(
        "--reports", type=Path, help=_("directorio de informes de bandeja (por omisión ./reports)")
    )
    p.add_argument(
        "--broker-credentials",
        type=Path,
        default=os.environ.get("AUXILIO_BROKER_CREDENTIALS"),
        help=_(
            "el acceso al broker de la estación (operator.json): comprueba primero el gateway y hace la prueba en vivo a través de él (por omisión $AUXILIO_BROKER_CREDENTIALS; sin él, no hay prueba en vivo)"
        ),
    )
    p.add_argument(
        "--test-window",
        type=int,
        default=120,
        help=_(
            "segundos que tiene la usuaria para la pulsación de prueba (por omisión 120; el dispositivo limita a 600)"
        ),
    )
    p.add_argument(
        "--no-live-test", action="store_true", help=_("omite la prueba del botón con la usuaria")
    )
    p.add_argument("--boot-timeout", type=float, default=60.0, help=argparse.SUPPRESS)
    p.add_argument("--json", action="store_true", help=_("resultado para máquinas en stdout"))


def _actor(args: argparse.Namespace) -> str:
    from auxilio.cli.devices import _actor as devices_actor

    return devices_actor(args)


def base_request(args: argparse.Namespace, registry: Any) -> dict[str, Any]:
    """The Request fields every row of this run shares (the CLI's options)."""
    from auxilio import keys
    from auxilio.errors import UsageError
    from auxilio.provision.config import network
    from auxilio.provision.run import BOOT_TIMEOUT_S

    if not args.broker:
        raise UsageError("--broker URL is needed (or $AUXILIO_BROKER): what devices connect to")
    pub = keys.load_public_key(args.pubkey or keys.keys_dir(args.keys_dir) / keys.PUBLIC_KEY_FILE)
    ca = None
    if args.tls_ca:
        try:
            ca = args.tls_ca.read_bytes()
        except OSError as exc:
            raise UsageError(f"cannot read {args.tls_ca}: {exc.strerror}") from None
    sync = broker_sync(args, registry)
    out: dict[str, Any] = {
        "broker_url": args.broker,
        "registry": registry,
        "public_key": pub,
        "net": network(
            wifi_ssid=args.wifi_ssid,
            wifi_password=args.wifi_password,
            apn=args.apn,
            sim_pin=args.sim_pin,
            sms_to=args.sms_to,
        )
        or None,
        "tls_ca": ca,
        "prefix": args.prefix,
        "settings": {"heartbeat_s": args.heartbeat} if args.heartbeat else {},
        "actor": _actor(args),
        "label_dir": args.labels,
        "live_test": not args.no_live_test,
        "broker_credentials": args.broker_credentials,
        "test_window_s": args.test_window,
        "boot_timeout": args.boot_timeout or BOOT_TIMEOUT_S,
        "broker_sync": sync,
        "reassign": args.reassign,
        "force": args.force,
    }
    if args.station:
        out["station"] = args.station
    return out


def broker_sync(args: argparse.Namespace, registry: Any) -> Any:
    """How this run tells the broker (--broker-admin authority, --broker-config reload, or not)."""
    from auxilio.broker.lifecycle import load_admin
    from auxilio.provision.run import broker_authority_sync

    admin = load_admin(args.broker_admin)  # read before anything changes
    if admin is not None:
        return broker_authority_sync(admin, registry)
    if args.broker_config:
        return _reload_sync(args.broker_config, registry)
    return None


def _reload_sync(directory: Path, registry: Any) -> Any:
    """Refresh the password file and SIGHUP the broker (until it manages users live)."""
    import threading

    from auxilio.broker.config import refresh_users, reload_broker

    lock = threading.Lock()  # batch rows commit from several threads; one writer at a time

    def sync(_device: int, _password: str | None) -> None:
        with lock:
            refresh_users(directory, registry)
            reload_broker(directory)

    return sync


def run(args: argparse.Namespace) -> int:
    from auxilio.errors import UsageError
    from auxilio.registry import open_registry

    if args.port and not args.role:
        raise UsageError("--port needs --role bracelet|button")
    if args.batch:
        from auxilio.provision.batch import read_batch

        rows = read_batch(args.batch, args.force)  # every row checked before any board
    registry = open_registry(args.registry, create=False)
    try:
        base = base_request(args, registry)
        if args.batch:
            return _run_batch(args, rows, base)
        return _run_one(args, base)
    finally:
        registry.close()


def _say_to(args: argparse.Namespace) -> Any:
    stream = sys.stderr if args.json else sys.stdout

    def say(line: str) -> None:
        stream.write(line + "\n")
        stream.flush()

    return say


def _run_one(args: argparse.Namespace, base: dict[str, Any]) -> int:
    from auxilio.provision.run import Request, provision, resolve_port

    req = Request(
        port=resolve_port(args.port),
        role=args.role,
        board=args.board,
        case=args.case,
        site=args.site,
        lat=args.lat,
        lon=args.lon,
        sector=args.sector,
        **base,
    )
    res = provision(req, _say_to(args))
    if args.json:
        print(json.dumps(res.as_dict()))
        return 0
    _summary(res)
    return 0


def _summary(res: Any) -> None:
    from rich.console import Console
    from rich.table import Table

    from auxilio.provision import label
    from auxilio.words import word

    t = Table(title=_("Aprovisionamiento"), show_header=False)
    for k, val in (
        (N_("Dispositivo"), res.device + (f" ({_('retomado')})" if res.resumed else "")),
        (N_("Tipo"), word(res.role)),
        (N_("Placa"), res.board),
        (N_("Puerto"), res.port),
        (N_("MAC"), res.mac or "—"),
        (N_("Época de clave"), str(res.key_epoch)),
        (N_("Piso de contador"), str(res.counter_floor) if res.counter_floor else "—"),
        (N_("Config. sha256"), res.config_sha256 or "—"),
        (N_("Asignación"), res.assignment or "—"),
        (N_("Arranque (s)"), f"{res.boot_s:.1f}" if res.boot_s is not None else "—"),
        (N_("Primer latido (s)"), f"{res.heartbeat_s:.1f}" if res.heartbeat_s is not None else "—"),
        (N_("Prueba (ms)"), f"{res.test_ms:.0f}" if res.test_ms is not None else "—"),
        (N_("Etiqueta"), f"{res.label_png}\n{res.label_svg}"),
    ):
        t.add_row(_(k), val)
    con = Console(soft_wrap=False)
    con.print(t)
    sys.stdout.write(label.terminal(res.device))
    sys.stdout.flush()


def _run_batch(args: argparse.Namespace, rows: list[Any], base: dict[str, Any]) -> int:
    from auxilio.provision.batch import run_batch

    result = run_batch(rows, base, _say_to(args), reports_dir=args.reports)
    if args.json:
        for r in result.results:
            print(json.dumps(r))
    else:
        sys.stdout.write(f"{result.ok}/{len(result.results)} ok → {result.csv}\n")
    return 0 if result.ok == len(result.results) else 1
