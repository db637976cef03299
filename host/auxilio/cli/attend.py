"""`auxilio attend ALERT_ID`: an operator takes an alert; the wearer feels the long "help is coming" pulse."""

from __future__ import annotations

import argparse
import getpass
import json
import os


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "alert_id", type=int, metavar="ALERT_ID", help="alert id (see `auxilio monitor`)"
    )
    p.add_argument(
        "--operator", default=None, help="operator name for the audit log (default: login name)"
    )
    p.add_argument(
        "--registry", default=None, help="registry path or URL (default $AUXILIO_REGISTRY)"
    )
    p.add_argument(
        "--broker",
        default=os.environ.get("AUXILIO_BROKER", "mqtt://127.0.0.1:1883"),
        help="broker of the running gateway, which signs the ACK",
    )
    p.add_argument(
        "--broker-credentials",
        default=os.environ.get("AUXILIO_BROKER_CREDENTIALS"),
        metavar="FILE",
        help='JSON {"username", "password"} for the broker (keeps the password off the command line)',
    )
    p.add_argument("--prefix", default="auxilio", help="topic prefix")
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def run(args: argparse.Namespace) -> int:
    from auxilio.gateway.control import attend
    from auxilio.gateway.service import parse_broker_url, with_credentials
    from auxilio.i18n import _
    from auxilio.monitor import REFRESH_S  # noqa: F401 - registers the English catalogue
    from auxilio.protocol import codec
    from auxilio.registry import open_registry

    parse_broker_url(args.broker)
    broker = with_credentials(args.broker, args.broker_credentials)
    operator = args.operator or getpass.getuser()
    registry = open_registry(args.registry)
    try:
        row = attend(registry, args.alert_id, operator, broker, args.prefix)
    finally:
        registry.close()
    device = codec.device_str(row["device_id"])
    if args.json:
        print(
            json.dumps(
                {
                    "alert": row["id"],
                    "device": device,
                    "counter": row["counter"],
                    "operator": row["attending_by"],
                }
            )
        )
    else:
        print(
            _("Alerta {id} ({device} #{counter}) atendida por {op}").format(
                id=row["id"], device=device, counter=row["counter"], op=row["attending_by"]
            )
        )
    return 0
