"""`auxilio flash`: MicroPython plus the application onto one board, some, or a whole tray."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--board",
        action="append",
        required=True,
        help="board name in boards/ (repeat with --firmware for a mixed tray)",
    )
    p.add_argument(
        "--firmware",
        action="append",
        required=True,
        help="merged MicroPython image for that board (as micropython.org ships it)",
    )
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument(
        "--port",
        action="append",
        help="port, rfc2217:// URL or USB serial number (repeat for several)",
    )
    where.add_argument(
        "--all", action="store_true", help="every plugged-in port matching the board(s)"
    )
    p.add_argument("--force", action="store_true", help="flash boards the reports say are done")
    p.add_argument(
        "--keep-fs",
        action="store_true",
        help="keep the filesystem (default: erase it, factory fresh)",
    )
    p.add_argument("--no-deploy", action="store_true", help="MicroPython only, no application")
    p.add_argument(
        "--frozen",
        action="store_true",
        help="the image has the app frozen in: deploy main.py and board.json only",
    )
    p.add_argument("--baud", type=int, help="flashing baud rate (default: the board file's)")
    p.add_argument("--reports", type=Path, help="report directory (default ./reports)")
    p.add_argument("--json", action="store_true", help="print the report rows as JSON lines")


def run(args: argparse.Namespace) -> int:
    from auxilio.boards import load_board
    from auxilio.errors import AuxilioError, NotFoundError, UsageError
    from auxilio.flash import tray
    from auxilio.flash.flasher import Options
    from auxilio.flash.images import read_firmware
    from auxilio.flash.ports import list_ports, resolve_port
    from auxilio.flash.tray import refused

    if args.all:
        ports = list_ports()
        explicit = False
    else:
        known = list_ports(all_ports=True)
        ports = [resolve_port(p, known) for p in args.port]
        explicit = True
    try:
        if len(args.board) != len(args.firmware):
            raise UsageError("give one --firmware for each --board, in the same order")
        choices = []
        for name, path in zip(args.board, args.firmware, strict=True):
            board = load_board(name)
            choices.append((board, read_firmware(board, path)))
        if len({b.chip for b, _ in choices}) != len(choices):
            raise UsageError(
                "two --board values have the same chip: one run cannot tell them apart"
            )
    except AuxilioError as exc:
        # Nothing was touched; the audit trail still says which boards were not flashed and why.
        refused(ports, str(exc), args.reports)
        raise
    if args.all and not ports:
        raise NotFoundError("no board is plugged in (`auxilio ports --all-ports` lists every port)")
    items = tray.plan(ports, choices, explicit=explicit, force=args.force, reports_dir=args.reports)
    if args.all and all(i.skip for i in items) and not any("already" in i.skip for i in items):
        raise NotFoundError(
            "no plugged-in port matches "
            + ", ".join(b.name for b, _ in choices)
            + " (see `auxilio ports`)"
        )
    options = Options(
        deploy=not args.no_deploy, keep_fs=args.keep_fs, baud=args.baud, frozen=args.frozen
    )
    meta = {
        "boards": [b.name for b, _ in choices],
        "firmware": [
            {"file": str(p), "sha256": fw.sha256, "version": fw.version}
            for p, (_, fw) in zip(args.firmware, choices, strict=True)
        ],
        "options": {
            "force": args.force,
            "keep_fs": args.keep_fs,
            "deploy": not args.no_deploy,
            "frozen": args.frozen,
        },
    }
    result = _run_with_progress(items, options, args, meta)
    for o in result.outcomes:
        if args.json:
            print(json.dumps({k: v for k, v in o.__dict__.items() if k != "files"}))
        else:
            mark = {"ok": "ok", "skipped": "skipped", "interrupted": "INTERRUPTED"}.get(
                o.result, "FAILED"
            )
            who = f"{o.port} ({o.serial})" if o.serial else o.port
            detail = (
                f"{o.chip} {o.mac} {o.app_version} {o.seconds:.1f}s"
                if o.result == "ok"
                else o.error
            )
            print(f"{mark:11} {who}: {detail}")
    if not args.json:
        ok = sum(o.result == "ok" for o in result.outcomes)
        print(f"{ok} flashed, {len(result.failed)} failed; report: {result.csv} {result.json}")
    sys.stdout.flush()
    if result.interrupted:
        sys.stderr.write("interrupted\n")
        return 130
    return 1 if result.failed else 0


def _run_with_progress(items, options, args, meta):
    """Run the tray with one rich progress row per port (port and serial number)."""
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.text import Text

    from auxilio.flash import tray

    console = Console(stderr=True)
    progress = Progress(
        TextColumn("{task.description}"),
        TextColumn("{task.fields[stage]:>8}"),
        BarColumn(),
        DownloadColumn(),
        TimeElapsedColumn(),
        console=console,
        disable=not console.is_terminal,
    )
    tasks = {}
    for item in items:
        tasks[id(item)] = progress.add_task(
            item.port.label(), total=1, stage="skipped" if item.skip else "queued"
        )

    def on_progress(item, stage, done, total):
        progress.update(tasks[id(item)], stage=stage, completed=done, total=total or 1)

    def on_done(item, outcome):
        progress.update(tasks[id(item)], stage=outcome.result, completed=1, total=1)
        if not console.is_terminal:
            return
        if outcome.result not in ("ok", "skipped"):
            progress.console.print(Text(outcome.error, style="red"))

    with progress:
        return tray.run(
            items,
            options,
            on_progress=on_progress,
            on_done=on_done,
            reports_dir=args.reports,
            meta=meta,
        )
