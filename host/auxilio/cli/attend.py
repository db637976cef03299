"""`auxilio attend ALERT_ID`: an operator takes an alert; the wearer feels the long "help is coming" pulse.

Exit 0 only when the gateway answered `sent` (it signed the `attending` ACK and
the broker took it); 1 when it refused (the reason is printed); 4 when the
broker or the gateway could not be reached (nothing is attended then).
"""

from __future__ import annotations

import argparse
import getpass
import json

from auxilio.cli import add_console_broker
from auxilio.i18n import _


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "alert_id", metavar="ALERT_ID", help=_("id de la alerta (ver `auxilio monitor`)")
    )
    p.add_argument(
        "--operator",
        default=None,
        help=_("nombre del operador para la bitácora (por omisión: el usuario de la sesión)"),
    )
    add_console_broker(p, _("broker de la pasarela en marcha, que firma el ACK"))
    p.add_argument(
        "--wait",
        type=float,
        default=10.0,
        metavar="S",
        help=_("segundos de espera por la pasarela"),
    )
    p.add_argument("--json", action="store_true", help=_("el resultado en JSON"))


def run(args: argparse.Namespace) -> int:
    from auxilio.broker.url import parse_broker_url, with_credentials
    from auxilio.console.view import attend_message
    from auxilio.errors import ConnectionFailed, UsageError
    from auxilio.gateway.control import SENT, request_attend
    from auxilio.i18n import _

    try:
        alert_id = int(args.alert_id)
    except ValueError:
        raise UsageError(f"alert id must be a number, not {args.alert_id!r}") from None
    if not 1 <= alert_id < 1 << 63:
        raise UsageError("alert id must be a positive number below 2^63")
    parse_broker_url(args.broker)
    broker = with_credentials(args.broker, args.broker_credentials)
    operator = args.operator or getpass.getuser()
    res = request_attend(broker, alert_id, operator, args.prefix, result_timeout=args.wait)
    if args.json:
        print(
            json.dumps(
                {
                    "alert": alert_id,
                    "request": res.request,
                    "state": res.state,
                    "reason": res.reason,
                    "operator": operator,
                }
            )
        )
    else:
        print(attend_message(alert_id, res.state, res.reason, operator))
    if res.state == SENT:
        return 0
    if res.state == "requested":
        raise ConnectionFailed(
            _("la pasarela no respondió en {s:.0f} s (solicitud {r} en espera)").format(
                s=args.wait, r=res.request
            )
        )
    return 1
