"""`auxilio close ALERT --outcome …`: an operator records what became of an alert (audited).

Writes one row to `outcomes` and nothing else (the console's one write; the
gateway owns alerts and attend state). The alert need not have been attended:
the record then says it was closed unattended. A closed alert is corrected
with --amend (a new revision; nothing is overwritten).
"""

from __future__ import annotations

import argparse
import getpass
import json
import os

from auxilio.i18n import _


def add_arguments(p: argparse.ArgumentParser) -> None:
    from auxilio.registry.schema import OUTCOMES

    p.add_argument("alert_id", metavar="ALERT", help=_("id de la alerta (ver `auxilio monitor`)"))
    p.add_argument(
        "--outcome",
        required=True,
        choices=OUTCOMES,
        help=_("resolved (llegó la ayuda: un reporte efectivo), false_alarm, no_contact, test"),
    )
    p.add_argument("--note", default="", help=_("una línea para el expediente (nunca un nombre)"))
    p.add_argument(
        "--operator",
        default=None,
        help=_(
            "quién la cierra, para la bitácora (por omisión $AUXILIO_ACTOR o el usuario de la sesión)"
        ),
    )
    p.add_argument(
        "--amend", action="store_true", help=_("corrige el desenlace de una alerta ya cerrada")
    )
    p.add_argument(
        "--registry",
        default=None,
        help=_(
            "ruta o URL del registro (por omisión $AUXILIO_REGISTRY o var/auxilio.db); "
            "en PostgreSQL, el usuario del rol de consola"
        ),
    )
    p.add_argument("--json", action="store_true", help=_("el desenlace en JSON"))


def run(args: argparse.Namespace) -> int:
    from auxilio.console.outcomes import Closer, alert_number

    alert_id = alert_number(args.alert_id)  # a bad id is refused before the registry is opened
    operator = args.operator or os.environ.get("AUXILIO_ACTOR") or getpass.getuser()
    with Closer(args.registry) as closer:
        done = closer.close_alert(alert_id, args.outcome, operator, args.note, amend=args.amend)
    print(json.dumps(done.public(), sort_keys=True) if args.json else done.message())
    return 0
