"""`auxilio monitor`: the operator console (queue, context, events; attend and close); `--once` prints one snapshot."""

from __future__ import annotations

import argparse
import getpass
import os

from auxilio.i18n import _

# Rows per list at most (each refresh reads this many per list).
MAX_LIMIT = 500


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--registry",
        default=None,
        help=_(
            "ruta o URL del registro (por omisión $AUXILIO_REGISTRY o var/auxilio.db); nunca se crea"
        ),
    )
    p.add_argument(
        "--broker",
        default=os.environ.get("AUXILIO_BROKER", "mqtt://127.0.0.1:1883"),
        help=_("broker de la pasarela en marcha (para atender)"),
    )
    p.add_argument(
        "--operator",
        default=None,
        help=_("nombre del operador para atender y cerrar (por omisión: el usuario de la sesión)"),
    )
    p.add_argument(
        "--broker-credentials",
        default=os.environ.get("AUXILIO_BROKER_CREDENTIALS"),
        metavar="FILE",
        help=_(
            'JSON {"username", "password"} del broker (la contraseña no va en la línea de órdenes)'
        ),
    )
    p.add_argument("--prefix", default="auxilio", help=_("prefijo de los temas MQTT"))
    p.add_argument(
        "--limit", type=int, default=15, help=_("filas por lista (1-{n})").format(n=MAX_LIMIT)
    )
    p.add_argument("--once", action="store_true", help=_("imprime una sola vista y termina"))
    p.add_argument("--json", action="store_true", help=_("con --once: la vista en JSON"))


def run(args: argparse.Namespace) -> int:
    import sys

    from auxilio.broker.url import parse_broker_url, with_credentials
    from auxilio.console.outcomes import open_readonly
    from auxilio.errors import UsageError

    if args.json and not args.once:
        raise UsageError("--json prints a snapshot: use it with --once")
    if not 1 <= args.limit <= MAX_LIMIT:
        raise UsageError(f"--limit must be between 1 and {MAX_LIMIT}")
    operator = args.operator or getpass.getuser()
    if not args.once:
        from auxilio.registry.validate import actor

        actor(operator)  # recorded with attends and closes: refused before anything starts
        if not (sys.stdin.isatty() and sys.stdout.isatty()):
            raise UsageError("the live console needs a terminal; use --once [--json] in scripts")
        parse_broker_url(args.broker)
    # Consoles read the registry, never write what the gateway owns (DESIGN §1);
    # a registry that does not exist is an error, never a new empty file.
    registry = open_readonly(args.registry)
    try:
        if args.once:
            from auxilio.console.view import print_once

            print_once(registry, args.limit, args.json)
            return 0
        import logging

        from auxilio.console.app import run_live
        from auxilio.console.outcomes import Closer
        from auxilio.errors import AuxilioError

        broker = with_credentials(args.broker, args.broker_credentials)
        try:
            closer: Closer | None = Closer(args.registry)
        except AuxilioError as exc:  # a console that may only read still monitors and attends
            logging.getLogger(__name__).warning("monitor: closing alerts unavailable: %s", exc)
            closer = None
        try:
            run_live(registry, broker, operator, args.prefix, args.limit, closer)
        finally:
            if closer is not None:
                closer.dispose()
    finally:
        registry.close()
    return 0
