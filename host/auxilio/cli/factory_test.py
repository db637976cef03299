"""`auxilio factory-test`: the hardware self-test of a flashed board, with the technician's answers."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    from auxilio.flash.factory import STEPS

    p.add_argument(
        "--port", help="port, rfc2217:// URL or USB serial (default: the one board plugged in)"
    )
    p.add_argument("--board", help="board name (default: the board.json on the device)")
    p.add_argument(
        "--skip",
        action="append",
        default=[],
        choices=STEPS,
        help="leave one check out (repeatable)",
    )
    p.add_argument("--reports", type=Path, help="report directory (default ./reports)")
    p.add_argument("--json", action="store_true", help="one JSON object per check")


class _Console:
    """The technician at the terminal: prompts on stderr, answers y/n on stdin (EOF = no)."""

    def prompt(self, check: str, text: str) -> None:
        sys.stderr.write(f"-> {text}\n")
        sys.stderr.flush()

    def confirm(self, check: str, question: str) -> bool:
        sys.stderr.write(f"{question} [y/n] ")
        sys.stderr.flush()
        answer = sys.stdin.readline().strip().lower()
        return answer in ("y", "yes", "s", "si", "sí")


def run(args: argparse.Namespace) -> int:
    from auxilio.boards import load_board
    from auxilio.flash.deploy import device_board_name
    from auxilio.flash.factory import factory_test, write_report
    from auxilio.flash.ports import list_ports, pick_single, resolve_port

    port = resolve_port(args.port) if args.port else pick_single(list_ports())
    board = load_board(args.board or device_board_name(port.url))
    checks = factory_test(port.url, board, _Console(), tuple(args.skip))
    csv_path, json_path = write_report(port, board, checks, args.reports)
    for c in checks:
        if args.json:
            print(json.dumps(c.__dict__))
        else:
            value = "" if c.value is None else f" [{c.value}]"
            print(f"{c.result.upper():8} {c.check}{value} {c.detail}".rstrip())
    failed = [c for c in checks if c.result == "fail"]
    if not args.json:
        print(
            f"{len(failed)} failed of {len(checks)} checks on {port.label()} ({board.name}); report: {csv_path}"
        )
    return 1 if failed else 0
