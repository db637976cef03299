"""`auxilio gateway`: run the C4 gateway (verify, store durably, ACK, supervise, forward)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--broker",
        default=os.environ.get("AUXILIO_BROKER", "mqtt://127.0.0.1:1883"),
        help="mqtt://[user:pass@]host:port or mqtts://…",
    )
    p.add_argument(
        "--registry",
        default=None,
        help="registry path or URL (default $AUXILIO_REGISTRY or var/auxilio.db)",
    )
    p.add_argument(
        "--keys",
        default=None,
        metavar="FILE",
        help="gateway private key file (default var/keys/gateway.key)",
    )
    p.add_argument(
        "--forward",
        nargs="+",
        metavar=("jsonl|webhook", "URL"),
        default=None,
        help="forward alerts: 'jsonl' (stdout) or 'webhook URL'",
    )
    p.add_argument(
        "--queue",
        default="var/forward-queue",
        metavar="DIR",
        help="durable webhook queue directory",
    )
    p.add_argument(
        "--broker-credentials",
        default=os.environ.get("AUXILIO_BROKER_CREDENTIALS"),
        metavar="FILE",
        help='JSON {"username", "password"} for the broker (keeps the password off the command line)',
    )
    p.add_argument("--prefix", default="auxilio", help="topic prefix")
    p.add_argument(
        "--client-id", default="auxilio-gateway", help="MQTT client id (persistent session)"
    )
    p.add_argument(
        "--grace", type=float, default=None, metavar="S", help="supervision grace seconds"
    )


def run(args: argparse.Namespace) -> int:
    from auxilio.errors import UsageError
    from auxilio.gateway import Gateway, parse_broker_url
    from auxilio.gateway.forward import make_forwarder
    from auxilio.gateway.service import with_credentials
    from auxilio.gateway.supervision import GRACE_S
    from auxilio.keys import load_private_key
    from auxilio.registry import open_registry

    parse_broker_url(args.broker)  # a bad URL is one line, exit 2, before anything starts
    broker = with_credentials(args.broker, args.broker_credentials)
    fwd = args.forward or []
    if len(fwd) > 2 or (fwd and fwd[0] == "jsonl" and len(fwd) != 1):
        raise UsageError("--forward takes 'jsonl' or 'webhook URL'")
    key = load_private_key(args.keys)
    registry = open_registry(args.registry)
    forwarder = make_forwarder(
        fwd[0] if fwd else None, fwd[1] if len(fwd) > 1 else None, Path(args.queue)
    )
    gw = Gateway(
        registry,
        key,
        broker,
        prefix=args.prefix,
        client_id=args.client_id,
        forwarder=forwarder,
        grace_s=GRACE_S if args.grace is None else args.grace,
    )
    try:
        gw.run()
    finally:
        registry.close()
    return 0
