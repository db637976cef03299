"""`auxilio demo`: the end-to-end demo (broker, registry, gateway, two devices on the real firmware)."""

from __future__ import annotations

import argparse
import json


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--once",
        action="store_true",
        help="headless: print one JSON summary line; exit 0 only if every alert was acked",
    )
    p.add_argument(
        "--protocol",
        action="store_true",
        help="only the protocol walk-through (encode, encrypt, sign, decode, tamper)",
    )
    p.add_argument(
        "--no-micropython",
        action="store_true",
        help="with --protocol: skip the micropython half of the walk-through",
    )


def run(args: argparse.Namespace) -> int:
    if args.protocol:
        from auxilio import walkthrough

        result = walkthrough.run(use_micropython=not args.no_micropython)
        return 0 if result.ok else 1

    from auxilio.demo import run_demo

    summary = run_demo(once=args.once)
    if args.once:
        print(json.dumps(summary, sort_keys=True))
    return 0 if summary.get("ok") else 1
