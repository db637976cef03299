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


def add_arguments(p: argparse.ArgumentParser) -> None:
    from auxilio.registry.schema import OUTCOMES

    p.add_argument("alert_id", metavar="ALERT", help="alert id (see `auxilio monitor`)")
    p.add_argument(
        "--outcome",
        required=True,
        choices=OUTCOMES,
        help="resolved (help arrived: an effective report), false_alarm, no_contact, test",
    )
    p.add_argument("--note", default="", help="one line for the record (never a name)")
    p.add_argument(
        "--operator",
        default=None,
        help="who closes it, for the audit log (default $AUXILIO_ACTOR or the login name)",
    )
    p.add_argument(
        "--amend", action="store_true", help="correct the outcome of an alert already closed"
    )
    p.add_argument(
        "--registry",
        default=None,
        help="registry path or URL (default $AUXILIO_REGISTRY or var/auxilio.db); "
        "on PostgreSQL the console role's login",
    )
    p.add_argument("--json", action="store_true", help="print the outcome row as JSON")


def run(args: argparse.Namespace) -> int:
    from auxilio.console.outcomes import Closer, alert_number

    alert_id = alert_number(args.alert_id)  # a bad id is refused before the registry is opened
    operator = args.operator or os.environ.get("AUXILIO_ACTOR") or getpass.getuser()
    with Closer(args.registry) as closer:
        done = closer.close_alert(alert_id, args.outcome, operator, args.note, amend=args.amend)
    print(json.dumps(done.public(), sort_keys=True) if args.json else done.message())
    return 0
