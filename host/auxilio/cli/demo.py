"""`auxilio demo`: for now the protocol walk-through (issue 2); the end-to-end demo replaces it later."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--protocol",
        action="store_true",
        help="only the protocol walk-through (encode, encrypt, sign, decode, tamper)",
    )
    p.add_argument(
        "--no-micropython",
        action="store_true",
        help="skip the micropython half of the walk-through",
    )


def run(args: argparse.Namespace) -> int:
    from auxilio import walkthrough

    # Interim: plain `auxilio demo` is the protocol walk-through too, until the
    # end-to-end demo library exists (the lead wires it here).
    result = walkthrough.run(use_micropython=not args.no_micropython)
    return 0 if result.ok else 1
