"""The modem emulator: a SIM7080G, SIM7600 or BG95 on a virtual board's UART, speaking AT.

The firmware's host HAL connects to a ``ModemServer`` (AUXILIO_HAL_MODEM) with
two loopback connections per modem (firmware/hal/wire.py): the UART (raw AT
bytes) and the control pins (PWRKEY, RESET levels). Each ``EmulatedModem``
plays one module: power sequencing from the pins (a PWRKEY press toggles
power, a long one resets, a RESET pulse reboots), echo on at boot, the boot
URCs, SIM states, registration that takes time, PDP contexts, the module's
own TCP sockets opened to the real broker on loopback with the emulated radio
latency, GNSS fixes from a scripted track, PSM/eDRX and SMS to an emulated
SMSC. The command grammar of each family is written here from the vendors'
manuals (see boards/modems/*.json "sources"), independently of the firmware's
profile templates, so a wrong template in a profile shows up as ERROR.

It also keeps the books for the figures: time in each power state, radio
bytes and segments (payload + 40-byte IPv4/TCP headers per segment), and the
AT commands received, by name.

One thread per server runs every modem (selector + timers); the control
methods (scenario, SIM, mute, reboot...) are safe to call from other threads.
"""

from __future__ import annotations

import collections
import heapq
import itertools
import logging
import re
import selectors
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from auxilio.emulator import radio
from auxilio.emulator.smsc import Smsc
from auxilio.errors import UsageError
from auxilio.modems import load_profile

log = logging.getLogger(__name__)

TICK_S = 0.02  # power-state and PSM bookkeeping period
SEGMENT = 1400  # payload bytes per TCP segment (MSS on a 1500-byte MTU, minus options)
HEADERS = 40  # IPv4 (20) + TCP (20) header bytes per segment, no options
TIMELINE_KEEP = 20_000  # power-state transitions kept for the figures
PAGING_S = 0.64  # a downlink to an RRC-idle modem waits half a 1.28 s DRX cycle on average
PRESS_TOLERANCE = 0.9  # a pulse counts when held >= 90% of the profile value (its margin)

FAMILIES = {"SIM7080G": "simcom-ca", "SIM7600E": "simcom-cip", "BG95-M3": "quectel-qi"}
_CMD = re.compile(r"^AT([+*#$^][A-Z0-9]+|[A-Z&])(.*)$", re.IGNORECASE)


def _q(s: str) -> str:
    return s.strip().strip('"')


def _args(s: str) -> list[str]:
    """'1,"TCP","127.0.0.1",1883' -> ['1', 'TCP', '127.0.0.1', '1883'] (quotes kept intact)."""
    out, cur, quoted = [], "", False
    for ch in s:
        if ch == '"':
            quoted = not quoted
            cur += ch
        elif ch == "," and not quoted:
            out.append(_q(cur))
            cur = ""
        else:
            cur += ch
    if cur or out:
        out.append(_q(cur))
    return out


def _timer2_s(bits: str) -> float | None:
    """T3324 (3GPP TS 24.008 §10.5.7.3) 8-bit string -> seconds (None: deactivated)."""
    try:
        v = int(bits, 2)
    except ValueError:
        return None
    unit = {0: 2, 1: 60, 2: 360}.get(v >> 5)  # 111: deactivated
    return None if unit is None else (v & 31) * unit


def _timer3_s(bits: str) -> float | None:
    """T3412 extended (3GPP TS 24.008 §10.5.7.4a) 8-bit string -> seconds."""
    try:
        v = int(bits, 2)
    except ValueError:
        return None
    units = {0: 600, 1: 3600, 2: 36000, 3: 2, 4: 30, 5: 60, 6: 1152000}
    unit = units.get(v >> 5)
    return None if unit is None else (v & 31) * unit


class _Socket:
    """One of the module's TCP sockets, backed by a real socket to the broker."""

    def __init__(self, cid: int) -> None:
        self.cid = cid
        self.sock: socket.socket | None = None
        self.open = False
        self.rx = bytearray()
        self.up_due = 0.0  # keep uplink chunks in order
        self.down_due = 0.0


class ModemServer:
    """Loopback endpoint the host HAL's wires connect to; runs every modem on one thread."""

    def __init__(self, port: int = 0) -> None:
        self._listen = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listen.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listen.bind(("127.0.0.1", port))
        self._listen.listen(64)
        self._listen.setblocking(False)
        self.port = self._listen.getsockname()[1]
        self.lock = threading.RLock()
        self._sel = selectors.DefaultSelector()
        self._sel.register(self._listen, selectors.EVENT_READ, ("accept", None))
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._sel.register(self._wake_r, selectors.EVENT_READ, ("wake", None))
        self._timers: list[tuple[float, int, Callable[..., None], tuple]] = []
        self._seq = itertools.count()
        self.modems: dict[int, EmulatedModem] = {}
        self._pending: dict[socket.socket, bytearray] = {}
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="vb-modem", daemon=True)
        self._thread.start()

    @property
    def address(self) -> str:
        """What AUXILIO_HAL_MODEM must say."""
        return f"127.0.0.1:{self.port}"

    def add(self, modem: EmulatedModem, index: int = 0) -> EmulatedModem:
        with self.lock:
            modem.server = self
            modem.index = index
            self.modems[index] = modem
        return modem

    def call_later(self, delay: float, fn: Callable[..., None], *args: Any) -> None:
        with self.lock:
            heapq.heappush(self._timers, (time.monotonic() + delay, next(self._seq), fn, args))
        self.wake()

    def wake(self) -> None:
        try:
            self._wake_w.send(b"!")
        except OSError:
            pass

    def watch(self, sock: socket.socket, handler: Callable[[bytes], None]) -> None:
        """Call handler(data) for every read from sock (b"" once on EOF)."""
        with self.lock:
            self._sel.register(sock, selectors.EVENT_READ, ("data", handler))
        self.wake()

    def unwatch(self, sock: socket.socket) -> None:
        with self.lock:
            try:
                self._sel.unregister(sock)
            except (KeyError, ValueError):
                pass

    def close(self) -> None:
        self._closed = True
        self.wake()
        self._thread.join(3)
        with self.lock:
            for m in self.modems.values():
                m._shutdown()
        for s in (self._listen, self._wake_r, self._wake_w):
            try:
                s.close()
            except OSError:
                pass
        try:
            self._sel.close()
        except (OSError, RuntimeError):
            pass

    def __enter__(self) -> ModemServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the loop ---------------------------------------------------------------

    def _loop(self) -> None:
        next_tick = time.monotonic()
        while not self._closed:
            now = time.monotonic()
            with self.lock:
                timeout = max(0.0, next_tick - now)
                if self._timers:
                    timeout = max(0.0, min(timeout, self._timers[0][0] - now))
            try:
                events = self._sel.select(timeout)
            except (OSError, ValueError):
                return
            with self.lock:
                for key, _ in events:
                    kind, handler = key.data
                    if kind == "wake":
                        try:
                            self._wake_r.recv(4096)
                        except OSError:
                            pass
                    elif kind == "accept":
                        self._accept()
                    elif kind == "hello":
                        self._hello(key.fileobj)
                    else:
                        self._read(key.fileobj, handler)
                now = time.monotonic()
                while self._timers and self._timers[0][0] <= now:
                    _, _, fn, args = heapq.heappop(self._timers)
                    try:
                        fn(*args)
                    except Exception:  # an emulator bug must not stop every modem
                        log.exception("modem emulator timer failed")
                if now >= next_tick:
                    next_tick = now + TICK_S
                    for m in list(self.modems.values()):
                        try:
                            m._tick(now)
                        except Exception:
                            log.exception("modem emulator tick failed")

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listen.accept()
            except (BlockingIOError, OSError):
                return
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn.setblocking(False)
            self._pending[conn] = bytearray()
            self._sel.register(conn, selectors.EVENT_READ, ("hello", None))

    def _hello(self, conn: socket.socket) -> None:
        buf = self._pending[conn]
        try:
            data = conn.recv(4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._drop(conn)
            return
        buf += data
        if b"\n" not in buf:
            if len(buf) > 64:
                self._drop(conn)
            return
        line, rest = bytes(buf).split(b"\n", 1)
        del self._pending[conn]
        self._sel.unregister(conn)
        try:
            kind, idx = line.decode().split()
            modem = self.modems[int(idx)]
        except (ValueError, KeyError, UnicodeError):
            log.warning("modem server: unknown connection %r", line[:40])
            conn.close()
            return
        if kind == "uart":
            modem._attach_uart(conn)
            self._sel.register(conn, selectors.EVENT_READ, ("data", modem._uart_rx))
            if rest:
                modem._uart_rx(rest)
        elif kind == "pins":
            pins = _PinReader(modem)
            self._sel.register(conn, selectors.EVENT_READ, ("data", pins.feed))
            if rest:
                pins.feed(rest)
        else:
            conn.close()

    def _drop(self, conn: socket.socket) -> None:
        self._pending.pop(conn, None)
        try:
            self._sel.unregister(conn)
        except (KeyError, ValueError):
            pass
        conn.close()

    def _read(self, sock: Any, handler: Callable[[bytes], None]) -> None:
        try:
            data = sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            try:
                self._sel.unregister(sock)
            except (KeyError, ValueError):
                pass
        try:
            handler(data)
        except Exception:
            log.exception("modem emulator read handler failed")


class _PinReader:
    """Lines "<pin> <level>" from the board's wires."""

    def __init__(self, modem: EmulatedModem) -> None:
        self.modem = modem
        self.buf = b""

    def feed(self, data: bytes) -> None:
        if not data:
            return
        self.buf += data
        while b"\n" in self.buf:
            line, self.buf = self.buf.split(b"\n", 1)
            try:
                name, level = line.decode().split()
                self.modem.pin(name, int(level))
            except (ValueError, UnicodeError):
                log.warning("modem pins: bad line %r", line[:40])


class EmulatedModem:
    """One module: power, SIM, network, sockets, GNSS, SMS, PSM; driven by its AT commands."""

    def __init__(
        self,
        profile: str | dict[str, Any] = "sim7080g",
        *,
        timing: str | radio.Timing | None = None,
        smsc: Smsc | None = None,
        msisdn: str = "+525500000001",
        gnss: radio.GnssTrack | None = None,
        scenario: str = "registered",
        rssi_dbm: int = -85,
        active_high: bool = True,
        psm_granted: bool = True,
        sim_pin: str | None = None,
        powered: bool = False,
    ) -> None:
        self.profile = load_profile(profile) if isinstance(profile, str) else profile
        self.model = self.profile.get("model", "?")
        self.family = FAMILIES.get(self.model)
        if self.family is None:
            raise UsageError(f"the modem emulator does not know the {self.model}")
        at = self.profile["at"]
        self.hw = at  # datasheet pin timing lives with the profile
        caps = self.profile.get("network") or {}
        if timing is None:
            timing = radio.CAT1 if self.family == "simcom-cip" else radio.LTE_M
        self.timing = radio.preset(timing)
        self.smsc = smsc
        self.msisdn = msisdn
        self.gnss_track = gnss or radio.GnssTrack()
        self.can_psm = bool(caps.get("psm"))
        self.psm_granted = psm_granted
        self.active_high = active_high
        self.server: ModemServer | None = None
        self.index = 0
        self._uart: socket.socket | None = None
        # Network and SIM.
        self.scenario = scenario
        self.rssi_dbm = rssi_dbm
        self.sim_present = True
        self.sim_pin = sim_pin
        self.sim_unlocked = sim_pin is None
        self.pin_tries = 3
        # Module state.
        self.power = "off"  # off | booting | on | psm | hung
        self.echo = True
        self.cfun = 1
        self.stat = 0  # CEREG/CREG stat (3GPP TS 27.007 §10.1.22)
        self.cereg_n = 0
        self.pdp = False
        self.ip = "10.64.0.2"
        self.psm_req: tuple[float | None, float | None] | None = None
        self.edrx = False
        self.gnss_on_at: float | None = None
        self.sockets: dict[int, _Socket] = {}
        self.manual_rx = self.family != "simcom-cip"  # SIM7600 pushes data unless CIPRXGET=1
        self._rxline = bytearray()
        self._data: tuple[int, Callable[[bytes], None]] | None = None  # (bytes wanted, done)
        self._sms_body: Callable[[bytes], None] | None = None
        self._ready_at = 0.0
        self._pins: dict[str, tuple[int, float]] = {}
        self._attach_gen = 0
        self._boot_gen = 0
        self._last_radio = -1e9  # last over-the-air activity (RRC connected until + inactivity)
        self._last_uart = 0.0
        self._state = "off"
        self._state_t = time.monotonic()
        # Books.
        self.seconds: dict[str, float] = collections.defaultdict(float)
        self.timeline: list[tuple[float, str]] = []
        self.commands: collections.Counter[str] = collections.Counter()
        self.errors: collections.Counter[str] = collections.Counter()  # ERROR answers by command
        self._cur = ""
        self.lines_in = 0
        self.bytes = {"up": 0, "down": 0, "up_segments": 0, "down_segments": 0}
        self.airtime_s = 0.0
        self.gnss_seconds = 0.0
        self.power_ons = 0
        self.resets = 0
        self.psm_entries = 0
        self.sms_sent: list[tuple[str, str]] = []
        self.garbage_out = 0
        self.trace: list[tuple[float, str, bytes]] | None = None  # set to [] to record the UART
        # One snapshot of the books per PSM entry, plus the UART's busy window of the
        # cycle that ended there (what the MCU spent awake talking to the modem).
        self.cycles: list[dict[str, Any]] = []
        self._uart_first: float | None = None
        if powered:
            self.power = "on"
            self.echo = False

    # ------------------------------------------------------------ controls ----

    def _locked(self, fn: Callable[[], None]) -> None:
        srv = self.server
        if srv is None:
            fn()
            return
        with srv.lock:
            fn()
        srv.wake()

    def set_scenario(self, scenario: str) -> None:
        """registered | roaming | searching | no-signal | denied | data-down (SCENARIOS)."""
        if scenario not in radio.SCENARIOS:
            raise UsageError(
                f"unknown network scenario {scenario!r} ({', '.join(radio.SCENARIOS)})"
            )
        self._locked(lambda: self._scenario(scenario))

    def fault(self, what: str) -> None:
        """sim-missing | sim-inserted | mute | unmute | reboot (radio.FAULTS)."""
        acts = {
            "sim-missing": lambda: self._sim(False),
            "sim-inserted": lambda: self._sim(True),
            "mute": self._mute,
            "unmute": self._unmute,
            "reboot": lambda: self._reboot("reboot"),
        }
        if what not in acts:
            raise UsageError(f"unknown modem fault {what!r} ({', '.join(radio.FAULTS)})")
        self._locked(acts[what])

    def set_rssi(self, dbm: int) -> None:
        self._locked(lambda: setattr(self, "rssi_dbm", int(dbm)))

    def set_gnss(self, track: radio.GnssTrack) -> None:
        self._locked(lambda: setattr(self, "gnss_track", track))

    def power_cut(self) -> None:
        """The board lost power: the module is off until PWRKEY turns it on again."""
        self._locked(lambda: self._off("power cut"))

    def inject(self, data: bytes) -> None:
        """Put raw bytes on the UART now (garbage, truncated URCs, for bad-input tests)."""
        self._locked(lambda: self._emit(bytes(data)))

    def set_echo(self, on: bool) -> None:
        self._locked(lambda: setattr(self, "echo", bool(on)))

    def status(self) -> dict[str, Any]:
        with self.server.lock if self.server else _nolock():
            self._account(time.monotonic())
            return {
                "model": self.model,
                "timing": self.timing.name,
                "power": self.power,
                "scenario": self.scenario,
                "sim": self.sim_present,
                "stat": self.stat,
                "pdp": self.pdp,
                "psm": self.psm_req is not None and self.can_psm,
                "sockets": sorted(c for c, s in self.sockets.items() if s.open),
                "rssi_dbm": self.rssi_dbm,
                "uart": self._uart is not None,
                "power_ons": self.power_ons,
                "resets": self.resets,
                "psm_entries": self.psm_entries,
                "sms": len(self.sms_sent),
                "commands": sum(self.commands.values()),
                "errors": dict(self.errors),
                "bytes": dict(self.bytes),
                "seconds": {k: round(v, 3) for k, v in self.seconds.items()},
            }

    def mark(self) -> dict[str, Any]:
        """A snapshot of the books, for differences over a scenario (figures)."""
        with self.server.lock if self.server else _nolock():
            return self._snapshot()

    def _snapshot(self) -> dict[str, Any]:
        self._account(time.monotonic())
        return {
            "t": time.monotonic(),
            "seconds": dict(self.seconds),
            "commands": collections.Counter(self.commands),
            "bytes": dict(self.bytes),
            "airtime_s": self.airtime_s,
            "gnss_s": self.gnss_seconds,
            "sms": len(self.sms_sent),
        }

    # -------------------------------------------------------- power, pins ----

    def pin(self, name: str, level: int) -> None:
        """A control line changed (called on the server thread, lock held)."""
        asserted = (level == 1) == self.active_high
        now = time.monotonic()
        prev = self._pins.get(name)
        self._pins[name] = (1 if asserted else 0, now)
        if asserted or prev is None or not prev[0]:
            return
        held_ms = (now - prev[1]) * 1000.0
        if name == "pwrkey":
            self._pwrkey(held_ms)
        elif name == "reset" and held_ms >= PRESS_TOLERANCE * self.hw.get("reset_ms", 100):
            self._reboot("RESET pin")

    def _pwrkey(self, held_ms: float) -> None:
        hw = self.hw
        long_ms = hw.get("pwrkey_reset_ms") or 0
        if long_ms and held_ms >= PRESS_TOLERANCE * long_ms:
            self._reboot("PWRKEY held")
            return
        if self.power == "off":
            if held_ms >= PRESS_TOLERANCE * hw["pwrkey_on_ms"]:
                self._boot()
        elif self.power == "psm":
            if held_ms >= PRESS_TOLERANCE * (hw.get("wake_ms") or hw["pwrkey_on_ms"]):
                self.server.call_later(self.timing.psm_wake_s, self._psm_exit)
        elif self.power in ("on", "booting"):
            if held_ms >= PRESS_TOLERANCE * hw["pwrkey_off_ms"]:
                self._power_down()
        # hung: the firmware ignores PWRKEY; only RESET (or the long press) helps

    def _boot(self) -> None:
        self._drop_all("boot")
        self.power = "booting"
        self.power_ons += 1
        self._boot_gen += 1
        gen = self._boot_gen
        self.echo = True  # V.250 default after power-on
        self.cereg_n = 0
        self.pdp = False
        self.stat = 0
        self.psm_req = None
        self.gnss_on_at = None
        self.cfun = 1
        self.sim_unlocked = self.sim_pin is None
        self._rxline = bytearray()
        self._data = None
        self._sms_body = None
        self.server.call_later(self.timing.boot_s, self._booted, gen)

    def _booted(self, gen: int) -> None:
        if gen != self._boot_gen or self.power != "booting":
            return
        self.power = "on"
        self._ready_at = time.monotonic()
        urcs = {
            "simcom-ca": ["RDY"],
            "simcom-cip": ["RDY"],
            "quectel-qi": ["APP RDY"],
        }[self.family]
        if self.sim_present and self.sim_unlocked:
            urcs.append("+CPIN: READY")
        if self.family == "simcom-cip":
            urcs += ["SMS DONE", "PB DONE"]
        for u in urcs:
            self._urc(u)
        self._start_attach()

    def _power_down(self) -> None:
        msg = {"quectel-qi": "POWERED DOWN"}.get(self.family, "NORMAL POWER DOWN")
        self._emit(f"\r\n{msg}\r\n".encode())
        self._off("power down")

    def _off(self, why: str) -> None:
        self._drop_all(why)
        self.power = "off"
        self.pdp = False
        self.stat = 0
        self._boot_gen += 1
        self._attach_gen += 1
        self._data = None

    def _reboot(self, why: str) -> None:
        self.resets += 1
        self._off(why)
        self._boot()

    def _mute(self) -> None:
        if self.power in ("on", "booting"):
            self.power = "hung"

    def _unmute(self) -> None:
        if self.power == "hung":
            self.power = "on"

    def _shutdown(self) -> None:
        self._drop_all("shutdown")
        if self._uart is not None:
            try:
                self._uart.close()
            except OSError:
                pass
            self._uart = None

    # ------------------------------------------------------------ network ----

    def _sim_ok(self) -> bool:
        return self.sim_present and self.sim_unlocked

    def _start_attach(self) -> None:
        self._attach_gen += 1
        gen = self._attach_gen
        if not self._sim_ok() or self.cfun != 1:
            self._set_stat(0)
            return
        self._set_stat(2)
        if self.scenario in ("searching", "no-signal"):
            return
        self.server.call_later(self.timing.attach_s, self._attached, gen)

    def _attached(self, gen: int) -> None:
        if gen != self._attach_gen or self.power not in ("on", "hung", "psm"):
            return
        s = self.scenario
        if s == "denied":
            self._set_stat(3)
        elif s in ("registered", "data-down"):
            self._set_stat(1)
            self._radio()
        elif s == "roaming":
            self._set_stat(5)
            self._radio()

    def _set_stat(self, stat: int) -> None:
        if stat == self.stat:
            return
        self.stat = stat
        if stat not in (1, 5):
            self._pdp_lost()
        if self.cereg_n and self.power == "on":
            self._urc(f"+CEREG: {stat}")

    def _registered(self) -> bool:
        return self.stat in (1, 5)

    def _scenario(self, s: str) -> None:
        old = self.scenario
        self.scenario = s
        if self.power not in ("on", "psm", "hung"):
            return
        if s in ("searching", "no-signal"):
            self._attach_gen += 1
            self._set_stat(2)
        elif s == "denied":
            self._attach_gen += 1
            self._set_stat(3)
        elif s == "data-down":
            self._pdp_lost()
            if not self._registered():
                self._start_attach()
        elif not self._registered() or (s == "roaming") != (self.stat == 5) or old == "denied":
            self._start_attach()

    def _sim(self, present: bool) -> None:
        self.sim_present = present
        if self.power != "on":
            return
        if not present:
            self._attach_gen += 1
            self._set_stat(0)
            self._urc("+CPIN: NOT READY")
        else:
            self._urc("+CPIN: READY")
            self._start_attach()

    def _pdp_lost(self) -> None:
        if self.pdp:
            self.pdp = False
            urc = {
                "simcom-ca": "+APP PDP: 0,DEACTIVE",
                "simcom-cip": "+CIPEVENT: NETWORK CLOSED UNEXPECTEDLY",
                "quectel-qi": '+QIURC: "pdpdeact",1',
            }[self.family]
            if self.power == "on":
                self._urc(urc)
        for s in list(self.sockets.values()):
            if s.open:
                self._sock_closed(s, remote=True)

    def _data_ok(self) -> bool:
        return self._registered() and self.scenario != "data-down"

    def _csq(self) -> int:
        if not self._sim_ok() or self.scenario == "no-signal" or self.cfun != 1:
            return 99
        return max(0, min(31, (self.rssi_dbm + 113) // 2))

    def _radio(self, seconds: float = 0.0) -> float:
        """Over-the-air activity now; returns the extra delay of an RRC setup if it was idle."""
        now = time.monotonic()
        idle = now - self._last_radio > self.timing.rrc_inactivity_s
        self._last_radio = now + seconds
        return self.timing.rrc_setup_ms / 1000.0 if idle else 0.0

    def _rrc_connected(self, now: float) -> bool:
        return now - self._last_radio <= self.timing.rrc_inactivity_s

    # --------------------------------------------------------------- PSM ----

    def _psm_allowed(self) -> bool:
        return (
            self.can_psm
            and self.psm_granted
            and self.psm_req is not None
            and self.psm_req[1] is not None
            and self._registered()
            and self.power == "on"
        )

    def _tick(self, now: float) -> None:
        self._account(now)
        if self._psm_allowed() and not any(s.open for s in self.sockets.values()):
            release = self._last_radio + self.timing.rrc_inactivity_s
            quiet = max(release, self._last_uart)
            if now - quiet >= (self.psm_req[1] or 0) and self.gnss_on_at is None:
                self._psm_enter()

    def _psm_enter(self) -> None:
        snap = self._snapshot()
        snap["uart_first"] = self._uart_first
        snap["uart_last"] = self._last_uart
        self.cycles.append(snap)
        del self.cycles[:-1000]
        self._uart_first = None
        self.power = "psm"
        self.psm_entries += 1
        self._data = None
        self._rxline = bytearray()
        # The module says so where it can (the UART dies right after).
        urc = {"simcom-ca": "ENTER PSM", "quectel-qi": "PSM POWER DOWN"}.get(self.family)
        if urc and self._uart is not None:
            try:
                self._uart.sendall(f"\r\n{urc}\r\n".encode())
            except OSError:
                pass

    def _psm_exit(self) -> None:
        if self.power != "psm":
            return
        self.power = "on"
        self.echo = True  # not saved with AT&W: back to the default after PSM
        self._ready_at = time.monotonic()
        self._last_uart = time.monotonic()

    def _state_now(self, now: float) -> str:
        p = self.power
        if p == "off":
            return "off"
        if p == "psm":
            return "psm"
        if p == "booting":
            return "awake"
        if self._rrc_connected(now):
            return "connected"
        if self.edrx and self._registered():
            return "edrx"
        return "awake"

    def _account(self, now: float) -> None:
        st = self._state_now(now)
        self.seconds[self._state] += now - self._state_t
        if self.gnss_on_at is not None:
            self.gnss_seconds += now - max(self._state_t, self.gnss_on_at)
        self._state_t = now
        if st != self._state:
            self._state = st
            self.timeline.append((now, st))
            if len(self.timeline) > TIMELINE_KEEP:
                del self.timeline[: len(self.timeline) - TIMELINE_KEEP]

    # -------------------------------------------------------------- UART ----

    def _attach_uart(self, conn: socket.socket) -> None:
        old = self._uart
        self._uart = conn
        if old is not None and old is not conn:
            try:
                self.server.unwatch(old)
                old.close()
            except OSError:
                pass

    def _emit(self, data: bytes) -> None:
        if self._uart is None or self.power not in ("on", "booting"):
            return
        if self.trace is not None:
            self.trace.append((time.monotonic(), "out", data))
        try:
            self._uart.setblocking(True)
            self._uart.sendall(data)
            self._uart.setblocking(False)
        except OSError:
            self._uart = None

    def _out(self, data: bytes, delay: float = 0.0) -> None:
        """Answer bytes after the module's processing time, in command order."""
        now = time.monotonic()
        due = max(now, self._ready_at) + self.timing.cmd_ms / 1000.0 + delay
        self._ready_at = due
        gen = self._boot_gen
        self.server.call_later(due - now, self._emit_if, gen, data)

    def _emit_if(self, gen: int, data: bytes) -> None:
        if gen == self._boot_gen and self.power == "on":
            self._emit(data)

    def _urc(self, text: str, delay: float = 0.0) -> None:
        gen = self._boot_gen
        data = f"\r\n{text}\r\n".encode()
        if delay <= 0:
            self._emit_if(gen, data)
        else:
            self.server.call_later(delay, self._emit_if, gen, data)

    def _reply(self, lines: list[str | bytes] = (), final: str = "OK", delay: float = 0.0) -> None:
        if final and final not in ("OK", "SEND OK", "+CME ERROR: 516"):  # 516: no fix yet
            self.errors[self._cur] += 1
        out = b""
        for ln in lines:
            out += b"\r\n" + (ln if isinstance(ln, bytes) else ln.encode()) + b"\r\n"
        if final:
            out += f"\r\n{final}\r\n".encode()
        self._out(out, delay)

    def _error(self, cme: int | None = None, delay: float = 0.0) -> None:
        self._reply([], "ERROR" if cme is None else f"+CME ERROR: {cme}", delay)

    def _uart_rx(self, data: bytes) -> None:
        if not data:
            if self._uart is not None:
                self._uart = None  # the MCU side went away (reset, power cut)
            return
        if self.trace is not None:
            self.trace.append((time.monotonic(), "in", data))
        if self._uart_first is None:
            self._uart_first = time.monotonic()  # the MCU is awake and talking (PSM or not)
        if self.power not in ("on",):
            return  # off, booting, PSM (UART dead), hung (firmware stuck)
        self._last_uart = time.monotonic()
        i = 0
        while i < len(data):
            if self._data is not None:
                want, done = self._data
                take = data[i : i + want]
                i += len(take)
                self._data_buf += take
                want -= len(take)
                if want:
                    self._data = (want, done)
                else:
                    self._data = None
                    buf, self._data_buf = bytes(self._data_buf), bytearray()
                    done(buf)
                continue
            if self._sms_body is not None:
                b = data[i]
                i += 1
                if b == 0x1A:  # Ctrl-Z: send
                    body, self._data_buf = bytes(self._data_buf), bytearray()
                    cb, self._sms_body = self._sms_body, None
                    cb(body)
                elif b == 0x1B:  # ESC: cancel the message
                    self._sms_body = None
                    self._data_buf = bytearray()
                    self._reply()
                else:
                    self._data_buf.append(b)
                continue
            b = data[i]
            i += 1
            if b == 0x1B and not self._rxline:
                continue  # ESC outside a prompt: ignored
            if b == 13:  # CR ends a command line (S3)
                line = bytes(self._rxline)
                self._rxline = bytearray()
                if self.echo:
                    self._emit(line + b"\r")
                self._command(line)
            elif b == 10:
                continue
            elif len(self._rxline) < 560:
                self._rxline.append(b)

    _data_buf = bytearray()

    def _expect_data(self, n: int, done: Callable[[bytes], None]) -> None:
        self._data_buf = bytearray()
        self._data = (n, done)
        self._out(b"\r\n> ")

    # ---------------------------------------------------------- commands ----

    def _command(self, raw: bytes) -> None:
        try:
            line = raw.decode("ascii").strip()
        except UnicodeDecodeError:
            self._error()
            return
        if not line:
            return
        self.lines_in += 1
        up = line.upper()
        self._cur = up[:12]
        if up == "AT":
            self.commands["AT"] += 1
            self._reply()
            return
        if up in ("ATE0", "ATE1"):
            self.commands["ATE"] += 1
            self.echo = up == "ATE1"
            self._reply()
            return
        if up == "ATI":
            self.commands["ATI"] += 1
            self._reply(
                [f"SIMCOM_{self.model}" if "SIM" in self.model else f"Quectel {self.model}"]
            )
            return
        m = _CMD.match(line)
        if not m:
            self._error()
            return
        name = m.group(1).upper()
        rest = m.group(2)
        if rest.startswith("=?"):
            op, arg = "test", rest[2:]
        elif rest.startswith("?"):
            op, arg = "read", rest[1:]
        elif rest.startswith("="):
            op, arg = "set", rest[1:]
        else:
            op, arg = "exec", rest
        self.commands[name.lstrip("+")] += 1
        self._cur = name.lstrip("+")
        handler = getattr(self, "_c_" + name.lstrip("+*#$^").lower(), None)
        fam = getattr(self, f"_f_{self.family.replace('-', '_')}_{name.lstrip('+').lower()}", None)
        h = fam or handler
        if h is None or (op == "test"):
            if op == "test" and h is not None:
                self._reply()
            else:
                self._error()
            return
        try:
            h(op, _args(arg) if op == "set" else [])
        except (ValueError, IndexError, KeyError):
            self._error()

    # generic 3GPP TS 27.007 / 27.005 commands

    def _c_cmee(self, op: str, a: list[str]) -> None:
        self._reply()

    _c_cmgf = _c_cscs = _c_cgdcont = _c_cnmp = _c_cmnb = _c_qcfg = _c_cpsmstatus = _c_cmee

    def _c_cfun(self, op: str, a: list[str]) -> None:
        if op == "read":
            self._reply([f"+CFUN: {self.cfun}"])
            return
        fun = int(a[0])
        if len(a) > 1 and a[1] == "1":
            self._reply()
            self.server.call_later(0.05, self._reboot, "CFUN reset")
            return
        self.cfun = fun
        self._reply(delay=0.1)
        if fun == 1:
            self._start_attach()
        else:
            self._attach_gen += 1
            self._set_stat(0)

    def _c_cpin(self, op: str, a: list[str]) -> None:
        if not self.sim_present:
            self._error(10)  # SIM not inserted
            return
        if op == "read":
            if self.sim_unlocked:
                self._reply(["+CPIN: READY"])
            elif self.pin_tries <= 0:
                self._reply(["+CPIN: SIM PUK"])
            else:
                self._reply(["+CPIN: SIM PIN"])
            return
        if op == "set":
            if self.sim_unlocked:
                self._error(3)  # operation not allowed
            elif self.pin_tries > 0 and a[0] == self.sim_pin:
                self.sim_unlocked = True
                self._reply(delay=0.2)
                self._urc("+CPIN: READY", 0.3)
                self._start_attach()
            else:
                self.pin_tries -= 1
                self._error(16)  # incorrect password
            return
        self._error()

    def _c_csq(self, op: str, a: list[str]) -> None:
        self._reply([f"+CSQ: {self._csq()},99"])

    def _c_cesq(self, op: str, a: list[str]) -> None:
        q = self._csq()
        rsrp = 255 if q == 99 else max(0, min(97, self.rssi_dbm + 141))
        rsrq = 255 if q == 99 else 20
        self._reply([f"+CESQ: 99,99,255,255,{rsrq},{rsrp}"])

    def _c_cereg(self, op: str, a: list[str]) -> None:
        if op == "set":
            self.cereg_n = int(a[0] or 0)
            self._reply()
            return
        self._reply([f"+CEREG: {self.cereg_n},{self.stat}"])

    def _c_creg(self, op: str, a: list[str]) -> None:
        if op == "set":
            self._reply()
            return
        self._reply([f"+CREG: 0,{self.stat}"])

    def _c_cops(self, op: str, a: list[str]) -> None:
        act = 9 if self.timing.name == "nb-iot" else 7
        if self._registered():
            self._reply([f'+COPS: 0,0,"AUXILIO-EMU",{act}'])
        else:
            self._reply(["+COPS: 0"])

    def _c_cgsn(self, op: str, a: list[str]) -> None:
        self._reply([f"86{self.index:013d}"])

    def _c_cimi(self, op: str, a: list[str]) -> None:
        if not self.sim_present:
            self._error(10)
            return
        self._reply([f"334020{self.index:09d}"])

    def _c_ccid(self, op: str, a: list[str]) -> None:
        if not self.sim_present:
            self._error(10)
            return
        self._reply([f"895202{self.index:013d}F"])

    def _c_cgmr(self, op: str, a: list[str]) -> None:
        self._reply([f"Revision:{self.model}-EMU"])

    def _c_cnum(self, op: str, a: list[str]) -> None:
        self._reply([f'+CNUM: "","{self.msisdn}",145'])

    def _c_cpsms(self, op: str, a: list[str]) -> None:
        if op == "read":
            on = 1 if self.psm_req else 0
            self._reply([f"+CPSMS: {on},,,,"])
            return
        if not self.can_psm:
            self._error(4)  # operation not supported
            return
        if a and a[0] == "1":
            tau = _timer3_s(a[3]) if len(a) > 3 and a[3] else 3600.0
            act = _timer2_s(a[4]) if len(a) > 4 and a[4] else 2.0
            self.psm_req = (tau, act)
        else:
            self.psm_req = None
        self._reply()

    def _c_cedrxs(self, op: str, a: list[str]) -> None:
        if not self.profile.get("network", {}).get("edrx"):
            self._error(4)
            return
        self.edrx = bool(a and a[0] in ("1", "2"))
        self._reply()

    def _c_cmgs(self, op: str, a: list[str]) -> None:
        to = a[0] if a else ""

        def send(body: bytes) -> None:
            if not self.sim_present:
                self._reply([], "+CMS ERROR: 310")  # SIM not inserted (27.005 §3.2.5)
                return
            if not self._registered():
                self._reply([], "+CMS ERROR: 331")  # no network service
                return
            text = body.decode("latin-1")
            extra = self._radio(self.timing.sms_submit_s)
            ref = self.smsc.submit(self.msisdn, to, text) if self.smsc is not None else 0
            self.sms_sent.append((to, text))
            self._reply([f"+CMGS: {ref}"], delay=extra + self.timing.sms_submit_s)

        self._sms_body = send
        self._data_buf = bytearray()
        self._out(b"\r\n> ")

    # ------------------------------------------------------ TCP plumbing ----

    def _sock(self, cid: int) -> _Socket:
        s = self.sockets.get(cid)
        if s is None:
            s = self.sockets[cid] = _Socket(cid)
        return s

    def _connect(self, cid: int, host: str, port: int, done: Callable[[int], None]) -> None:
        """Open socket cid to host:port over the emulated radio; done(0) or done(error)."""
        s = self._sock(cid)
        if s.open or s.sock is not None:
            done(-1)
            return
        if not self._data_ok() or not self.pdp:
            done(-2)
            return
        rtt = (self.timing.uplink_ms + self.timing.downlink_ms) / 1000.0
        delay = self._radio() + rtt
        try:
            real = socket.create_connection((host, int(port)), timeout=3)
        except OSError:
            self.server.call_later(delay, done, -3)
            return
        real.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        real.setblocking(False)
        s.sock = real
        s.rx = bytearray()
        self._count(0, up=True, handshake=2)  # SYN, ACK
        self._count(0, up=False, handshake=1)  # SYN-ACK

        def opened() -> None:
            if s.sock is not real:
                return
            s.open = True
            self.server.watch(real, lambda d: self._from_net(s, real, d))
            done(0)

        self.server.call_later(delay, opened)

    def _count(self, n: int, up: bool, handshake: int = 0) -> None:
        segs = handshake + (0 if n == 0 else (n + SEGMENT - 1) // SEGMENT)
        side = "up" if up else "down"
        other = "down" if up else "up"
        self.bytes[side] += n
        self.bytes[f"{side}_segments"] += segs
        if n:
            self.bytes[f"{other}_segments"] += segs  # one TCP ACK back per data segment
        kbps = (self.profile.get("power_model") or {}).get("uplink_kbps") or 300
        if up:
            self.airtime_s += (n + HEADERS * segs) * 8 / (kbps * 1000.0)

    def _to_net(self, s: _Socket, data: bytes) -> None:
        """Uplink: data leaves the module after the radio latency, in order."""
        extra = self._radio()
        now = time.monotonic()
        due = max(now + extra + self.timing.uplink_ms / 1000.0, s.up_due)
        s.up_due = due
        self._count(len(data), up=True)
        real = s.sock

        def deliver() -> None:
            if s.sock is real and real is not None:
                try:
                    real.sendall(data)
                except OSError:
                    self._sock_closed(s, remote=True)

        self.server.call_later(due - now, deliver)

    def _from_net(self, s: _Socket, real: socket.socket, data: bytes) -> None:
        """Downlink: bytes from the broker reach the module after the radio latency."""
        if s.sock is not real:
            return
        now = time.monotonic()
        idle = not self._rrc_connected(now)
        extra = (self.timing.rrc_setup_ms / 1000.0 + PAGING_S) if idle else 0.0
        due = max(now + extra + self.timing.downlink_ms / 1000.0, s.down_due)
        s.down_due = due
        if data:
            self._count(len(data), up=False)

        def arrive() -> None:
            if s.sock is not real or self.power not in ("on", "hung"):
                return
            self._radio()
            if not data:
                self._sock_closed(s, remote=True)
                return
            was_empty = not s.rx
            s.rx += data
            if not self.manual_rx:
                self._push(s)
            elif was_empty:
                self._urc(
                    {
                        "simcom-ca": f"+CADATAIND: {s.cid}",
                        "simcom-cip": f"+CIPRXGET: 1,{s.cid}",
                        "quectel-qi": f'+QIURC: "recv",{s.cid}',
                    }[self.family]
                )

        self.server.call_later(due - now, arrive)

    def _push(self, s: _Socket) -> None:
        data, s.rx = bytes(s.rx), bytearray()
        self._emit(f"\r\nRECV FROM:0.0.0.0:0\r\n+IPD{len(data)}\r\n".encode() + data)

    def _take(self, s: _Socket, n: int) -> bytes:
        data = bytes(s.rx[:n])
        del s.rx[:n]
        return data

    def _sock_closed(self, s: _Socket, remote: bool) -> None:
        real, s.sock = s.sock, None
        was_open = s.open
        s.open = False
        s.rx = bytearray()
        if real is not None:
            self.server.unwatch(real)
            try:
                real.close()
            except OSError:
                pass
            self._count(0, up=True, handshake=2)  # FIN, ACK
            self._count(0, up=False, handshake=2)
        if remote and was_open and self.power == "on":
            self._urc(
                {
                    "simcom-ca": f"+CASTATE: {s.cid},0",
                    "simcom-cip": f"+IPCLOSE: {s.cid},1",
                    "quectel-qi": f'+QIURC: "closed",{s.cid}',
                }[self.family]
            )

    def _drop_all(self, why: str) -> None:
        for s in list(self.sockets.values()):
            if s.sock is not None or s.open:
                self._sock_closed(s, remote=False)

    def _send_data(self, cid: int, n: int, ok: Callable[[], None]) -> None:
        s = self.sockets.get(cid)
        if s is None or not s.open or n <= 0 or n > 1500:
            self._error()
            return

        def got(data: bytes) -> None:
            if not s.open:
                self._reply([], "SEND FAIL" if self.family == "quectel-qi" else "ERROR")
                return
            self._to_net(s, data)
            ok()

        self._expect_data(n, got)

    def _activate_pdp(self, result_urc: Callable[[bool], str]) -> None:
        """A PDP activation whose result comes later as a URC (CNACT, NETOPEN)."""
        ok = self._data_ok()
        delay = self._radio() + self.timing.pdp_s

        def done() -> None:
            self.pdp = ok and self._data_ok()
            self._urc(result_urc(self.pdp))

        self.server.call_later(delay, done)

    def _gnss_fix(self) -> radio.Fix | None:
        now = time.monotonic()
        if self.gnss_on_at is None or now - self.gnss_on_at < self.timing.gnss_ttff_s:
            return None
        if self.profile["at"].get("gnss_exclusive") and self._rrc_connected(now):
            return None  # LTE has the RF front end (SIM7080G, BG95)
        return self.gnss_track.at(now)

    def _gnss_power(self, on: bool) -> None:
        now = time.monotonic()
        if on and self.gnss_on_at is None:
            self.gnss_on_at = now
        elif not on and self.gnss_on_at is not None:
            self._account(now)
            self.gnss_on_at = None

    # --------------------------------------------- SIMCom SIM7070/7080 (CA) ----

    def _f_simcom_ca_cncfg(self, op: str, a: list[str]) -> None:
        self._reply()

    def _f_simcom_ca_cnact(self, op: str, a: list[str]) -> None:
        if op == "read":
            lines = [f'+CNACT: 0,{1 if self.pdp else 0},"{self.ip if self.pdp else "0.0.0.0"}"']
            lines += [f'+CNACT: {i},0,"0.0.0.0"' for i in (1, 2, 3)]
            self._reply(lines)
            return
        ctx, on = int(a[0]), int(a[1])
        if ctx != 0:
            self._error()
            return
        self._reply()
        if on:
            self._activate_pdp(lambda up: f"+APP PDP: 0,{'ACTIVE' if up else 'DEACTIVE'}")
        else:
            self.pdp = False
            self._drop_all("deactivate")
            self._urc("+APP PDP: 0,DEACTIVE", 0.05)

    def _f_simcom_ca_caopen(self, op: str, a: list[str]) -> None:
        cid, host, port = int(a[0]), a[3], int(a[4])
        if a[2].upper() != "TCP":
            self._error()
            return

        def done(err: int) -> None:
            code = {0: 0, -1: 3, -2: 21, -3: 23}.get(err, 1)  # 3 in use, 21 no PDP, 23 refused
            self._reply([f"+CAOPEN: {cid},{code}"])

        self._connect(cid, host, port, done)

    def _f_simcom_ca_casend(self, op: str, a: list[str]) -> None:
        self._send_data(int(a[0]), int(a[1]), lambda: self._reply())

    def _f_simcom_ca_carecv(self, op: str, a: list[str]) -> None:
        s = self.sockets.get(int(a[0]))
        if s is None or (not s.open and not s.rx):
            self._error()
            return
        data = self._take(s, int(a[1]))
        head = f"+CARECV: {len(data)}".encode()
        if data:
            self._out(b"\r\n" + head + b"," + data + b"\r\n\r\nOK\r\n")
        else:
            self._reply([head])

    def _f_simcom_ca_caclose(self, op: str, a: list[str]) -> None:
        s = self.sockets.get(int(a[0]))
        if s is None or not s.open:
            self._error()
            return
        self._sock_closed(s, remote=False)
        self._reply()

    def _f_simcom_ca_castate(self, op: str, a: list[str]) -> None:
        self._reply(
            [f"+CASTATE: {c},{1 if s.open else 0}" for c, s in sorted(self.sockets.items())]
        )

    def _f_simcom_ca_cgnspwr(self, op: str, a: list[str]) -> None:
        if op == "read":
            self._reply([f"+CGNSPWR: {0 if self.gnss_on_at is None else 1}"])
            return
        self._gnss_power(a[0] == "1")
        self._reply()

    def _f_simcom_ca_cgnsinf(self, op: str, a: list[str]) -> None:
        run = 0 if self.gnss_on_at is None else 1
        f = self._gnss_fix()
        if f is None:
            self._reply([f"+CGNSINF: {run},0,,,,,,,,,,,,,,,,,,,"])
            return
        utc = time.strftime("%Y%m%d%H%M%S.000", time.gmtime())
        self._reply(
            [
                f"+CGNSINF: 1,1,{utc},{f.lat:.6f},{f.lon:.6f},2240.000,0.00,0.0,1,,"
                f"{f.hdop:.1f},{f.hdop + 0.3:.1f},0.9,,12,8,,,38,,"
            ]
        )

    def _f_simcom_ca_cpowd(self, op: str, a: list[str]) -> None:
        self._reply([], "")
        self.server.call_later(0.05, self._power_down)

    # ------------------------------------------------ SIMCom SIM7600 (CIP) ----

    def _f_simcom_cip_ciprxget(self, op: str, a: list[str]) -> None:
        mode = int(a[0])
        if mode in (0, 1):
            self.manual_rx = mode == 1
            self._reply()
            return
        if mode != 2:
            self._error()
            return
        cid, n = int(a[1]), int(a[2])
        s = self.sockets.get(cid)
        if s is None or (not s.open and not s.rx):
            self._error()
            return
        data = self._take(s, n)
        head = f"+CIPRXGET: 2,{cid},{len(data)},{len(s.rx)}".encode()
        if data:
            self._out(b"\r\n" + head + b"\r\n" + data + b"\r\nOK\r\n")
        else:
            self._reply([head])

    def _f_simcom_cip_netopen(self, op: str, a: list[str]) -> None:
        if op == "read":
            self._reply([f"+NETOPEN: {1 if self.pdp else 0}"])
            return
        if self.pdp:
            self._reply([], "+IP ERROR: Network is already opened")
            return
        self._reply()
        self._activate_pdp(lambda up: f"+NETOPEN: {0 if up else 1}")

    def _f_simcom_cip_netclose(self, op: str, a: list[str]) -> None:
        self.pdp = False
        self._drop_all("netclose")
        self._reply()
        self._urc("+NETCLOSE: 0", 0.05)

    def _f_simcom_cip_cipopen(self, op: str, a: list[str]) -> None:
        cid, host, port = int(a[0]), a[2], int(a[3])
        self._reply()

        def done(err: int) -> None:
            code = {0: 0, -1: 4, -2: 2, -3: 1}.get(err, 1)  # 4 busy, 2 net not open, 1 failed
            self._urc(f"+CIPOPEN: {cid},{code}")

        self._connect(cid, host, port, done)

    def _f_simcom_cip_cipsend(self, op: str, a: list[str]) -> None:
        cid, n = int(a[0]), int(a[1])

        def ok() -> None:
            self._reply()
            self._urc(f"+CIPSEND: {cid},{n},{n}", 0.01)

        self._send_data(cid, n, ok)

    def _f_simcom_cip_cipclose(self, op: str, a: list[str]) -> None:
        s = self.sockets.get(int(a[0]))
        if s is None or not s.open:
            self._error()
            return
        self._sock_closed(s, remote=False)
        self._reply()
        self._urc(f"+CIPCLOSE: {s.cid},0", 0.01)

    def _f_simcom_cip_cgps(self, op: str, a: list[str]) -> None:
        if op == "read":
            self._reply([f"+CGPS: {0 if self.gnss_on_at is None else 1},1"])
            return
        self._gnss_power(a[0] == "1")
        self._reply()

    def _f_simcom_cip_cgpsinfo(self, op: str, a: list[str]) -> None:
        f = self._gnss_fix()
        if f is None:
            self._reply(["+CGPSINFO: ,,,,,,,,"])
            return

        def nmea(v: float, w: int, pos: str, neg: str) -> str:
            d = abs(v)
            deg = int(d)
            return f"{deg:0{w}d}{(d - deg) * 60:09.6f},{pos if v >= 0 else neg}"

        t = time.gmtime()
        self._reply(
            [
                f"+CGPSINFO: {nmea(f.lat, 2, 'N', 'S')},{nmea(f.lon, 3, 'E', 'W')},"
                f"{time.strftime('%d%m%y', t)},{time.strftime('%H%M%S', t)}.0,2240.0,0.0,0.0"
            ]
        )

    def _c_power_off(self, op: str, a: list[str]) -> None:
        """AT+CPOF (SIM7600) / AT+QPOWD (BG95): OK, then the power-down URC, then off."""
        self._reply()
        self.server.call_later(0.05, self._power_down)

    _f_simcom_cip_cpof = _c_power_off

    # ---------------------------------------------------- Quectel BG95 (QI) ----

    def _f_quectel_qi_qicsgp(self, op: str, a: list[str]) -> None:
        self._reply()

    def _f_quectel_qi_qiact(self, op: str, a: list[str]) -> None:
        if op == "read":
            self._reply([f'+QIACT: 1,1,1,"{self.ip}"'] if self.pdp else [])
            return
        if self.pdp:
            self._reply()
            return
        ok = self._data_ok()
        delay = self._radio() + self.timing.pdp_s
        self.pdp = ok
        if ok:
            self._reply(delay=delay)
        else:
            self._error(delay=delay)

    def _f_quectel_qi_qideact(self, op: str, a: list[str]) -> None:
        self.pdp = False
        self._drop_all("deactivate")
        self._reply()

    def _f_quectel_qi_qiopen(self, op: str, a: list[str]) -> None:
        cid, host, port = int(a[1]), a[3], int(a[4])
        self._reply()

        def done(err: int) -> None:
            code = {0: 0, -1: 563, -2: 561, -3: 566}.get(err, 566)  # in use / PDP / failed
            self._urc(f"+QIOPEN: {cid},{code}")

        self._connect(cid, host, port, done)

    def _f_quectel_qi_qisend(self, op: str, a: list[str]) -> None:
        self._send_data(int(a[0]), int(a[1]), lambda: self._reply([], "SEND OK"))

    def _f_quectel_qi_qird(self, op: str, a: list[str]) -> None:
        s = self.sockets.get(int(a[0]))
        if s is None:
            self._error()
            return
        data = self._take(s, int(a[1]))
        if data:
            self._out(f"\r\n+QIRD: {len(data)}\r\n".encode() + data + b"\r\n\r\nOK\r\n")
        else:
            self._reply(["+QIRD: 0"])

    def _f_quectel_qi_qiclose(self, op: str, a: list[str]) -> None:
        s = self.sockets.get(int(a[0]))
        if s is not None and s.open:
            self._sock_closed(s, remote=False)
        self._reply()

    def _f_quectel_qi_qgps(self, op: str, a: list[str]) -> None:
        if op == "read":
            self._reply([f"+QGPS: {0 if self.gnss_on_at is None else 1}"])
            return
        if self.gnss_on_at is not None:
            self._error(504)  # session is ongoing
            return
        self._gnss_power(True)
        self._reply()

    def _f_quectel_qi_qgpsend(self, op: str, a: list[str]) -> None:
        self._gnss_power(False)
        self._reply()

    def _f_quectel_qi_qgpsloc(self, op: str, a: list[str]) -> None:
        if self.gnss_on_at is None:
            self._error(505)  # session not active
            return
        f = self._gnss_fix()
        if f is None:
            self._error(516)  # not fixed now
            return
        t = time.gmtime()
        self._reply(
            [
                f"+QGPSLOC: {time.strftime('%H%M%S', t)}.000,{f.lat:.5f},{f.lon:.5f},"
                f"{f.hdop:.1f},2240.0,3,0.00,0.0,0.0,{time.strftime('%d%m%y', t)},08"
            ]
        )

    _f_quectel_qi_qpowd = _c_power_off

    def _f_quectel_qi_qccid(self, op: str, a: list[str]) -> None:
        if not self.sim_present:
            self._error(10)
            return
        self._reply([f"+QCCID: 895202{self.index:013d}F"])

    _f_simcom_ca_ccid = _c_ccid


class _nolock:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def attach(
    server: ModemServer,
    profile: str = "sim7080g",
    index: int = 0,
    **kwargs: Any,
) -> EmulatedModem:
    """A new EmulatedModem for device `index` on `server`."""
    return server.add(EmulatedModem(profile, **kwargs), index)
