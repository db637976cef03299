# ESP32 HAL: button IRQ, haptic/LED ring/buzzer patterns, battery ADC, WDT, Wi-Fi, deep sleep.
#
# Everything comes from board.json (pins, polarity, ADC calibration); the code
# never branches on a board name (issue 3 §3). The button IRQ only records a
# timestamp (Device.press_edge -> Gesture.edge: no allocation).
#
# RAM budget: Pin/ADC/PWM objects (~0.2 KB), one NeoPixel buffer (3 bytes per
# LED), and at most one pattern task per output at a time.

import asyncio

import machine

# Patterns: alternating on/off durations in ms (on first).
_HAPTIC = {
    "pulse": (150,),
    "double": (150, 150, 150),
    "long": (800,),
    "error": (80, 80, 80, 80, 80),
    "sms": (500, 200, 100, 200, 100),  # sent by SMS, waiting for the data ACK (issue 12)
}
_BUZZER = {
    "chirp": (2400, (80,)),
    "beep2": (2000, (120, 120, 120)),
    "tone": (1600, (900,)),
    "error": (500, (200, 100, 200, 100, 200)),
    "sms": (1800, (400, 150, 100, 150, 100)),
}
# LED ring: (r, g, b), on/off durations; "spin" walks one pixel around the ring.
_LED = {
    "blink": ((40, 25, 0), (200,)),
    "solid": ((0, 40, 0), (2000,)),
    "spin": ((0, 0, 40), ()),
    "error": ((50, 0, 0), (150, 150, 150, 150, 150)),
    "off": ((0, 0, 0), (1,)),
    "sms": ((0, 20, 40), (500, 200, 100, 200, 100)),
}
_SPIN_STEP_MS = 60
_SPIN_ROUNDS = 3
_ERROR_BLINK_MS = 500  # bad-config blink period (machine.Timer, survives main() returning)


def _pull(spec):
    p = spec.get("pull")
    if p == "up":
        return machine.Pin.PULL_UP
    if p == "down":
        return machine.Pin.PULL_DOWN
    return None


def _in(spec):
    if not spec:
        return None, False
    return machine.Pin(spec["pin"], machine.Pin.IN, _pull(spec)), bool(spec.get("active_low"))


class Esp32Hal:
    """Real hardware, configured from board data."""

    platform = "esp32"

    def __init__(self, board):
        pins = board.get("pins") or {}
        self._btn, self._btn_low = _in(pins.get("button"))
        self._tamper, self._tamper_low = _in(pins.get("tamper"))
        self._mains, self._mains_low = _in(pins.get("mains_sense"))
        h = pins.get("haptic")
        self._motor = machine.Pin(h["pin"], machine.Pin.OUT, value=0) if h else None
        led = pins.get("led")
        self._led = machine.Pin(led["pin"], machine.Pin.OUT, value=0) if led else None
        ring = pins.get("led_ring")
        self._ring = None
        if ring:
            import neopixel

            self._ring = neopixel.NeoPixel(machine.Pin(ring["pin"]), ring.get("count", 12))
        bz = pins.get("buzzer")
        self._buzzer = machine.PWM(machine.Pin(bz["pin"]), freq=2000, duty_u16=0) if bz else None
        bat = board.get("battery")
        self._bat = dict(bat) if bat else None  # a small copy; the board dict is not kept
        self._adc = None
        if bat:
            self._adc = machine.ADC(machine.Pin(bat["adc_pin"]))
            try:
                self._adc.atten(machine.ADC.ATTN_11DB)  # full 0..~3.1 V input range
            except AttributeError:
                pass
        self._wdt = None
        self._timer = None
        self._tasks = {}
        self.transport = None

    # ------------------------------------------------------------ inputs ----

    def make_flag(self):
        return asyncio.ThreadSafeFlag()  # set from the button IRQ

    def attach_button(self, device):
        pin = self._btn
        if pin is None:
            return
        low = self._btn_low

        def irq(p):
            # Timestamp only; debouncing is done in software by the gesture task.
            device.press_edge(1 if (p.value() == 0) == low else 0)

        pin.irq(irq, machine.Pin.IRQ_FALLING | machine.Pin.IRQ_RISING)

    def battery_mv(self):
        """The battery voltage (ADC through the board's divider) in mV, None without one."""
        if self._adc is None:
            return None
        try:
            return int(self._adc.read_uv() // 1000 * self._bat.get("divider", 2.0))
        except (AttributeError, OSError):
            return None

    def battery_pct(self):
        mv = self.battery_mv()
        if mv is None:
            return None
        b = self._bat
        lo = b.get("empty_mv", 3300)
        hi = b.get("full_mv", 4150)
        pct = int((mv - lo) * 100 // (hi - lo))
        return 0 if pct < 0 else 100 if pct > 100 else pct

    def charging(self):
        return False  # no charge-status line in the current board data

    def _level(self, pin, low):
        if pin is None:
            return None
        return (pin.value() == 0) == low

    def mains(self):
        return self._level(self._mains, self._mains_low)

    def tamper_open(self):
        return self._level(self._tamper, self._tamper_low)

    def location(self):
        loc = getattr(self.transport, "location", None)  # the modem's GNSS, if any
        return loc() if loc is not None else None

    # ----------------------------------------------------------- outputs ----

    def _play(self, key, coro):
        t = self._tasks.get(key)
        if t is not None:
            t.cancel()
        self._tasks[key] = asyncio.create_task(coro)

    async def _pin_seq(self, pin, seq):
        try:
            on = True
            for ms in seq:
                pin.value(1 if on else 0)
                await asyncio.sleep_ms(ms)
                on = not on
        finally:
            pin.value(0)

    def haptic(self, pattern):
        seq = _HAPTIC.get(pattern)
        if self._motor is not None and seq:
            self._play("haptic", self._pin_seq(self._motor, seq))

    def led(self, pattern):
        spec = _LED.get(pattern)
        if spec is None:
            return
        if self._ring is not None:
            self._play("led", self._ring_seq(spec[0], spec[1], pattern == "spin"))
        elif self._led is not None:
            self._play("led", self._pin_seq(self._led, spec[1] or (600,)))

    async def _ring_seq(self, rgb, seq, spin):
        np = self._ring
        n = np.n
        try:
            if spin:
                for i in range(n * _SPIN_ROUNDS):
                    np.fill((0, 0, 0))
                    np[i % n] = rgb
                    np.write()
                    await asyncio.sleep_ms(_SPIN_STEP_MS)
                return
            on = True
            for ms in seq:
                np.fill(rgb if on else (0, 0, 0))
                np.write()
                await asyncio.sleep_ms(ms)
                on = not on
        finally:
            np.fill((0, 0, 0))
            np.write()

    def buzzer(self, pattern):
        spec = _BUZZER.get(pattern)
        if self._buzzer is not None and spec:
            self._play("buzzer", self._tone_seq(spec[0], spec[1]))

    async def _tone_seq(self, freq, seq):
        pwm = self._buzzer
        try:
            pwm.freq(freq)
            on = True
            for ms in seq:
                pwm.duty_u16(32768 if on else 0)
                await asyncio.sleep_ms(ms)
                on = not on
        finally:
            pwm.duty_u16(0)

    def error_blink(self):
        """Blink forever from a hardware timer, so the REPL stays usable (issue 3 §10)."""
        pin = self._led or self._motor
        if pin is None and self._ring is None:
            return
        ring = self._ring

        def tick(t):
            if ring is not None:
                ring.fill((0, 0, 0) if ring[0][0] else (50, 0, 0))
                ring.write()
            else:
                pin.value(0 if pin.value() else 1)

        self._timer = machine.Timer(0)
        self._timer.init(period=_ERROR_BLINK_MS, mode=machine.Timer.PERIODIC, callback=tick)

    # ---------------------------------------------------- state and logs ----

    def state(self, name, counter):
        pass  # no controller on real hardware; the outputs above are the feedback

    def log(self, msg):
        print(msg)

    def hello(self, device):
        pass

    # ------------------------------------------------------------ system ----

    def reset_cause(self):
        c = machine.reset_cause()
        for attr, name in (
            ("PWRON_RESET", "power_on"),
            ("HARD_RESET", "hard_reset"),
            ("WDT_RESET", "watchdog"),
            ("DEEPSLEEP_RESET", "deep_sleep"),
            ("SOFT_RESET", "soft_reset"),
            ("BROWNOUT_RESET", "brownout"),
        ):
            if getattr(machine, attr, -1) == c:
                return name
        return "unknown"

    def make_transport(self, cfg, log):
        if getattr(cfg, "modem", None) is None:
            return self.wifi_link(cfg, log)  # no modem: no transport manager in RAM
        import transport

        self.transport = transport.make(cfg, log, self)
        return self.transport

    def wifi_link(self, cfg, log):
        import network
        from wifi import WifiTransport

        return WifiTransport(network.WLAN(network.STA_IF), cfg.wifi_ssid, cfg.wifi_password, log)

    def modem_port(self, pins, baud):
        # timeout=0: reads never block; the AT engine polls the UART through asyncio.
        return machine.UART(
            pins["uart"], baudrate=baud, tx=pins["tx"], rx=pins["rx"], rxbuf=1024, timeout=0
        )

    def modem_pin(self, pins, name):
        n = pins.get(name)
        if n is None:
            return None
        # Released level first: PWRKEY/RESET are asserted by driving the transistor.
        return machine.Pin(n, machine.Pin.OUT, value=0 if pins.get("active_high", True) else 1)

    def wdt_start(self, ms):
        self._wdt = machine.WDT(timeout=ms)

    def wdt_feed(self):
        if self._wdt is not None:
            self._wdt.feed()

    def deep_sleep(self, ms):
        """Sleep with the panic button as a wake source; wakes as a fresh boot."""
        pin = self._btn
        if pin is not None:
            level = 0 if self._btn_low else 1
            try:
                import esp32

                esp32.wake_on_ext0(pin=pin, level=level)  # ESP32, S2, S3: RTC GPIO
            except (ImportError, AttributeError, ValueError, OSError):
                try:  # chips without ext0 (C3): GPIO wake through Pin.irq
                    trig = machine.Pin.WAKE_LOW if level == 0 else machine.Pin.WAKE_HIGH
                    pin.irq(trigger=trig, wake=machine.DEEPSLEEP)
                except (AttributeError, ValueError, OSError):
                    print("deep sleep: no button wake on this chip; staying awake")
                    return
        machine.deepsleep(ms)
