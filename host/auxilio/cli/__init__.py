"""The `auxilio` command: a table of thin subcommands over the library.

Each entry names a module in this package that defines ``add_arguments(parser)``
and ``run(args) -> int``. Modules import heavy libraries inside ``run`` so that
``auxilio --help`` stays fast. Errors derived from ``AuxilioError`` become one
line on stderr and a non-zero exit; a traceback means a bug in Auxilio.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence

from auxilio import __version__
from auxilio.errors import AuxilioError, ConnectionFailed
from auxilio.i18n import N_, _, localise_argparse

# (command, module, one-line help). Add a command by adding a row and a module.
COMMANDS: list[tuple[str, str, str]] = [
    ("decode", "decode", "decode and verify one frame given the device secret"),
    ("demo", "demo", "run the end-to-end demo"),
    ("keys", "keys", "gateway keypair: init, show the public key"),
    (
        "devices",
        "devices",
        N_("registro de dispositivos: alta, lista, ficha, asignar, revocar, ..."),
    ),
    ("gateway", "gateway", "run the C4 gateway: verify, store, ack, forward"),
    ("monitor", "monitor", N_("consola en vivo de alertas y salud de los dispositivos")),
    ("attend", "attend", N_("marca una alerta como atendida por un operador")),
    (
        "selftest",
        "selftest",
        N_("pide a un dispositivo una trama de prueba por la pasarela (nunca una alerta)"),
    ),
    (
        "close",
        "close",
        N_("registra el desenlace de una alerta (resuelta, falsa alarma, ...), en la bitácora"),
    ),
    (
        "report",
        "report",
        N_("informe del programa: alertas por mes y desenlace, tiempos de atención, dispositivos"),
    ),
    ("broker", "broker", "mosquitto config and runner"),
    ("emulate", "emulate", "run virtual boards (real firmware on the unix port)"),
    ("vboard", "vboard", "control a running virtual board (press, battery, power...)"),
    ("ports", "ports", "serial ports that look like boards (virtual ones too)"),
    ("flash", "flash", "flash MicroPython and the app onto one board or a whole tray"),
    ("deploy", "deploy", "install the application on a board running MicroPython"),
    (
        "provision",
        "provision",
        N_("una pasada: identidad, registro, configuración, prueba en vivo, etiqueta"),
    ),
    (
        "rotate-key",
        "rotate_key",
        N_("clave nueva para un dispositivo en servicio, por su puerto serie (con gracia)"),
    ),
    ("factory-test", "factory_test", "hardware self-test of a flashed board over its REPL"),
    ("modem-check", "modem_check", "check a board's modem: SIM, network, signal, data, GNSS, SMS"),
    ("power-budget", "power_budget", "battery life projection from datasheet currents x emulation"),
]


def add_console_broker(p: argparse.ArgumentParser, broker_help: str) -> None:
    """--broker, --broker-credentials and --prefix of a console that asks the running gateway."""
    p.add_argument(
        "--broker",
        default=os.environ.get("AUXILIO_BROKER", "mqtt://127.0.0.1:1883"),
        help=broker_help,
    )
    p.add_argument(
        "--broker-credentials",
        default=os.environ.get("AUXILIO_BROKER_CREDENTIALS"),
        metavar="FILE",
        help=_('JSON {"username", "password"} (operator.json de `auxilio broker config`)'),
    )
    p.add_argument("--prefix", default="auxilio", help=_("prefijo de los temas MQTT"))


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage errors as one line and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"error: {message}\n")
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    localise_argparse()
    parser = _Parser(prog="auxilio", description="Auxilio panic-alert device toolkit")
    parser.add_argument("--version", action="version", version=f"auxilio {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, module_name, help_text in COMMANDS:
        try:
            module = importlib.import_module(f"auxilio.cli.{module_name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"auxilio.cli.{module_name}":
                continue  # command not built yet
            raise
        p = sub.add_parser(name, help=_(help_text), description=_(help_text))
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING - 10 * min(args.verbose, 2),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    run = getattr(args, "_run", None)
    if run is None:
        parser.print_help()
        return 2
    try:
        return int(run(args) or 0)
    except AuxilioError as exc:
        sys.stderr.write(f"error: {exc}\n")
        for line in exc.details:
            sys.stderr.write(f"  {line}\n")
        return exc.exit_code
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return 130
    except BrokenPipeError:
        return 0
    except Exception as exc:
        line = database_error(exc)
        if line is None:
            raise  # anything else is a bug in Auxilio: keep its traceback
        sys.stderr.write(f"error: {line}\n")
        return ConnectionFailed.exit_code


# SQLSTATEs (PostgreSQL appendix A) that mean "this login may not write here", not a bug:
# 42501 insufficient_privilege (a console role's grants), 25006 read_only_sql_transaction.
_REFUSED_SQLSTATES = ("42501", "25006")


def database_error(exc: BaseException) -> str | None:
    """One line for a registry the environment refuses (read-only, locked, full, gone), else None.

    Only operational errors are mapped (sqlalchemy's OperationalError and the
    two SQLSTATEs above): an IntegrityError or a ProgrammingError from our own
    SQL is a bug and must keep its traceback. Any transaction in flight was
    rolled back, so nothing changed.
    """
    import sqlite3

    sa_exc = sys.modules.get("sqlalchemy.exc")
    orig: BaseException = exc
    if sa_exc is not None and isinstance(exc, sa_exc.DBAPIError):
        orig = exc.orig if exc.orig is not None else exc
        sqlstate = getattr(orig, "sqlstate", None)
        if not isinstance(exc, sa_exc.OperationalError) and sqlstate not in _REFUSED_SQLSTATES:
            return None
    elif not isinstance(exc, sqlite3.OperationalError):
        return None
    lines = str(orig).strip().splitlines()
    reason = lines[0] if lines else type(orig).__name__
    hint = ""
    if "readonly" in reason or "read-only" in reason or "permission denied" in reason:
        hint = " (this registry, or this login, may not be written: nothing was changed)"
    return f"registry: {reason}{hint}"


if __name__ == "__main__":
    sys.exit(main())
