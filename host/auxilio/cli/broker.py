"""`auxilio broker config|run`: mosquitto config from the registry, and a runner (amqtt fallback)."""

from __future__ import annotations

import argparse
import json

from auxilio.broker.config import DEFAULT_PORT, DEFAULT_TLS_PORT

# Where `broker config` writes and `broker run` looks, when --out/--dir is not given.
DEFAULT_BROKER_DIR = "var/broker"


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--registry", help="registry path or URL (default $AUXILIO_REGISTRY or var/auxilio.db)"
    )
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help="plain MQTT listener port")
    p.add_argument("--bind", default="127.0.0.1", help="listener address (default 127.0.0.1)")
    p.add_argument("--tls-cert", help="server certificate (PEM) for a TLS listener")
    p.add_argument("--tls-key", help="server private key (PEM) for the TLS listener")
    p.add_argument("--tls-ca", help="CA file, to require client certificates on TLS")
    p.add_argument("--tls-port", type=int, default=DEFAULT_TLS_PORT, help="TLS listener port")
    p.add_argument("--tls-bind", help="TLS listener address (default: --bind)")
    p.add_argument("--prefix", default="auxilio", help="topic prefix")
    p.add_argument("--gateway-user", default="gateway", help="the gateway's MQTT user name")
    p.add_argument(
        "--run-as",
        help="system user mosquitto drops to when started as root (default: mosquitto)",
    )


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="broker_cmd", metavar="ACTION", required=True)
    c = sub.add_parser("config", help="write mosquitto.conf, password file and ACL")
    c.add_argument(
        "--out", default=DEFAULT_BROKER_DIR, help=f"directory (default {DEFAULT_BROKER_DIR})"
    )
    c.add_argument("--json", action="store_true", help="machine-readable output")
    _config_args(c)
    r = sub.add_parser("run", help="run mosquitto with that config (or an embedded demo broker)")
    r.add_argument(
        "--dir",
        default=DEFAULT_BROKER_DIR,
        help="config directory; generated from the registry if it has no mosquitto.conf",
    )
    r.add_argument(
        "--embedded",
        action="store_true",
        help="use the embedded amqtt broker (demos only; enforces --dir's users/ACL if present)",
    )
    _config_args(r)


def _write(args: argparse.Namespace, out: str):  # type: ignore[no-untyped-def]
    from auxilio.broker.config import write_config
    from auxilio.registry import open_registry

    registry = open_registry(args.registry, create=False)  # it only reads the devices
    try:
        return write_config(
            out,
            registry,
            port=args.port,
            bind=args.bind,
            tls_cert=args.tls_cert,
            tls_key=args.tls_key,
            tls_ca=args.tls_ca,
            tls_port=args.tls_port,
            tls_bind=args.tls_bind,
            prefix=args.prefix,
            gateway_user=args.gateway_user,
            run_as=args.run_as,
        )
    finally:
        registry.close()


def run(args: argparse.Namespace) -> int:
    import sys
    from pathlib import Path

    if args.broker_cmd == "config":
        files = _write(args, args.out)
        if args.json:
            print(json.dumps(files.as_dict()))
        else:
            print(f"mosquitto.conf: {files.conf}")
            print(f"users: {len(files.devices)} device(s) + gateway ({files.gateway}, mode 0600)")
            if files.skipped:
                print(f"left out (no MQTT password): {', '.join(files.skipped)}", file=sys.stderr)
            print("reload a running mosquitto with SIGHUP to apply password/ACL changes")
        return 0

    from auxilio.broker import runner
    from auxilio.broker.mosquitto import mosquitto_binary

    conf = Path(args.dir) / "mosquitto.conf"
    if args.embedded or mosquitto_binary() is None:
        # Enforce the generated users and ACL when they exist; else an open demo broker.
        has_config = (Path(args.dir) / "passwd").is_file()
        return runner.run_embedded(args.bind, args.port, args.dir if has_config else None)
    if not conf.exists():
        _write(args, args.dir)
    return runner.run_mosquitto(conf)
