"""`auxilio rotate-key --port P`: a device in service gets a new secret (key epoch + 1) over serial.

A thin shell over auxilio.provision.rotate. A sibling of `auxilio provision`
(same station options: registry, gateway key, broker admin, actor, station)
rather than one of its flags: it takes none of provision's creation options
(role, case, broker URL, Wi-Fi), since the device keeps its own config and
only its identity changes. `auxilio devices rekey ID` is the registry-only
re-key for a device that is not on the station's serial port.
"""

from __future__ import annotations

import argparse
import json

from auxilio.i18n import N_, _


def add_arguments(p: argparse.ArgumentParser) -> None:
    from auxilio.cli.provision import add_station_arguments
    from auxilio.lifecycle import DEFAULT_REKEY_GRACE_S

    p.add_argument(
        "--port", required=True, help=_("puerto serie, URL rfc2217:// o número de serie USB")
    )
    p.add_argument(
        "--grace",
        type=float,
        default=DEFAULT_REKEY_GRACE_S,
        metavar="SECONDS",
        help=_(
            "segundos que aún valen las tramas con la clave anterior (por omisión {s}; 0: ninguna)"
        ).format(s=DEFAULT_REKEY_GRACE_S),
    )
    add_station_arguments(p)
    p.add_argument("--boot-timeout", type=float, default=60.0, help=argparse.SUPPRESS)
    p.add_argument("--json", action="store_true", help=_("resultado para máquinas en stdout"))


def run(args: argparse.Namespace) -> int:
    from auxilio import keys
    from auxilio.cli.provision import _actor, _say_to, broker_sync
    from auxilio.provision.rotate import RotateRequest, rotate_key
    from auxilio.provision.run import resolve_port
    from auxilio.registry import open_registry
    from auxilio.registry import validate as v

    v.rekey_grace(args.grace)
    pub = keys.load_public_key(args.pubkey or keys.keys_dir(args.keys_dir) / keys.PUBLIC_KEY_FILE)
    port = resolve_port(args.port)
    registry = open_registry(args.registry, create=False)
    try:
        req = RotateRequest(
            port=port,
            registry=registry,
            public_key=pub,
            grace_s=args.grace,
            actor=_actor(args),
            broker_sync=broker_sync(args, registry),
            boot_timeout=args.boot_timeout,
        )
        if args.station:
            req.station = args.station
        res = rotate_key(req, _say_to(args))
    finally:
        registry.close()
    if args.json:
        print(json.dumps(res.as_dict()))
    else:
        _summary(res)
    return 0


def _summary(res: object) -> None:
    from rich.console import Console
    from rich.table import Table

    r = res.__dict__
    t = Table(title=_("Rotación de clave"), show_header=False)
    for k, val in (
        (N_("Dispositivo"), r["device"] + (f" ({_('retomado')})" if r["resumed"] else "")),
        (N_("Puerto"), r["port"]),
        (N_("Época de clave"), f"{r['old_epoch']} → {r['key_epoch']}"),
        (N_("Clave anterior válida hasta"), r["grace_until"] or "—"),
        (N_("Config. sha256"), r["config_sha256"] or "—"),
        (N_("Arranque (s)"), f"{r['boot_s']:.1f}" if r["boot_s"] is not None else "—"),
    ):
        t.add_row(_(k), val)
    Console(soft_wrap=False).print(t)
