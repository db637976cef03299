"""`auxilio emulate`: run a virtual board (or a fleet) with the real firmware on the unix port."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from pathlib import Path

from auxilio.private import write_private

DEFAULT_BOARD = "bracelet-c3"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--board", default=DEFAULT_BOARD, help=f"board name in boards/ ({DEFAULT_BOARD})"
    )
    p.add_argument("--name", help="name for `auxilio vboard --name` (default: the board name)")
    p.add_argument("--image", help="flash image file (default: ./<name>.img)")
    p.add_argument(
        "--format", action="store_true", help="create/erase the image and format its filesystem"
    )
    p.add_argument(
        "--blank",
        action="store_true",
        help="erased flash, like a new module: it boot-loops until `auxilio flash` writes it",
    )
    p.add_argument(
        "--pty", help="stable path for the serial port symlink (default: in the runtime dir)"
    )
    p.add_argument(
        "--rfc2217-port", type=int, default=0, help="RFC 2217 TCP port on 127.0.0.1 (0 = any free)"
    )
    p.add_argument(
        "--firmware",
        nargs="?",
        const="",
        help="deploy this firmware tree into the image (no value: the bundled firmware/)",
    )
    p.add_argument(
        "--config",
        help="config.json to deploy (its broker is reached through the emulator's proxy)",
    )
    p.add_argument(
        "--broker", help="broker URL, e.g. mqtt://127.0.0.1:1883 (fresh identity if no --config)"
    )
    p.add_argument("--heapsize", help="MicroPython heap, e.g. 256K (default: the unix port's)")
    p.add_argument(
        "--registry",
        help="registry path or URL (default $AUXILIO_REGISTRY or var/auxilio.db): a --config's "
        "counter_floor is read from it; in fleet mode the devices are added to it",
    )
    p.add_argument(
        "--counter-floor",
        type=_counter,
        metavar="N",
        help="write counter_floor N into the --config instead of the registry's (SPEC §12.1)",
    )
    p.add_argument(
        "--lte",
        nargs="?",
        const="lte-m",
        metavar="TIMING",
        help="emulate the board's modem (network timing lte-m, nb-iot, lte-cat1 or fast; "
        "default lte-m); `auxilio vboard lte ...` then controls it",
    )
    p.add_argument(
        "--modem", help="modem profile to emulate instead of the board's (boards/modems)"
    )
    p.add_argument("--sms-inbox", help="directory the emulated SMSC delivers the C4's SMS into")
    fleet = p.add_argument_group("fleet mode")
    fleet.add_argument("--count", type=int, help="run N devices (several per interpreter)")
    fleet.add_argument(
        "--per-interpreter", type=int, default=100, help="devices per interpreter (100)"
    )
    fleet.add_argument(
        "--heartbeat", type=int, help="override every device's heartbeat interval (s)"
    )
    fleet.add_argument(
        "--workdir", help="fleet directory (device roots; kept, so identities persist)"
    )
    fleet.add_argument("--keys", help="directory of the gateway keypair used to seal secrets")
    fleet.add_argument(
        "--broker-admin",
        metavar="FILE",
        default=os.environ.get("AUXILIO_BROKER_ADMIN"),
        help="with --registry: tell the broker about the new devices at once "
        "(broker-admin.json of `auxilio broker config`; default $AUXILIO_BROKER_ADMIN)",
    )
    fleet.add_argument("--manifest", help="write the fleet's identities here (JSON, mode 0600)")
    p.add_argument("--json", action="store_true", help="print the endpoints as one JSON line")


def _counter(text: str) -> int:
    """argparse type: a u32 counter (SPEC §3)."""
    try:
        n = int(text)
    except ValueError:
        n = -1
    if not 0 <= n <= 0xFFFFFFFF:
        raise argparse.ArgumentTypeError(f"must be an integer in 0..4294967295, not {text!r}")
    return n


def _counter_floor(args: argparse.Namespace, config: dict[str, object]) -> int | None:
    """SPEC §12.1: a known secret never restarts low; the floor comes from the registry."""
    from auxilio.errors import NotFoundError
    from auxilio.registry.enrol import counter_floor_for

    if args.counter_floor is not None:
        return args.counter_floor
    try:
        return counter_floor_for(config, args.registry)
    except NotFoundError as exc:
        own = config.get("counter_floor", 0)
        print(f"warning: {exc}: counter_floor stays at the config's ({own})", file=sys.stderr)
        return None


def _wait_for_signal(stop: threading.Event) -> None:
    def handler(signum: int, _frame: object) -> None:
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, handler)


def _print(args: argparse.Namespace, info: dict[str, object]) -> None:
    if args.json:
        print(json.dumps(info), flush=True)
        return
    for k, v in info.items():
        if v is not None:
            print(f"{k:10} {v}", flush=True)


def run(args: argparse.Namespace) -> int:
    from auxilio.errors import UsageError

    if args.count is not None:
        if args.lte or args.modem or args.sms_inbox:
            raise UsageError("--lte, --modem and --sms-inbox are for a single board")
        return _run_fleet(args)
    if (args.modem or args.sms_inbox) and not args.lte:
        raise UsageError("--modem and --sms-inbox need --lte")
    for opt in ("heartbeat", "keys", "manifest", "workdir"):
        if getattr(args, opt) is not None:
            raise UsageError(f"--{opt} is for fleet mode (--count N)")
    if args.blank and (args.format or args.firmware is not None or args.config):
        raise UsageError("--blank is an erased board: no --format, --firmware or --config with it")
    return _run_board(args)


def _run_board(args: argparse.Namespace) -> int:
    from auxilio.boards import load_board
    from auxilio.emulator.admin import AdminServer, default_pty_link
    from auxilio.emulator.board import State
    from auxilio.emulator.vdevice import VirtualDevice
    from auxilio.errors import AuxilioError, UsageError

    board = load_board(args.board)
    name = args.name or board.name
    image = Path(args.image) if args.image else Path.cwd() / f"{name}.img"
    config = None
    if args.config:
        try:
            config = json.loads(Path(args.config).read_text())
        except (OSError, ValueError) as exc:
            raise UsageError(f"config {args.config}: {exc}") from None
        if not isinstance(config, dict):
            raise UsageError(f"config {args.config} must be a JSON object")
    elif args.counter_floor is not None:
        raise UsageError("--counter-floor is for a --config (a known secret)")
    floor = _counter_floor(args, config) if config is not None else None
    identity_file = None
    if config is None and args.broker and args.firmware is not None:
        from auxilio.provision.config import new_config

        config = new_config(board.role, args.broker)
        identity_file = image.with_suffix(".identity.json")
        write_private(identity_file, json.dumps(config, indent=1))
    vd = VirtualDevice(
        board,
        image,
        config=config,
        broker_url=args.broker,
        firmware=args.firmware or None,
        deploy=args.firmware is not None,
        format=args.format,
        pty_link=args.pty or default_pty_link(name),
        rfc2217_port=args.rfc2217_port,
        heapsize=args.heapsize,
        name=name,
        counter_floor=floor,
        advertise=True,  # on the virtual USB bus: `auxilio ports` lists it
        blank=args.blank,
        modem=(args.modem or True) if args.lte else False,
        lte_timing=args.lte or "lte-m",
        sms_inbox=args.sms_inbox,
    )
    stop = threading.Event()
    crashed: list[str] = []

    def on_crash(reason: str) -> None:
        crashed.append(reason)
        stop.set()

    vd.board.on_crash = on_crash
    _wait_for_signal(stop)
    admin = None
    try:
        vd.start(wait=False)
        if args.firmware is None and not args.blank:
            vd.board.wait_ready(60)
        info = {
            "name": name,
            "board": board.name,
            "image": str(image),
            "pty": vd.board.port,
            "rfc2217": vd.board.rfc2217_url,
            "control": vd.control.address,
            "device": vd.device,
            "broker": f"{vd.broker_url} via 127.0.0.1:{vd.proxy.port}" if vd.proxy else None,
            "identity": str(identity_file) if identity_file else None,
            "counter_floor": floor,
            "modem": f"{vd.modem.model} ({vd.modem.timing.name})" if vd.modem else None,
            "sms_inbox": args.sms_inbox,
        }
        admin = AdminServer(name, vd, info)
        _print(args, info)
        while not stop.wait(0.5):
            pass
        if crashed or vd.board.state is State.CRASHED:
            raise AuxilioError(f"virtual board {name} crashed: {crashed[0] if crashed else ''}")
        return 0
    finally:
        if admin is not None:
            admin.close()
        vd.close()
        sys.stdout.flush()


def _run_fleet(args: argparse.Namespace) -> int:
    from auxilio.emulator.admin import AdminServer
    from auxilio.emulator.fleet import VirtualFleet
    from auxilio.errors import AuxilioError, UsageError

    if not args.broker:
        raise UsageError("fleet mode needs --broker URL")
    for opt in ("image", "pty", "config", "heapsize", "counter_floor"):
        if getattr(args, opt) is not None:
            raise UsageError(f"--{opt.replace('_', '-')} is for a single board, not --count")
    fleet = VirtualFleet(
        args.count,
        args.broker,
        board=args.board,
        workdir=args.workdir,
        per_interpreter=args.per_interpreter,
        heartbeat_s=args.heartbeat,
        firmware=args.firmware or None,
        registry=args.registry,
    )
    name = args.name or "fleet"
    stop = threading.Event()
    _wait_for_signal(stop)
    admin = None
    try:
        added = None
        if args.registry:
            # Registered (with their MQTT passwords) and known to the broker before
            # they start: else the broker refuses every one of them.
            from auxilio.broker.lifecycle import load_admin

            added = fleet.register(args.registry, args.keys, load_admin(args.broker_admin))
        fleet.start(timeout=max(60.0, args.count * 0.5), stop=stop)
        info: dict[str, object] = {
            "name": name,
            "devices": args.count,
            "interpreters": len(fleet.procs),
            "workdir": str(fleet.workdir),
            "broker": f"{args.broker} via 127.0.0.1:{fleet.proxy.port}" if fleet.proxy else None,
        }
        if args.registry:
            info["registry"] = f"{added} devices added to {args.registry}"
        if args.manifest or not args.registry:
            manifest = Path(args.manifest) if args.manifest else fleet.workdir / "manifest.json"
            write_private(manifest, json.dumps(fleet.manifest(), indent=1))
            info["manifest"] = str(manifest)
        admin = AdminServer(name, fleet, info)
        _print(args, info)
        while not stop.wait(1.0):
            for g, proc in enumerate(fleet.procs):
                if proc.poll() is not None:
                    raise AuxilioError(f"fleet interpreter {g} exited with {proc.returncode}")
        return 0
    finally:
        if admin is not None:
            admin.close()
        fleet.close()
