"""`auxilio vboard`: control a running virtual board or fleet (buttons, power, network, events)."""

from __future__ import annotations

import argparse
import json
import sys


def _on_off(text: str) -> bool:
    t = text.lower()
    if t in ("on", "up", "open", "1", "true", "yes"):
        return True
    if t in ("off", "down", "closed", "close", "0", "false", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected on/off, up/down or open/closed, not {text!r}")


def _gnss_fields(where: list[str]) -> dict[str, object]:
    from auxilio.errors import UsageError

    if where == ["none"]:
        return {"lat": None}
    try:
        nums = [float(w) for w in where]
    except ValueError:
        nums = []
    if len(nums) not in (2, 3) or not (-90 <= nums[0] <= 90 and -180 <= nums[1] <= 180):
        raise UsageError("gnss takes 'none' or LAT LON [HDOP] in degrees")
    return {"lat": nums[0], "lon": nums[1], "hdop": nums[2] if len(nums) == 3 else None}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--name", help="which running emulator (needed when several run)")
    p.add_argument("--dev", type=int, default=0, help="device index in a fleet (0)")
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    sub.add_parser("status", help="board state, endpoints, network settings")
    sub.add_parser("list", help="running virtual boards")
    sub.add_parser("press", help="press the button (and keep it down)")
    sub.add_parser("release", help="release the button")
    h = sub.add_parser("hold", help="press, hold (default: the alert hold time), release")
    h.add_argument("seconds", nargs="?", type=float)
    b = sub.add_parser("battery", help="set the battery level")
    b.add_argument("pct", type=int)
    m = sub.add_parser("mains", help="mains power on/off (street button)")
    m.add_argument("state", type=_on_off)
    t = sub.add_parser("tamper", help="enclosure open/closed (street button)")
    t.add_argument("state", type=_on_off)
    n = sub.add_parser("network", help="link to the broker up/down")
    n.add_argument("state", type=_on_off)
    lat = sub.add_parser("latency", help="added one-way latency towards the broker (ms)")
    lat.add_argument("ms", type=float)
    d = sub.add_parser(
        "drop", help="segment loss towards the broker (%%, costs retransmission time)"
    )
    d.add_argument("pct", type=float)
    pw = sub.add_parser("power", help="cut or restore power (kill -9: RAM lost, flash kept)")
    pw.add_argument("state", type=_on_off)
    sub.add_parser("reset", help="hard reset (EN pulse)")
    sub.add_parser("soft-reset", help="the firmware reboots its Device in place (control op reset)")
    lt = sub.add_parser(
        "lte", help="emulated modem: network scenario or modem fault (boards started with --lte)"
    )
    lt.add_argument(
        "state",
        help="registered, roaming, searching, no-signal, denied, data-down (network); "
        "sim-missing, sim-inserted, mute, unmute, reboot (modem)",
    )
    g = sub.add_parser("gnss", help="emulated GNSS: 'none' or a fixed position LAT LON [HDOP]")
    g.add_argument("where", nargs="+", metavar="none|LAT LON [HDOP]")
    w = sub.add_parser(
        "wait",
        help="wait until the firmware reports a state: connected, or acked/attending/... "
        "for the last frame queued (past events count)",
    )
    w.add_argument("state", metavar="STATE")
    w.add_argument("--timeout", type=float, default=60.0, help="seconds (60)")
    e = sub.add_parser("events", help="feedback and state events (haptic, led, buzzer, state, log)")
    e.add_argument("--follow", "-f", action="store_true", help="keep streaming new events")
    e.add_argument("--last", type=int, default=50, help="how many past events (50)")


def run(args: argparse.Namespace) -> int:
    from auxilio.emulator.admin import AdminClient, running

    if args.action == "list":
        for st in running():
            print(json.dumps({k: v for k, v in st.items() if k != "token"}))
        return 0
    if args.action == "wait":
        from auxilio.emulator.waiting import wait_state

        print(json.dumps(wait_state(args.name, args.state, args.timeout)))
        return 0
    client = AdminClient(args.name)
    a = args.action
    dev = args.dev
    if a == "status":
        reply = client.call("status")
        reply.pop("ok", None)
        print(json.dumps(reply, indent=1))
        return 0
    if a == "events":
        if args.follow:
            try:
                for ev in client.follow(dev if dev else None):
                    print(json.dumps(ev), flush=True)
            except KeyboardInterrupt:
                return 0
            return 0
        for ev in client.call("events", last=args.last)["events"]:
            print(json.dumps(ev))
        return 0
    fields: dict[str, object] = {"dev": dev}
    cmd = a
    if a == "hold":
        fields["seconds"] = args.seconds
    elif a == "battery":
        fields["pct"] = args.pct
    elif a == "mains":
        fields["on"] = args.state
    elif a == "tamper":
        fields["open"] = args.state
    elif a == "network":
        fields["up"] = args.state
    elif a == "latency":
        fields["ms"] = args.ms
    elif a == "drop":
        fields["pct"] = args.pct
    elif a == "power":
        cmd = "power-restore" if args.state else "power-cut"
    elif a == "lte":
        fields["state"] = args.state
    elif a == "gnss":
        fields.update(_gnss_fields(args.where))
    client.call(cmd, **fields)
    sys.stdout.flush()
    return 0
