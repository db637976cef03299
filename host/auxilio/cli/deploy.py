"""`auxilio deploy`: install the application (.mpy build + board.json) without re-flashing."""

from __future__ import annotations

import argparse
import json


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--port", help="port, rfc2217:// URL or USB serial (default: the one board plugged in)"
    )
    p.add_argument("--board", help="board name in boards/ (default: the board.json on the device)")
    p.add_argument(
        "--no-reset", action="store_true", help="leave main.py stopped (no EN pulse after)"
    )
    p.add_argument(
        "--frozen",
        action="store_true",
        help="the board runs a frozen build (firmware/manifest.py): main.py and board.json only",
    )
    p.add_argument("--json", action="store_true", help="machine-readable summary")


def run(args: argparse.Namespace) -> int:
    from auxilio.boards import load_board
    from auxilio.flash.deploy import deploy, device_board_name
    from auxilio.flash.ports import list_ports, pick_single, resolve_port

    port = resolve_port(args.port) if args.port else pick_single(list_ports())
    board = load_board(args.board or device_board_name(port.url))
    result = deploy(port.url, board, reset=not args.no_reset, frozen=args.frozen)
    if args.json:
        print(
            json.dumps(
                {
                    "port": port.device,
                    "board": board.name,
                    "copied": result.copied,
                    "unchanged": len(result.unchanged),
                    "removed": result.removed,
                }
            )
        )
        return 0
    for name in result.removed:
        print(f"removed  {name} (shadowed a deployed .mpy)")
    for name in result.copied:
        print(f"copied   {name}")
    print(
        f"{len(result.copied)} copied, {len(result.unchanged)} unchanged, "
        f"{len(result.removed)} removed on {port.label()} ({board.name})"
    )
    return 0
