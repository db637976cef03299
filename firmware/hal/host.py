# Host HAL for the MicroPython unix port: virtual button, battery, mains, tamper, link and outputs.
#
# Driven in-process (tests call press()/release()/set_battery()... on the
# object) or, when AUXILIO_HAL_CONTROL=127.0.0.1:PORT is set, through the
# control channel in hal/control.py (loaded only then).
#
# RAM budget: per HostHal ~0.5 KB (bounded output history of OUTPUT_HISTORY
# entries); with an emulated modem, the wires of hal/wire.py (two sockets).

import asyncio
from time import ticks_us

OUTPUT_HISTORY = 16  # feedback outputs remembered for in-process tests
BEARER_WIFI = 1  # auxcodec.BEARERS index


def _env(name):
    try:
        import os

        return os.getenv(name)
    except (ImportError, AttributeError):
        return None


def _env_reset_cause():
    cause = _env("AUXILIO_RESET_CAUSE")
    return cause if cause in ("power_on", "hard_reset", "soft_reset") else "power_on"


class HostLink:
    """The host 'transport': just a link-up flag the controller toggles."""

    bearer = BEARER_WIFI

    def __init__(self, hal):
        self.hal = hal

    def up(self):
        return self.hal.link

    def rssi(self):
        return self.hal.rssi_dbm if self.hal.link else None

    async def run(self):
        return  # nothing to keep alive on the host


class HostHal:
    """A virtual board: inputs set by the controller, outputs recorded and emitted."""

    platform = "host"

    def __init__(self, board=None, index=0, channel=None):
        board = board or {}  # read here, not kept (parsed JSON is large)
        self.error_on_led = bool((board.get("feedback") or {}).get("led"))
        self.index = index
        self.channel = channel
        inputs = board.get("inputs") or {}
        self.device = None
        self.pressed = False
        bat = board.get("battery")
        self.battery = 100 if bat else None
        # The battery's range, so the factory test can read a voltage as on the ADC.
        self._bat_mv = (bat.get("empty_mv", 3300), bat.get("full_mv", 4150)) if bat else None
        self.is_charging = False
        self.mains_on = True if inputs.get("mains") else None
        self.tamper = False if inputs.get("tamper") else None
        self.link = True
        self.rssi_dbm = -55
        self.outputs = []  # recent (kind, pattern)
        self.boots = 0  # soft resets done through reset()
        # The emulator says why this interpreter started (EN pulse, soft reboot);
        # SPEC §9 reset_cause names. Plain runs are a power-on.
        self.cause = _env_reset_cause()
        self.wdt_ms = 0
        self.wdt_feeds = 0
        self.slept_ms = 0
        self.on_reset = None  # set by app: reboots the Device object in place
        self.transport = None
        self._pins = None
        self._uart = None
        if channel is not None:
            channel.register(index, self)

    # ------------------------------------------------- controller inputs ----

    def press(self):
        self.pressed = True
        if self.device is not None:
            self.device.press_edge(1)

    def release(self):
        self.pressed = False
        if self.device is not None:
            self.device.press_edge(0)

    def set_battery(self, pct):
        self.battery = pct

    def set_mains(self, on):
        self.mains_on = bool(on)

    def set_tamper(self, opened):
        self.tamper = bool(opened)

    def set_link(self, up):
        self.link = bool(up)

    def reset(self):
        self.boots += 1
        self.cause = "soft_reset"
        if self.on_reset is not None:
            self.on_reset()

    # -------------------------------------------------- firmware-facing ----

    def make_flag(self):
        # Inputs arrive from asyncio tasks here, so an Event is enough; the unix
        # port segfaults with 5+ ThreadSafeFlag waiters alongside sockets.
        return asyncio.Event()

    def attach_button(self, device):
        self.device = device

    def battery_pct(self):
        return self.battery

    def battery_mv(self):
        """The voltage the ADC would read for the controller's battery level (mV)."""
        if self._bat_mv is None or self.battery is None:
            return None
        lo, hi = self._bat_mv
        return lo + (hi - lo) * self.battery // 100

    def charging(self):
        return self.is_charging

    def mains(self):
        return self.mains_on

    def tamper_open(self):
        return self.tamper

    def location(self):
        # GNSS comes from the (emulated) modem when there is one; scripted tracks only.
        loc = getattr(self.transport, "location", None)
        return loc() if loc is not None else None

    def _out(self, kind, pattern):
        h = self.outputs
        if len(h) >= OUTPUT_HISTORY:
            del h[0]
        h.append((kind, pattern))
        self._emit({"ev": kind, "pattern": pattern})

    def haptic(self, pattern):
        self._out("haptic", pattern)

    def led(self, pattern):
        self._out("led", pattern)

    def buzzer(self, pattern):
        self._out("buzzer", pattern)

    def error_blink(self):
        self._out("led" if self.error_on_led else "haptic", "error")

    def state(self, name, counter):
        # "us": the device's ticks_us when the state changed, so latency figures
        # need not trust arrival times (the control writer is just another task).
        self._emit({"ev": "state", "name": name, "counter": counter, "us": ticks_us()})

    def log(self, msg):
        print(msg)
        self._emit({"ev": "log", "msg": msg})

    def hello(self, device):
        self._emit({"ev": "hello", "device": device})

    def reset_cause(self):
        return self.cause

    def make_transport(self, cfg, log):
        # A modem on the board and an emulator to talk to (AUXILIO_HAL_MODEM): the
        # transport manager of issue 12; otherwise the plain link flag.
        if getattr(cfg, "modem", None) is None or not _env("AUXILIO_HAL_MODEM"):
            return HostLink(self)
        import transport

        self.transport = transport.make(cfg, log, self)
        return self.transport

    def wifi_link(self, cfg, log):
        return HostLink(self)

    def modem_port(self, pins, baud):
        from hal import wire

        old = self._uart
        if old is not None:  # a soft reset rebuilds the Device: one wire at a time
            try:
                old.close()
            except (OSError, AttributeError):
                pass
        self._uart = wire.uart(_env("AUXILIO_HAL_MODEM"), self.index)
        return self._uart

    def modem_pin(self, pins, name):
        if pins.get(name) is None:
            return None
        if self._pins is None:
            from hal import wire

            self._pins = wire.Pins(_env("AUXILIO_HAL_MODEM"), self.index)
        return self._pins.pin(name)

    def wdt_start(self, ms):
        self.wdt_ms = ms

    def wdt_feed(self):
        self.wdt_feeds += 1

    def deep_sleep(self, ms):
        self.slept_ms += ms  # the unix port cannot sleep the CPU; recorded for tests

    def _emit(self, obj):
        if self.channel is not None:
            obj["dev"] = self.index
            self.channel.emit(obj)
