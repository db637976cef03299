"""`auxilio gateway`: run the C4 gateway (verify, store durably, ACK, supervise, forward);
`auxilio gateway status`: what it has not delivered yet, read from the registry.

Exit codes beyond the usual ones: 5 when the broker refuses the gateway's
credentials (retrying cannot help), 6 when the JSONL consumer on stdout went
away (the supervisor restarts the gateway; the backlog is resent).
"""

from __future__ import annotations

import argparse
import os


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "action",
        nargs="?",
        choices=("run", "status"),
        default="run",
        help="run the gateway (default), or show its backlog and dead letters",
    )
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
        "--broker-credentials",
        default=os.environ.get("AUXILIO_BROKER_CREDENTIALS"),
        metavar="FILE",
        help='JSON {"username", "password"} for the broker (keeps the password off the command line)',
    )
    p.add_argument("--prefix", default="auxilio", help="topic prefix")
    p.add_argument(
        "--client-id",
        default=None,
        help="MQTT client id of the persistent session (default: the broker username, "
        "else auxilio-gateway)",
    )
    p.add_argument(
        "--grace", type=float, default=None, metavar="S", help="supervision grace seconds"
    )
    p.add_argument(
        "--metrics",
        default=None,
        metavar="HOST:PORT",
        help="serve Prometheus metrics (e.g. 127.0.0.1:9464)",
    )
    p.add_argument(
        "--retention-days",
        type=int,
        default=None,
        metavar="N",
        help="erase alert locations older than N days (default 90; 0 keeps them)",
    )
    p.add_argument(
        "--assume-clock-synced",
        action="store_true",
        help="trust this host's clock even if the kernel reports it unsynchronised",
    )
    p.add_argument(
        "--sms-inbox",
        metavar="DIR",
        help="take SMS alerts from a gammu-smsd 'files' inbox (a USB modem at the C4)",
    )
    p.add_argument(
        "--sms-http",
        metavar="HOST:PORT",
        help="take SMS alerts from an aggregator's inbound webhook (POST, bearer token)",
    )
    p.add_argument(
        "--sms-token-file",
        metavar="FILE",
        help="the webhook's bearer token (one line; required with --sms-http)",
    )
    p.add_argument(
        "--selftest-every",
        type=float,
        default=None,
        metavar="DAYS",
        help="ask each device in service for a silent self-test (a TEST frame) every DAYS days; "
        "a device that misses it is a SELFTEST_MISSED event",
    )
    p.add_argument("--json", action="store_true", help="status: print JSON")


def run(args: argparse.Namespace) -> int:
    if args.action == "status":
        return _status(args)
    from auxilio.broker.url import parse_broker_url, with_credentials
    from auxilio.errors import UsageError
    from auxilio.gateway import Gateway
    from auxilio.gateway.clock import ClockState
    from auxilio.gateway.forward import make_sink
    from auxilio.gateway.retention import DEFAULT_RETENTION_DAYS
    from auxilio.gateway.supervision import GRACE_S
    from auxilio.keys import load_private_key
    from auxilio.registry import open_registry

    parse_broker_url(args.broker)  # a bad URL is one line, exit 2, before anything starts
    broker = with_credentials(args.broker, args.broker_credentials)
    fwd = args.forward or []
    if len(fwd) > 2 or (fwd and fwd[0] == "jsonl" and len(fwd) != 1):
        raise UsageError("--forward takes 'jsonl' or 'webhook URL'")
    retention = DEFAULT_RETENTION_DAYS if args.retention_days is None else args.retention_days
    if retention < 0:
        raise UsageError("--retention-days must be 0 (keep) or more")
    if args.selftest_every is not None and not 0 < args.selftest_every <= 366:
        raise UsageError("--selftest-every must be more than 0 and at most 366 days")
    sink = make_sink(fwd[0] if fwd else None, fwd[1] if len(fwd) > 1 else None)
    sms_sources = _sms_sources(args)
    key = load_private_key(args.keys)
    registry = open_registry(args.registry)
    _gateway_logging(args.verbose)
    gw = Gateway(
        registry,
        key,
        broker,
        prefix=args.prefix,
        client_id=args.client_id,
        sink=sink,
        grace_s=GRACE_S if args.grace is None else args.grace,
        clock_state=ClockState(True if args.assume_clock_synced else None),
        retention_days=retention,
        metrics=args.metrics,
        sms_sources=sms_sources,
        selftest_every_s=None if args.selftest_every is None else args.selftest_every * 86400,
    )
    try:
        gw.run()
    finally:
        registry.close()
    return 0


def _sms_sources(args: argparse.Namespace) -> list:
    from auxilio.errors import UsageError
    from auxilio.gateway.sms import GammuInbox, HttpSmsSource

    sources: list = []
    if args.sms_inbox:
        sources.append(GammuInbox(args.sms_inbox))
    if args.sms_http:
        if not args.sms_token_file:
            raise UsageError("--sms-http needs --sms-token-file (the webhook's bearer token)")
        try:
            token = open(args.sms_token_file).read().strip()
        except OSError as exc:
            raise UsageError(f"cannot read {args.sms_token_file}: {exc.strerror}") from None
        sources.append(HttpSmsSource(args.sms_http, token))
    return sources


def _gateway_logging(verbose: int) -> None:
    """The gateway's own lines (start-up, summaries, state changes) show at the default level."""
    import logging

    if verbose == 0:
        logging.getLogger("auxilio.gateway").setLevel(logging.INFO)


def _status(args: argparse.Namespace) -> int:
    import json

    from auxilio.gateway.status import gateway_status, render_status
    from auxilio.registry import open_registry

    registry = open_registry(args.registry, readonly=True)
    try:
        st = gateway_status(registry)
    finally:
        registry.close()
    print(json.dumps(st, sort_keys=True) if args.json else render_status(st))
    return 0
