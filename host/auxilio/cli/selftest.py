"""`auxilio selftest --device ID`: the device sends a TEST frame through the gateway, and back.

Exit 0 only when the TEST came back (verified, stored as a test, acked; never
forwarded as an alert). 1 when the gateway refused or the device stayed
silent, 3 for a device the gateway does not know, 4 when the broker or the
gateway could not be reached. A thin shell over auxilio.selftest.
"""

from __future__ import annotations

import argparse
import getpass
import json

from auxilio.cli import add_console_broker
from auxilio.i18n import _


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--device", required=True, metavar="ID", help=_("id impreso del dispositivo (XXXX-XXXX)")
    )
    add_console_broker(p, _("broker de la pasarela en marcha, que firma la configuración"))
    p.add_argument(
        "--window",
        type=int,
        default=None,
        metavar="S",
        help=_(
            "abre una ventana de prueba de S segundos (máx. 600): la siguiente pulsación de "
            "la usuaria envía una prueba, no una alerta"
        ),
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=None,
        metavar="S",
        help=_("segundos de espera por la prueba"),
    )
    p.add_argument(
        "--operator",
        default=None,
        help=_("nombre del operador para la bitácora (por omisión: el usuario de la sesión)"),
    )
    p.add_argument("--json", action="store_true", help=_("el resultado en JSON"))


def message(res: object) -> str:
    """One line, Spanish first, for field staff."""
    from auxilio.selftest import FAILED, MISSED, NO_ANSWER, RECEIVED, TIMEOUT

    state = getattr(res, "state", "")
    dev = getattr(res, "device", "")
    if state == RECEIVED:
        line = _("{d}: prueba recibida por el C4 en {ms:.0f} ms (registrada como prueba)").format(
            d=dev, ms=res.round_trip_ms or 0.0
        )
        if res.press_to_store_ms is not None:
            line += _("; de la pulsación al registro: {ms:.0f} ms").format(ms=res.press_to_store_ms)
        return line
    if state == FAILED:
        return _("{d}: la pasarela rechazó la prueba ({r})").format(d=dev, r=res.reason)
    if state in (TIMEOUT, MISSED):
        return _("{d}: el dispositivo no envió su prueba a tiempo").format(d=dev)
    if state == NO_ANSWER:
        return _("{d}: la pasarela no respondió").format(d=dev)
    return f"{dev}: {state}"


def progress(mode: str, seconds: int | None) -> object:
    """on_state for request_selftest: one line per step, for staff at a provisioning table."""

    def show(answer: dict) -> None:
        if answer.get("state") != "sent":
            return
        d = answer.get("device", "")
        print(
            _(
                "{d}: solicitud firmada y entregada al broker (configuración {n}); esperando la prueba…"
            ).format(d=d, n=answer.get("config_seq")),
            flush=True,
        )
        if mode == "window":
            print(
                _(
                    "{d}: ventana de prueba de {s} s: pida a la usuaria que mantenga pulsado el botón"
                ).format(d=d, s=seconds),
                flush=True,
            )

    return show


def run(args: argparse.Namespace) -> int:
    from auxilio.errors import ConnectionFailed, NotFoundError
    from auxilio.selftest import FAILED, NO_ANSWER, RECEIVED, WINDOW_DEFAULT_S, request_selftest

    mode = "window" if args.window is not None else "now"
    res = request_selftest(
        args.broker,
        args.broker_credentials,
        args.prefix,
        args.device,
        mode=mode,
        seconds=args.window,
        timeout=args.timeout,
        operator=args.operator or getpass.getuser(),
        on_state=None if args.json else progress(mode, args.window or WINDOW_DEFAULT_S),
    )
    if args.json:
        print(json.dumps(res.as_dict()))
    if res.state == NO_ANSWER:
        raise ConnectionFailed(_("la pasarela no respondió (¿está en marcha?)"))
    if res.state == FAILED and res.reason == "unknown_device":
        raise NotFoundError(_("dispositivo desconocido: {d}").format(d=res.device))
    if not args.json:
        print(message(res))
    return 0 if res.state == RECEIVED else 1
