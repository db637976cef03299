# Fake `machine` for exercising hal/esp32.py under the unix port: records every call.
CALLS = []
PWRON_RESET = 1
HARD_RESET = 2
WDT_RESET = 3
DEEPSLEEP_RESET = 4
SOFT_RESET = 5
DEEPSLEEP = 4
CAUSE = [3]


def reset_cause():
    return CAUSE[0]


def deepsleep(ms):
    CALLS.append(("deepsleep", ms))


class Pin:
    IN = 1
    OUT = 3
    PULL_UP = 2
    PULL_DOWN = 1
    IRQ_FALLING = 2
    IRQ_RISING = 1
    WAKE_LOW = 4
    WAKE_HIGH = 5
    ALL = []

    def __init__(self, n, mode=-1, pull=None, value=None):
        self.n = n
        self.mode = mode
        self.pull = pull
        self.v = value if value is not None else 1
        self.handler = None
        Pin.ALL.append(self)

    def value(self, v=None):
        if v is None:
            return self.v
        self.v = v
        CALLS.append(("pin", self.n, v))

    def irq(self, handler=None, trigger=3, wake=None):
        self.handler = handler
        CALLS.append(("irq", self.n, trigger, wake))


class ADC:
    ATTN_11DB = 3

    def __init__(self, pin):
        self.uv = 1900000

    def atten(self, a):
        CALLS.append(("atten", a))

    def read_uv(self):
        return self.uv


class PWM:
    def __init__(self, pin, freq=0, duty_u16=0):
        self.pin = pin

    def freq(self, f):
        CALLS.append(("freq", f))

    def duty_u16(self, d):
        CALLS.append(("duty", d))


class WDT:
    def __init__(self, timeout=0):
        CALLS.append(("wdt", timeout))

    def feed(self):
        CALLS.append(("feed",))


class Timer:
    PERIODIC = 1

    def __init__(self, n):
        pass

    def init(self, period=0, mode=0, callback=None):
        CALLS.append(("timer", period))
        callback(self)


import io  # noqa: E402


class UART(io.IOBase):
    """A silent modem UART: records the configuration and what the firmware writes."""

    ALL = []

    def __init__(self, n, baudrate=115200, tx=None, rx=None, rxbuf=256, timeout=0):
        self.cfg = (n, baudrate, tx, rx, rxbuf, timeout)
        self.written = bytearray()
        UART.ALL.append(self)
        CALLS.append(("uart", n, baudrate, tx, rx))

    def write(self, buf, n=-1):
        self.written += bytes(buf)
        return len(buf)

    def readinto(self, buf, n=-1):
        return None

    def ioctl(self, req, arg):
        if req == 3:  # MP_STREAM_POLL: writable, nothing to read
            return arg & 4
        return -1
