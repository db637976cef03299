"""`auxilio broker config|run|sync`: mosquitto config from the registry, a runner (amqtt fallback),
and the reconcile of a running broker's device logins with the registry."""

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
        help="system user mosquitto drops to when started as root (default: mosquitto, or "
        "root when the directory is not searchable by that user)",
    )
    p.add_argument(
        "--authority",
        choices=["files", "dynsec"],
        default="files",
        help="who holds device logins: a password file reloaded by SIGHUP (files), or "
        "mosquitto's dynamic-security plugin, changed live (dynsec)",
    )


_EPILOG = """\
Device logins follow the registry at once (issue 11): `auxilio devices add | rekey |
revoke | retire | mark-lost | import-csv --broker-admin FILE` (or $AUXILIO_BROKER_ADMIN) apply the
change at the broker right after the registry commit; if the broker cannot be told the
registry change stands, one warning line says so, the exit code is non-zero (4: broker
unreachable, 5: admin login refused) and `auxilio broker sync` reconciles later.

Authorities (`broker config --authority`), behind one interface, BrokerAuthority in
auxilio/broker/authority.py:
  dynsec  mosquitto 2's dynamic-security plugin, changed live over
          $CONTROL/dynamic-security/v1 by the auxilio-admin login (broker-admin.json);
          one role per device: write <prefix>/v1/<id>/up and /status, read /down.
  files   the password file + pattern ACL, SIGHUP to the mosquitto in
          DIR/data/mosquitto.pid (on the broker's host only).
The embedded amqtt broker (`run --embedded`) reads device logins from the registry.

Another broker (EMQX, ...) plugs in by implementing the interface's three calls:
  put_device(login)    let the printed id log in with the registry's $7$ PBKDF2-SHA512
                       hash (plaintext only right after add/rekey) and its own topics;
  remove_device(id)    refuse the login and drop its live session;
  sync(registry)       make the broker's device logins equal the registry's;
and naming it in open_authority(). README "Registry, keys and broker" sketches EMQX 5.
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.epilog = _EPILOG
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    sub = p.add_subparsers(dest="broker_cmd", metavar="ACTION", required=True)
    regen = (
        "Regenerating rewrites the password file from the registry: users added to it by "
        "hand (mosquitto_passwd) are removed; the gateway and operator keep their passwords "
        "(gateway.json, operator.json). A running mosquitto applies new users on SIGHUP "
        "(`kill -HUP $(cat DIR/broker.pid)` for `auxilio broker run`)."
    )
    c = sub.add_parser(
        "config",
        help="write mosquitto.conf, password file and ACL",
        description="Write mosquitto.conf, the password file and the ACL from the registry. "
        + regen,
    )
    c.add_argument(
        "--out", default=DEFAULT_BROKER_DIR, help=f"directory (default {DEFAULT_BROKER_DIR})"
    )
    c.add_argument("--json", action="store_true", help="machine-readable output")
    _config_args(c)
    r = sub.add_parser(
        "run",
        help="run mosquitto with that config (or an embedded demo broker)",
        description="Run mosquitto in the foreground with the config in --dir (generated from "
        "the registry when missing). While it runs, DIR/broker.pid names this process: "
        "SIGHUP it after `auxilio broker config` to apply new device users.",
    )
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
    s = sub.add_parser("sync", help="make the running broker's device logins equal the registry's")
    s.add_argument(
        "--registry", help="registry path or URL (default $AUXILIO_REGISTRY or var/auxilio.db)"
    )
    s.add_argument(
        "--broker-admin",
        metavar="FILE",
        help="broker admin file (default $AUXILIO_BROKER_ADMIN, else "
        f"{DEFAULT_BROKER_DIR}/broker-admin.json)",
    )
    s.add_argument("--json", action="store_true", help="machine-readable output")


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
            authority=args.authority,
        )
    finally:
        registry.close()


def _say_run_as(files) -> None:  # type: ignore[no-untyped-def]
    import sys

    if files.blocked is not None:
        print(
            f"warning: {files.blocked} is not searchable by the mosquitto user, so the broker "
            "keeps running as root (`chmod o+x` it, or choose with --run-as)",
            file=sys.stderr,
        )


def _sync(args: argparse.Namespace) -> int:
    import sys

    from auxilio.broker.authority import ADMIN_FILE, admin_path
    from auxilio.broker.lifecycle import load_admin, sync
    from auxilio.registry import open_registry

    admin = load_admin(admin_path(args.broker_admin) or f"{DEFAULT_BROKER_DIR}/{ADMIN_FILE}")
    assert admin is not None
    registry = open_registry(args.registry, readonly=True)
    try:
        report = sync(admin, registry)
    finally:
        registry.close()
    if args.json:
        print(json.dumps(report.as_dict()))
    else:
        print(
            f"broker sync: {len(report.added)} added, {len(report.updated)} updated, "
            f"{len(report.removed)} removed, {report.unchanged} unchanged"
        )
    if report.pending:
        print(
            f"error: {len(report.pending)} login(s) not restored ({', '.join(report.pending)}): "
            "mosquitto's API needs their plaintext; run `auxilio broker sync` on the broker's "
            "host or `auxilio devices rekey`",
            file=sys.stderr,
        )
        return 1
    return 0


def run(args: argparse.Namespace) -> int:
    import sys
    from pathlib import Path

    if args.broker_cmd == "sync":
        return _sync(args)
    if args.broker_cmd == "config":
        files = _write(args, args.out)
        _say_run_as(files)
        if args.json:
            print(json.dumps(files.as_dict()))
        else:
            print(f"mosquitto.conf: {files.conf}")
            print(f"users: {len(files.devices)} device(s) + gateway ({files.gateway}, mode 0600)")
            if files.skipped:
                print(f"left out (no MQTT password): {', '.join(files.skipped)}", file=sys.stderr)
            print(f"broker admin: {files.admin} (--broker-admin for `devices`, `broker sync`)")
            if files.authority == "files":
                print("reload a running mosquitto with SIGHUP to apply password/ACL changes")
        return 0

    from auxilio.broker import runner
    from auxilio.broker.mosquitto import mosquitto_binary

    conf = Path(args.dir) / "mosquitto.conf"
    if args.embedded or mosquitto_binary() is None:
        # Enforce the generated users and ACL when they exist; else an open demo broker.
        has_config = (Path(args.dir) / "passwd").is_file()
        # Issue 11 §2: with a config, device logins follow the registry live (when
        # one is named, or the default one exists; else the generated files only).
        import os

        from auxilio.registry import DEFAULT_REGISTRY

        registry = args.registry or os.environ.get("AUXILIO_REGISTRY")
        if registry is None and Path(DEFAULT_REGISTRY).is_file():
            registry = DEFAULT_REGISTRY
        return runner.run_embedded(
            args.bind,
            args.port,
            args.dir if has_config else None,
            registry=registry if has_config else None,
        )
    if not conf.exists():
        _say_run_as(_write(args, args.dir))
    return runner.run_mosquitto(conf)
