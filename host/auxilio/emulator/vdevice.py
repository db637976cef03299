"""A virtual device: a virtual board running the firmware, with its control channel and network.

This is the control API for tests and people: buttons, battery, mains, tamper,
network (through the broker proxy), power, and the feedback event stream.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from auxilio.boards import Board, load_board
from auxilio.broker.url import parse_broker_url
from auxilio.emulator.board import DownloadMode, VirtualBoard
from auxilio.emulator.control import ControlServer, Event
from auxilio.emulator.image import FlashImage
from auxilio.emulator.modem import EmulatedModem, ModemServer, attach
from auxilio.emulator.netem import BrokerProxy
from auxilio.emulator.smsc import Smsc
from auxilio.errors import UsageError
from auxilio.provision.config import VIRTUAL_WIFI, complete_config
from auxilio.provision.writer import firmware_files

log = logging.getLogger(__name__)

# The bracelet's alert gesture is a hold of hold_ms (2 s); a little margin over it.
HOLD_MARGIN_S = 0.3
# With an emulated modem: the C4's SMS number and the SIM's, unless config.json says.
EMULATED_C4_SMS = "+525500000000"
EMULATED_SIM_MSISDN = "+525512340000"
# What the controls accept (the admin channel and `auxilio vboard` check the same ranges):
# a battery level is a percentage; segment loss too; a one-way latency above a minute
# is no network anyone runs; a hold longer than ten minutes is a typo.
BATTERY_PCT = (0, 100)
DROP_PCT = (0.0, 100.0)
LATENCY_MS = (0.0, 60_000.0)
HOLD_S = (0.0, 600.0)


def in_range(value: float | int | str, limits: tuple[float, float], what: str) -> float:
    """`value` as a number inside `limits` (finite), else UsageError naming the range."""
    lo, hi = limits
    try:
        v = float(value)
    except (TypeError, ValueError):
        v = math.nan
    if not (math.isfinite(v) and lo <= v <= hi):
        raise UsageError(f"{what} must be between {lo:g} and {hi:g}, not {value}")
    return v


def battery_pct(value: float | int | str) -> int:
    v = in_range(value, BATTERY_PCT, "battery")
    if v != int(v):
        raise UsageError(f"battery must be a whole percentage, not {value}")
    return int(v)


def hold_button(
    press: Callable[[], None],
    release: Callable[[], None],
    seconds: float,
    cancel: threading.Event | None = None,
) -> None:
    """Press, wait `seconds` (or until `cancel` is set), and always release.

    A refused duration never presses; a hold interrupted by an error, a
    Ctrl-C or a controller that hung up (`cancel`) still releases, so the
    button is never left down (a bracelet held down raises an ALERT).
    """
    seconds = in_range(seconds, HOLD_S, "hold")
    press()
    try:
        if cancel is None:
            time.sleep(seconds)
        else:
            cancel.wait(seconds)
    finally:
        release()


def default_hold_s(board: Board) -> float:
    """The board's alert hold (roles.<role>.hold_ms) plus a margin."""
    roles = board.data.get("roles") or {}
    return (roles.get(board.role) or {}).get("hold_ms", 2000) / 1000 + HOLD_MARGIN_S


class VirtualDevice:
    """A board + its firmware + config + control channel + broker proxy, started together."""

    def __init__(
        self,
        board: Board | str,
        image: str | os.PathLike[str],
        *,
        config: dict[str, Any] | None = None,
        broker_url: str | None = None,
        firmware: str | os.PathLike[str] | None = None,
        deploy: bool = True,
        format: bool = False,
        pty_link: str | os.PathLike[str] | None = None,
        rfc2217_port: int | None = 0,
        heapsize: str | None = None,
        name: str | None = None,
        download_mode: Callable[[VirtualBoard], DownloadMode] | None = None,
        counter_floor: int | None = None,
        link: str = "fast",
        advertise: bool = False,
        blank: bool = False,
        modem: bool | str = False,
        lte_timing: str = "lte-m",
        sms_inbox: str | os.PathLike[str] | None = None,
        smsc: Smsc | None = None,
    ) -> None:
        self.board_def = load_board(board) if isinstance(board, str) else board
        self._own_smsc = False
        self.image = FlashImage(image, self.board_def)
        self.format = format
        self.blank = blank
        self.deploy = deploy
        self.firmware = Path(firmware) if firmware else None
        self.config = dict(config) if config else None
        if self.config is not None and counter_floor is not None:
            # SPEC §12.1: a known secret never restarts low (registry.enrol.counter_floor_for).
            self.config["counter_floor"] = counter_floor
        self.broker_url = broker_url or (self.config or {}).get("broker")
        self.control = ControlServer()
        self.control.on_connect = self._replay_inputs
        # Physical inputs (battery, mains, tamper, link) outlive a reboot of the
        # firmware: re-applied whenever the HAL connects again.
        self._inputs: dict[tuple[int, str], dict[str, Any]] = {}
        self.proxy: BrokerProxy | None = None
        env = {"AUXILIO_HAL_CONTROL": self.control.address}
        self.modem_server: ModemServer | None = None
        self.modem: EmulatedModem | None = None
        self.smsc: Smsc | None = None
        self.modem_profile: str | None = None
        if modem:
            self._start_modem(modem, lte_timing, sms_inbox, smsc)
            assert self.modem_server is not None
            env["AUXILIO_HAL_MODEM"] = self.modem_server.address
        self.board = VirtualBoard(
            self.board_def,
            self.image.path,
            pty_link=pty_link,
            rfc2217_port=rfc2217_port,
            env=env,
            heapsize=heapsize,
            name=name,
            download_mode=download_mode,  # None: the ROM bootloader (auxilio.emulator.rom)
            link=link,
            advertise=advertise,
        )

    def _start_modem(
        self,
        modem: bool | str,
        timing: str,
        inbox: str | os.PathLike[str] | None,
        smsc: Smsc | None,
    ) -> None:
        """An emulated modem on the board's modem UART and pins (issue 12)."""
        from auxilio import modems

        profile = modem if isinstance(modem, str) else modems.board_profile(self.board_def.data)
        if profile is None:
            raise UsageError(f"board {self.board_def.name} has no modem to emulate")
        pins = (self.board_def.data.get("modem") or {}).get("pins") or {}
        self.modem_profile = profile
        from auxilio.emulator import radio

        self.smsc = smsc or Smsc(deliver_s=radio.preset(timing).sms_deliver_s, inbox_dir=inbox)
        self._own_smsc = smsc is None
        self.modem_server = ModemServer()
        self.modem = attach(
            self.modem_server,
            profile,
            timing=timing,
            smsc=self.smsc,
            msisdn=EMULATED_SIM_MSISDN,
            active_high=bool(pins.get("active_high", True)),
        )

    def _board_data(self) -> dict[str, Any]:
        if self.modem_profile is None:
            return self.board_def.data
        from auxilio import modems

        return modems.with_profile(self.board_def.data, self.modem_profile)

    @property
    def device(self) -> str | None:
        """The printed device id (from config.json)."""
        return (self.config or {}).get("device")

    def prepare(self) -> None:
        """Format when asked, then deploy firmware, board.json and config.json.

        A blank device gets erased flash and nothing else: a module straight
        from the factory, for `auxilio flash` to work on.
        """
        if self.blank:
            self.image.erase()
            return
        if self.format:
            self.image.create()
        self.image.check()
        files: dict[str, bytes | Path] = {}
        if self.deploy:
            from auxilio import modems

            files.update(firmware_files(self.firmware))
            files["board.json"] = json.dumps(self.board_def.device_data()).encode()
            board = self._board_data()
            files["board.json"] = json.dumps(board, indent=1).encode()
            files.update(modems.device_files(board))
        if self.broker_url:
            upstream = parse_broker_url(self.broker_url)
            self.proxy = BrokerProxy(upstream.host, upstream.port)
        if self.config is None and self.broker_url and self.deploy:
            self.config = {}  # a fresh identity (auxilio.provision)
        if self.config is not None:
            # A provisioning file (auxilio devices add --secret-out) holds only the
            # enrolment fields; the provisioning library completes the rest.
            net: dict[str, Any] = {"wifi": dict(VIRTUAL_WIFI)}
            if self.modem is not None:
                net["sms"] = {"to": EMULATED_C4_SMS}
                net["lte"] = {"apn": "iot.auxilio.emu"}
            self.config = complete_config(
                self.config, self.board_def.role, self.broker_url, net=net
            )
            cfg = dict(self.config)
            if self.proxy is not None:
                # The device's network is the proxy: it forwards to the real broker.
                scheme = parse_broker_url(self.broker_url or "").scheme
                cfg["broker"] = f"{scheme}://127.0.0.1:{self.proxy.port}"
            files["config.json"] = json.dumps(cfg).encode()
        if files:
            self.image.deploy(files)

    def start(self, wait: bool = True, timeout: float = 60.0) -> VirtualDevice:
        try:
            self.prepare()
            self.board.start(wait=False)
            if wait:
                self.control.wait_connected(timeout)
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        self.board.close()
        self.control.close()
        if self.proxy is not None:
            self.proxy.close()
        if self.modem_server is not None:
            self.modem_server.close()
        if self.smsc is not None and self._own_smsc:
            self.smsc.close()

    def __enter__(self) -> VirtualDevice:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- inputs -----------------------------------------------------------------

    def _replay_inputs(self) -> None:
        for (dev, op), fields in list(self._inputs.items()):
            self.control.send(op, dev, **fields)

    def _send(self, op: str, dev: int = 0, **fields: Any) -> None:
        if op in ("battery", "mains", "tamper", "link"):
            self._inputs[(dev, op)] = fields
        if not self.control.send(op, dev, **fields):
            raise UsageError("the firmware is not connected to the control channel")

    def press(self, dev: int = 0) -> None:
        self._send("press", dev)

    def release(self, dev: int = 0) -> None:
        self._send("release", dev)

    def hold(
        self, seconds: float | None = None, dev: int = 0, cancel: threading.Event | None = None
    ) -> None:
        """Press, keep it down (default: the board's alert hold + margin), always release."""
        if seconds is None:
            seconds = default_hold_s(self.board_def)
        hold_button(lambda: self.press(dev), lambda: self.release(dev), seconds, cancel)

    def battery(self, pct: int, dev: int = 0) -> None:
        self._send("battery", dev, pct=battery_pct(pct))

    def mains(self, on: bool, dev: int = 0) -> None:
        self._send("mains", dev, on=bool(on))

    def tamper(self, opened: bool, dev: int = 0) -> None:
        self._send("tamper", dev, open=bool(opened))

    def network(self, up: bool) -> None:
        """Link up/down: the proxy cuts or restores the path, the HAL sees the link."""
        if self.proxy is not None:
            self.proxy.set_link(up)
        self._inputs[(0, "link")] = {"up": bool(up)}
        self.control.send("link", 0, up=bool(up))

    def latency(self, ms: float) -> None:
        self._need_proxy().set_latency(in_range(ms, LATENCY_MS, "latency (ms)"))

    def drop(self, pct: float) -> None:
        self._need_proxy().set_drop(in_range(pct, DROP_PCT, "drop (%)"))

    def _need_proxy(self) -> BrokerProxy:
        if self.proxy is None:
            raise UsageError("this virtual device has no broker (start it with a broker URL)")
        return self.proxy

    def power_cut(self) -> None:
        self.board.power_cut()
        if self.modem is not None:
            self.modem.power_cut()  # the same battery: off until PWRKEY after power returns

    def lte(self, what: str) -> None:
        """A network scenario or a modem fault (`auxilio vboard lte STATE`)."""
        from auxilio.emulator import radio

        m = self._need_modem()
        if what in radio.SCENARIOS:
            m.set_scenario(what)
        elif what in radio.FAULTS:
            m.fault(what)
        else:
            raise UsageError(
                f"unknown lte state {what!r}: one of {', '.join(radio.SCENARIOS + radio.FAULTS)}"
            )

    def gnss(self, lat: float | None, lon: float | None = None, hdop: float = 1.2) -> None:
        """A fixed GNSS position for the emulated modem, or no fix at all (lat None)."""
        from auxilio.emulator import radio

        m = self._need_modem()
        m.set_gnss(radio.GnssTrack.none() if lat is None else radio.GnssTrack.fixed(lat, lon, hdop))

    def _need_modem(self) -> EmulatedModem:
        if self.modem is None:
            raise UsageError("this virtual board has no emulated modem (start it with --lte)")
        return self.modem

    def power_restore(self) -> None:
        self.board.power_restore()

    def hard_reset(self) -> None:
        self.board.hard_reset()

    def soft_reset(self, dev: int = 0) -> None:
        """The control op "reset": the firmware reboots its Device object in place."""
        self._send("reset", dev)

    # -- outputs ----------------------------------------------------------------

    def events(self, since: int = 0) -> list[Event]:
        return self.control.events(since)

    def mark(self) -> int:
        return self.control.mark()

    def wait_event(self, timeout: float = 30.0, since: int = 0, **fields: Any) -> Event:
        return self.control.wait_event(timeout=timeout, since=since, **fields)
