"""`auxilio monitor`: live console of alerts, C4 events and device health; `--once` prints one snapshot."""

from __future__ import annotations

import argparse
import getpass
import os


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--registry", default=None, help="registry path or URL (default $AUXILIO_REGISTRY)"
    )
    p.add_argument(
        "--broker",
        default=os.environ.get("AUXILIO_BROKER", "mqtt://127.0.0.1:1883"),
        help="broker of the running gateway (for attend)",
    )
    p.add_argument("--operator", default=None, help="operator name recorded when attending")
    p.add_argument(
        "--broker-credentials",
        default=os.environ.get("AUXILIO_BROKER_CREDENTIALS"),
        metavar="FILE",
        help='JSON {"username", "password"} for the broker (keeps the password off the command line)',
    )
    p.add_argument("--prefix", default="auxilio", help="topic prefix")
    p.add_argument("--limit", type=int, default=15, help="rows per table")
    p.add_argument("--once", action="store_true", help="print one snapshot and exit")
    p.add_argument("--json", action="store_true", help="with --once: print the snapshot as JSON")


def run(args: argparse.Namespace) -> int:
    from auxilio.broker.url import parse_broker_url, with_credentials
    from auxilio.monitor import print_once, run_live
    from auxilio.registry import open_registry

    # Consoles read the registry, never write it (DESIGN §1): attends go to the gateway.
    registry = open_registry(args.registry, readonly=True)
    try:
        if args.once:
            print_once(registry, args.limit, args.json)
            return 0
        parse_broker_url(args.broker)
        broker = with_credentials(args.broker, args.broker_credentials)
        run_live(registry, broker, args.operator or getpass.getuser(), args.prefix, args.limit)
    finally:
        registry.close()
    return 0
