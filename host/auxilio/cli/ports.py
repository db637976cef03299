"""`auxilio ports`: the serial ports that look like boards (virtual boards too), optionally probed."""

from __future__ import annotations

import argparse
import json


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--probe",
        action="store_true",
        help="ask each board its chip, MAC and MicroPython version (resets it)",
    )
    p.add_argument("--all-ports", action="store_true", help="also list ports that are not boards")
    p.add_argument("--json", action="store_true", help="one JSON object per port")


def run(args: argparse.Namespace) -> int:
    from auxilio.flash.ports import list_ports
    from auxilio.flash.probe import probe_all

    ports = list_ports(all_ports=args.all_ports)
    probes = probe_all([p for p in ports if p.is_board]) if args.probe else {}
    rows = []
    for p in ports:
        row = p.as_dict()
        if p.device in probes:
            row.update(probes[p.device])
        rows.append(row)
    if args.json:
        for row in rows:
            print(json.dumps(row))
        return 0
    if not rows:
        print(
            "no board ports found"
            + ("" if args.all_ports else " (--all-ports lists every serial port)")
        )
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(box=None, pad_edge=False)
    cols = ["port", "usb", "bridge", "serial", "product"] + (
        ["chip", "mac", "micropython"] if args.probe else []
    )
    for c in cols:
        table.add_column(c)
    for r in rows:
        cells = [
            r["device"] + (" (virtual)" if r["virtual"] else ""),
            r["usb_id"] or "-",
            r["bridge"] or "-",
            r["serial"] or "-",
            r["product"] or "-",
        ]
        if args.probe:
            cells += [
                r.get("chip") or "-",
                r.get("mac") or "-",
                r.get("micropython") or (r.get("probe_error") or "-"),
            ]
        table.add_row(*cells)
    Console(soft_wrap=True).print(table)
    for r in rows:
        if r["virtual"] and r["url"] != r["device"]:
            print(f"{r['device']}: open {r['url']} to reset it (the pty carries no DTR/RTS)")
    return 0
