"""`auxilio power-budget`: battery life at a heartbeat interval, datasheet currents x emulation."""

from __future__ import annotations

import argparse
import json
import sys


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--board", required=True, help="board name in boards/ (e.g. bracelet-c3)")
    p.add_argument("--heartbeat", default="15m", help="heartbeat interval: 900, 15m, 1h (15m)")
    p.add_argument("--modem", help="modem profile instead of the board's (boards/modems)")
    p.add_argument(
        "--timing", default="lte-m", help="emulated network: lte-m, nb-iot, lte-cat1 (lte-m)"
    )
    p.add_argument("--beats", type=int, default=3, help="heartbeat cycles to measure (3)")
    p.add_argument(
        "--emulated-heartbeat",
        type=int,
        default=30,
        help="heartbeat used while measuring (30 s: the awake part of a beat fits in it)",
    )
    p.add_argument("--broker", help="broker URL for the measurement (default: a private mosquitto)")
    p.add_argument("--load", metavar="FILE", help="use a measurement saved with --save")
    p.add_argument("--save", metavar="FILE", help="save the measured cycles (JSON)")
    p.add_argument(
        "--rrc-tail",
        type=float,
        help="what if the network released RRC this many seconds after the last packet "
        "(release assistance) instead of its inactivity timer",
    )
    p.add_argument("--json", action="store_true", help="print the projections as JSON")


def run(args: argparse.Namespace) -> int:
    from auxilio import modems, powerbudget
    from auxilio.boards import load_board

    hb = powerbudget.parse_interval(args.heartbeat)
    board = load_board(args.board).data
    if args.modem:
        board = modems.with_profile(board, args.modem)
    if args.load:
        cycles = powerbudget.load(args.load)
    else:
        cycles = powerbudget.measure(
            args.board,
            profile=args.modem,
            timing=args.timing,
            beats=args.beats,
            heartbeat_s=args.emulated_heartbeat,
            broker_url=args.broker,
            progress=lambda m: print(m + " ...", file=sys.stderr, flush=True),
        )
    if args.save:
        powerbudget.save(cycles, args.save)
    mean = powerbudget.Cycle.mean(cycles)
    tunables = board.get("tunables") or {}
    shipped = "deep" if tunables.get("deep_sleep_idle_s") else "awake"
    projections = [powerbudget.project(board, mean, hb, "deep", args.rrc_tail)]
    if shipped == "awake":
        projections.append(powerbudget.project(board, mean, hb, "awake", args.rrc_tail))
    if args.json:
        print(json.dumps([p.as_dict() for p in projections]))
        return 0
    _print(projections, mean)
    return 0


def _print(projections: list, mean: object) -> None:  # noqa: ANN001
    from rich.console import Console
    from rich.table import Table

    con = Console()
    c = mean
    con.print(
        f"measured per heartbeat: modem awake {c.modem_awake_s:.1f} s "  # type: ignore[attr-defined]
        f"(RRC-connected {c.seconds.get('connected', 0):.1f} s), MCU talking to it "  # type: ignore[attr-defined]
        f"{c.mcu_awake_s:.1f} s, {sum(c.commands.values()):.0f} AT commands, "  # type: ignore[attr-defined]
        f"{c.bytes.get('up', 0) + c.bytes.get('down', 0):.0f} payload bytes"  # type: ignore[attr-defined]
    )
    for p in projections:
        t = Table(
            title=f"{p.board} ({p.modem}), heartbeat {p.heartbeat_s} s, MCU "
            + ("in deep sleep between beats" if p.mcu_sleep == "deep" else "awake between beats")
        )
        for col in ("", "s per beat", "mA", "mAs per beat", "share"):
            t.add_column(col, justify="right" if col else "left")
        total = p.mas_per_beat
        for line in p.lines:
            t.add_row(
                line.what,
                f"{line.seconds:.2f}",
                f"{line.ma:g}",
                f"{line.mas:.2f}",
                f"{100 * line.mas / total:.1f}%",
            )
        con.print(t)
        if p.note:
            con.print(p.note)
        if p.days is None:
            con.print(f"average {p.average_ma:.3f} mA (mains-powered: no battery projection)")
        else:
            verdict = "[green]meets" if p.days >= 30 else "[red]misses"
            con.print(
                f"average {p.average_ma:.3f} mA -> {p.days:.1f} days on {p.battery_mah:g} mAh "
                f"({verdict}[/] the 30-day target)"
            )
    con.print(
        f"currents: {projections[0].lines[0].source}; MCU: {projections[0].lines[-2].source}. "
        f"MCU wake-up from deep sleep is an estimate ({1.0} s), not emulated."
    )
