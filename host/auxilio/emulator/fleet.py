"""Fleet mode: many Device instances per interpreter via app.run_fleet(roots), each its own identity.

Each device is a directory under the fleet's work dir (config.json, board.json,
data/), a "host dir" root as the firmware contract allows; the firmware modules
are shared on sys.path. Devices are split over several interpreters
(`per_interpreter` each), each with its own control-channel server, all behind
one broker proxy.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from auxilio.boards import Board, load_board
from auxilio.broker.url import parse_broker_url
from auxilio.emulator.control import ControlServer, Event
from auxilio.emulator.image import micropython_binary
from auxilio.emulator.netem import BrokerProxy
from auxilio.emulator.vdevice import (
    DROP_PCT,
    LATENCY_MS,
    battery_pct,
    default_hold_s,
    hold_button,
    in_range,
)
from auxilio.errors import AuxilioError, UsageError
from auxilio.procs import die_with_parent
from auxilio.provision.config import new_config
from auxilio.provision.writer import copy_firmware, write_root

log = logging.getLogger(__name__)

# Devices per interpreter by default: one asyncio loop serves them all.
PER_INTERPRETER = 100
# MicroPython heap per device in a fleet interpreter (firmware steady state is
# ~24 KB; this leaves room for alerts, reconnects and GC slack), plus a base.
HEAP_PER_DEVICE = 96 * 1024
HEAP_BASE = 2 * 1024 * 1024
# Prelude patching asyncio's poll loop around a unix-port ipoll() crash (see the file).
POLLFIX = Path(__file__).with_name("pollfix_mpy.py")
POLL_SLOTS_PER_DEVICE = 4  # the MQTT socket, with room for a reconnect overlapping
POLL_SLOTS_SPARE = 16  # control channel and anything else per interpreter


@dataclass
class FleetDevice:
    index: int
    device: str  # printed id
    root: Path
    interpreter: int
    dev: int  # index inside its interpreter (the control channel's "dev")
    config: dict[str, Any]


class VirtualFleet:
    """N virtual devices running the real firmware in a few interpreters."""

    def __init__(
        self,
        count: int,
        broker_url: str,
        *,
        board: Board | str = "bracelet-c3",
        workdir: str | os.PathLike[str] | None = None,
        per_interpreter: int = PER_INTERPRETER,
        heartbeat_s: int | None = None,
        firmware: str | os.PathLike[str] | None = None,
        config_overrides: dict[str, Any] | None = None,
        pollfix: bool = True,
        registry: str | os.PathLike[str] | None = None,
    ) -> None:
        if count < 1:
            raise UsageError("--count must be at least 1")
        if per_interpreter < 1:
            raise UsageError("devices per interpreter must be at least 1")
        self.count = count
        self.board_def = load_board(board) if isinstance(board, str) else board
        self.broker_url = broker_url
        self.per_interpreter = per_interpreter
        self.heartbeat_s = heartbeat_s
        self.firmware = Path(firmware) if firmware else None
        self.overrides = dict(config_overrides or {})
        self.pollfix = pollfix
        self.registry = registry  # counter floors for kept identities come from here
        self._floors: Any = None  # that registry, open read-only while preparing
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if workdir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="auxilio-fleet-")
            workdir = self._tmp.name
        # Absolute: the interpreters run from inside it (a relative --workdir broke them).
        self.workdir = Path(workdir).resolve()
        self.devices: list[FleetDevice] = []
        self.controls: list[ControlServer] = []
        self.procs: list[subprocess.Popen[bytes]] = []
        self.proxy: BrokerProxy | None = None

    # -- set-up ---------------------------------------------------------------

    def prepare(self) -> None:
        """Write the shared firmware and one root per device with a fresh identity."""
        upstream = parse_broker_url(self.broker_url)
        self.proxy = BrokerProxy(upstream.host, upstream.port)
        fw_dir = self.workdir / "fw"
        if fw_dir.exists():
            shutil.rmtree(fw_dir)
        copy_firmware(fw_dir, self.firmware)  # shared on sys.path by every interpreter
        board_data = self.board_def.device_data()
        for i in range(self.count):
            root = self.workdir / "devices" / f"{i:04d}"
            cfg_path = root / "config.json"
            if cfg_path.exists():  # keep identities (and data/) across fleet restarts
                cfg = json.loads(cfg_path.read_text())
                self._counter_floor(cfg)
            else:
                cfg = new_config(self.board_def.role, self.broker_url)
            cfg.update(self.overrides)
            if self.heartbeat_s is not None:
                cfg["heartbeat_s"] = int(self.heartbeat_s)
            deployed = dict(cfg, broker=f"mqtt://127.0.0.1:{self.proxy.port}")
            write_root(root, deployed, board_data)
            interp, dev = divmod(i, self.per_interpreter)
            self.devices.append(FleetDevice(i, cfg["device"], root, interp, dev, dict(cfg)))
        self._close_floors()

    def _counter_floor(self, cfg: dict[str, Any]) -> None:
        """A kept identity is a known secret: it never restarts below the registry's floor.

        SPEC §12.1; data/ normally survives with it, but a fleet whose data/ was
        wiped would otherwise reuse every counter. Not registered yet: nothing
        to stay above.
        """
        from auxilio.errors import NotFoundError
        from auxilio.registry import open_registry
        from auxilio.registry.enrol import counter_floor_for

        if self.registry is None:
            return
        try:
            if self._floors is None:  # opened once for the whole fleet
                self._floors = open_registry(self.registry, readonly=True)
            cfg["counter_floor"] = counter_floor_for(cfg, self._floors)
        except NotFoundError as exc:
            log.info("fleet: %s: no counter floor for %s", exc, cfg.get("device"))

    def _close_floors(self) -> None:
        if self._floors is not None:
            self._floors.close()
            self._floors = None

    def start(
        self, timeout: float = 120.0, wait: bool = True, stop: threading.Event | None = None
    ) -> VirtualFleet:
        """Run the fleet (preparing it first unless `prepare` already ran); `stop` aborts the wait."""
        try:
            if not self.devices:
                self.prepare()
            mp = micropython_binary()
            groups = [
                self.devices[k : k + self.per_interpreter]
                for k in range(0, self.count, self.per_interpreter)
            ]
            for g, group in enumerate(groups):
                control = ControlServer()
                self.controls.append(control)
                script = self.workdir / f"run-{g}.py"
                roots = [str(d.root) for d in group]
                prelude = ""
                if self.pollfix:
                    slots = POLL_SLOTS_PER_DEVICE * len(group) + POLL_SLOTS_SPARE
                    prelude = POLLFIX.read_text().replace(
                        "_POLL_SLOTS = 64", f"_POLL_SLOTS = {slots}"
                    )
                script.write_text(
                    prelude + "\nimport sys\n"
                    f"sys.path.insert(0, {str(self.workdir / 'fw')!r})\n"
                    "import app\n"
                    f"app.run_fleet({roots!r})\n"
                )
                heap = HEAP_BASE + HEAP_PER_DEVICE * len(group)
                env = dict(os.environ, AUXILIO_HAL_CONTROL=control.address)
                logf = open(self.workdir / f"run-{g}.log", "ab")  # noqa: SIM115 - owned by the child
                try:
                    proc = subprocess.Popen(
                        [mp, "-X", f"heapsize={heap}", str(script)],
                        stdin=subprocess.DEVNULL,
                        stdout=logf,
                        stderr=subprocess.STDOUT,
                        env=env,
                        cwd=str(self.workdir),
                        start_new_session=True,
                        preexec_fn=die_with_parent,
                    )
                finally:
                    logf.close()
                self.procs.append(proc)
            if wait:
                self.wait_ready(timeout, stop)
        except BaseException:
            self.close()
            raise
        return self

    def wait_ready(self, timeout: float = 120.0, stop: threading.Event | None = None) -> None:
        """Wait until every device holds its MQTT connection (through the proxy).

        Connections are counted at the proxy rather than from "hello" events:
        the host HAL queues a bounded number of events before its control
        channel connects, so in a big fleet early hellos can be dropped.
        """
        deadline = time.monotonic() + timeout
        assert self.proxy is not None
        while self.proxy.connections() < self.count:
            self._check_alive()
            if stop is not None and stop.is_set():  # Ctrl-C while the fleet comes up
                raise KeyboardInterrupt
            if time.monotonic() > deadline:
                raise AuxilioError(
                    f"fleet: only {self.proxy.connections()}/{self.count} devices connected "
                    f"after {timeout:.0f}s{self._refusals()}"
                )
            time.sleep(0.1)

    def _refusals(self) -> str:
        """Why devices are not on the broker, when their logs say it refused them."""
        refused = 0
        where = ""
        for g in range(len(self.procs)):
            log_path = self.workdir / f"run-{g}.log"
            try:
                n = log_path.read_text(errors="replace").count("not authorized")
            except OSError:
                continue
            if n and not where:
                where = log_path.name
            refused += n
        if not refused:
            return ""
        return (
            f": the broker refused {refused} login(s) ('not authorized' in {where}); "
            "register the devices first (--registry with --broker-admin, or "
            "`auxilio broker config` and a SIGHUP to mosquitto)"
        )

    def _check_alive(self) -> None:
        for g, proc in enumerate(self.procs):
            if proc.poll() is not None:
                tail = (self.workdir / f"run-{g}.log").read_text(errors="replace").strip()
                last = tail.splitlines()[-1] if tail else "no output"
                raise AuxilioError(f"fleet interpreter {g} exited ({proc.returncode}): {last}")

    # -- control ----------------------------------------------------------------

    def send(self, index: int, op: str, **fields: Any) -> None:
        if not 0 <= index < len(self.devices):
            raise UsageError(f"--dev must be 0-{len(self.devices) - 1} for this fleet, not {index}")
        d = self.devices[index]
        if not self.controls[d.interpreter].send(op, d.dev, **fields):
            raise UsageError(f"fleet device {index} is not connected to its control channel")

    def press(self, index: int) -> None:
        self.send(index, "press")

    def release(self, index: int) -> None:
        self.send(index, "release")

    def hold(
        self, seconds: float | None = None, index: int = 0, cancel: threading.Event | None = None
    ) -> None:
        """Press device `index`, keep it down (default: the alert hold + margin), always release."""
        if seconds is None:
            seconds = default_hold_s(self.board_def)
        hold_button(lambda: self.press(index), lambda: self.release(index), seconds, cancel)

    def battery(self, pct: int, index: int = 0) -> None:
        self.send(index, "battery", pct=battery_pct(pct))

    def mains(self, on: bool, index: int = 0) -> None:
        self.send(index, "mains", on=bool(on))

    def tamper(self, opened: bool, index: int = 0) -> None:
        self.send(index, "tamper", open=bool(opened))

    def soft_reset(self, index: int = 0) -> None:
        self.send(index, "reset")

    def network(self, up: bool) -> None:
        """The whole fleet's network: the proxy cuts/restores, every HAL sees the link."""
        if self.proxy is not None:
            self.proxy.set_link(up)
        for g, control in enumerate(self.controls):
            for d in self.devices:
                if d.interpreter == g:
                    control.send("link", d.dev, up=bool(up))

    def latency(self, ms: float) -> None:
        ms = in_range(ms, LATENCY_MS, "latency (ms)")
        if self.proxy is not None:
            self.proxy.set_latency(ms)

    def drop(self, pct: float) -> None:
        pct = in_range(pct, DROP_PCT, "drop (%)")
        if self.proxy is not None:
            self.proxy.set_drop(pct)

    def events(self, index: int | None = None) -> list[Event]:
        """Events with "index" (fleet-wide device index) added; one device's when given."""
        out: list[Event] = []
        for g, control in enumerate(self.controls):
            for e in control.events():
                idx = g * self.per_interpreter + int(e.get("dev", 0))
                if index is None or idx == index:
                    out.append(dict(e, index=idx))
        out.sort(key=lambda e: e.get("t", 0.0))  # interpreters interleave in time
        return out

    # -- figures ----------------------------------------------------------------

    def rss_bytes(self) -> int:
        """Resident memory of all fleet interpreters (VmRSS)."""
        total = 0
        for proc in self.procs:
            try:
                for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
            except OSError:
                pass
        return total

    def cpu_seconds(self) -> float:
        """User+system CPU time used so far by all fleet interpreters."""
        tick = os.sysconf("SC_CLK_TCK")
        total = 0.0
        for proc in self.procs:
            try:
                fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
                total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
            except (OSError, IndexError, ValueError):
                pass
        return total

    def manifest(self) -> list[dict[str, Any]]:
        """Identity of every device (secrets included: write it only to a 0600 file)."""
        return [
            {
                "index": d.index,
                "device": d.device,
                "secret": d.config["secret"],
                "password": d.config.get("password"),
                "role": d.config.get("role"),
                "board": self.board_def.name,
                "root": str(d.root),
            }
            for d in self.devices
        ]

    def register(
        self,
        registry_url: str,
        keys: str | os.PathLike[str] | None = None,
        broker_admin: Any = None,
    ) -> int:
        """Add every device to the registry (sealed secret, MQTT password hash) and the broker.

        Call it after `prepare` and before `start`: a device the broker does not
        know is refused (`not authorized`) and never connects. `broker_admin`
        (broker.lifecycle.load_admin) tells a dynsec broker at once; without it
        the broker learns them from `auxilio broker config` and a SIGHUP.
        """
        from auxilio.broker.lifecycle import after_changes
        from auxilio.broker.passwords import hash_password
        from auxilio.keys import PUBLIC_KEY_FILE, load_public_key, seal
        from auxilio.protocol import codec
        from auxilio.registry import RegistryError, open_registry

        if not self.devices:
            self.prepare()
        if keys is not None and Path(keys).is_dir():
            keys = Path(keys) / PUBLIC_KEY_FILE
        public = load_public_key(keys)
        added: list[tuple[int | str, str | None]] = []
        with open_registry(registry_url) as reg:
            kind = "button" if self.board_def.role == "button" else "bracelet"
            for d in self.devices:
                device_id = codec.device_int(d.device)
                secret = bytes.fromhex(d.config["secret"])
                password = d.config.get("password")
                try:
                    reg.add_device(
                        device_id,
                        kind,
                        self.board_def.name,
                        seal(secret, public, device_id),
                        actor="emulator",
                        mqtt_password_hash=hash_password(password) if password else None,
                    )
                    added.append((device_id, password))
                except RegistryError:
                    pass  # already registered (a restarted fleet keeps its identities)
            rc = after_changes(broker_admin, reg, added)
        if rc:
            raise AuxilioError("fleet: the broker was not told about the new devices (see above)")
        return len(added)

    def close(self) -> None:
        self._close_floors()
        for proc in self.procs:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(10)
        for control in self.controls:
            control.close()
        if self.proxy is not None:
            self.proxy.close()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> VirtualFleet:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
