# Host HAL wires to an emulated modem: its UART and its PWRKEY/RESET pins over loopback TCP.
#
# The unix port has no machine.UART. With AUXILIO_HAL_MODEM=127.0.0.1:PORT the
# host HAL connects to the modem emulator (auxilio.emulator.modem) twice per
# modem, each connection opened by one line naming what it is:
#   "uart <index>\n" then raw UART bytes both ways (exactly what the modem sees);
#   "pins <index>\n" then lines "<pin> <level>\n" from the board to the modem.
# If the emulator is not there the UART is a dead line: writes vanish, nothing
# is ever read (what a modem that does not answer looks like).
#
# RAM budget: two sockets per modem and a few ints.

import io
import socket


def _connect(addr, hello):
    host, port = addr.rsplit(":", 1)
    s = socket.socket()
    try:
        s.connect(socket.getaddrinfo(host, int(port))[0][-1])
        s.setsockopt(6, 1, 1)  # 6 = IPPROTO_TCP, 1 = TCP_NODELAY (names missing on unix)
        s.write(hello)
    except (OSError, ValueError):
        s.close()
        return None
    return s


class DeadLine(io.IOBase):
    """A UART with nobody on the other end."""

    def readinto(self, buf, n=-1):
        return None

    def write(self, buf, n=-1):
        return len(buf)

    def ioctl(self, req, arg):
        if req == 3:  # MP_STREAM_POLL: writable, never readable
            return arg & 4
        return -1


def uart(addr, index):
    """The modem UART as a non-blocking stream (a socket), or a DeadLine."""
    s = _connect(addr, b"uart %d\n" % index)
    if s is None:
        return DeadLine()
    s.setblocking(False)
    return s


class Pins:
    """Board -> modem control lines (levels as the MCU drives them)."""

    def __init__(self, addr, index):
        self.sock = _connect(addr, b"pins %d\n" % index)

    def pin(self, name):
        return Pin(self, name)

    def send(self, name, level):
        s = self.sock
        if s is None:
            return
        try:
            s.write(b"%s %d\n" % (name.encode(), level))
        except OSError:
            self.sock = None


class Pin:
    """machine.Pin's value() for one control line of the emulated modem."""

    def __init__(self, pins, name):
        self.pins = pins
        self.name = name
        self.level = 0

    def value(self, v=None):
        if v is None:
            return self.level
        self.level = 1 if v else 0
        self.pins.send(self.name, self.level)
