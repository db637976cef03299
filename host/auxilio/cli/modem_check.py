"""`auxilio modem-check`: the board's modem checks (SIM, registration, signal, data, GNSS, SMS)."""

from __future__ import annotations

import argparse
import json


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--port", required=True, help="serial port, pty or rfc2217:// URL of the board")
    p.add_argument("--sms-to", help="also send a test SMS to this number (E.164, e.g. +5255...)")
    p.add_argument("--tcp", help="HOST:PORT to open a TCP connection to (default: the broker)")
    p.add_argument(
        "--attach-timeout", type=float, default=180, help="registration budget in seconds (180)"
    )
    p.add_argument("--gnss-timeout", type=float, default=60, help="GNSS fix budget in seconds (60)")
    p.add_argument("--json", action="store_true", help="one JSON object per check")


def run(args: argparse.Namespace) -> int:
    from auxilio.modemcheck import run_checks

    results = run_checks(
        args.port,
        sms_to=args.sms_to,
        tcp=args.tcp,
        attach_s=args.attach_timeout,
        gnss_s=args.gnss_timeout,
    )
    if args.json:
        for r in results:
            print(json.dumps(r.as_dict()))
    else:
        from rich.console import Console
        from rich.table import Table

        colour = {"ok": "green", "warn": "yellow", "fail": "red", "skip": "dim"}
        t = Table(title=f"modem check on {args.port}")
        for col in ("check", "status", "detail", "what to do", "s"):
            t.add_column(col)
        for r in results:
            t.add_row(
                r.check,
                f"[{colour.get(r.status, '')}]{r.status}[/]",
                r.detail,
                r.hint,
                "" if r.seconds is None else f"{r.seconds:.1f}",
            )
        Console().print(t)
    return 1 if any(r.failed for r in results) else 0
