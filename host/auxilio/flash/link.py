"""Serial links to boards: open a port for esptool, pulse a reset, watch the boot console.

pyserial's RFC 2217 client re-sends every port setting, and waits at least
100 ms for the acknowledgements, each time its read timeout changes; esptool
changes the timeout twice per command, so over RFC 2217 each command costs
~0.2 s of pure waiting. The port opened here sends settings only when one the
remote port has (baud rate, framing, flow control) actually changes. Local
ttys are opened by esptool itself.
"""

from __future__ import annotations

import re
import time

import serial
import serial.rfc2217

from auxilio.errors import ConnectionFailed

# How long the EN line is held low for a reset (esptool HardReset uses 0.1 s).
RESET_HOLD_S = 0.1
# The MicroPython banner: "MicroPython v1.24.0 on 2024-10-25; Generic ESP32 module with ESP32".
BANNER_RE = re.compile(rb"MicroPython (\S+) on ")
# What a chip that cannot boot prints (ROM and bootloader), for a fast failure.
BOOT_FAILURE_RE = re.compile(rb"invalid header: 0x[0-9a-f]+|E \(\d+\) [\w_]+: [^\r\n]+")


class Rfc2217Port(serial.rfc2217.Serial):
    """pyserial's RFC 2217 client, sending port settings only when they change."""

    _sent: tuple | None = None

    def _reconfigure_port(self) -> None:
        if self._write_timeout is not None:
            raise NotImplementedError("write_timeout is currently not supported")  # as pyserial
        key = (
            self._baudrate,
            self._bytesize,
            self._parity,
            self._stopbits,
            self._rtscts,
            self._xonxoff,
        )
        if key == self._sent:
            return  # only the local read timeout changed: nothing to tell the server
        super()._reconfigure_port()
        self._sent = key


def open_port(url: str, baud: int = 115200, timeout: float = 1.0) -> serial.Serial:
    """An open port object for esptool (ESPLoader takes it as is); ConnectionFailed if not."""
    try:
        if url.startswith("rfc2217://"):
            port = Rfc2217Port(url, baudrate=baud, timeout=timeout)
        else:
            port = serial.serial_for_url(url, baudrate=baud, timeout=timeout, exclusive=True)
    except (serial.SerialException, OSError, ValueError) as exc:
        raise ConnectionFailed(_open_error(url, exc)) from None
    return port


def _open_error(url: str, exc: BaseException) -> str:
    text = str(exc)
    # An RFC 2217 server serves one client: a second one is hung up on at once.
    second = url.startswith("rfc2217://") and ("Broken pipe" in text or "reset by peer" in text)
    if second or any(
        s in text.lower() for s in ("busy", "resource temporarily unavailable", "lock")
    ):
        return f"port {url} is busy: another program (a serial monitor, another auxilio run) has it open"
    if "Errno 2" in text or "No such file" in text:
        return f"port {url} does not exist: the board was unplugged, or another port name"
    if "Permission denied" in text:
        return f"no permission for {url}: add yourself to the dialout group (then log in again)"
    if "Connection refused" in text or "timed out" in text.lower():
        return f"nothing answers at {url}: the virtual board or RFC 2217 server is not running"
    return f"cannot open {url}: {text}"


def pulse_reset(url: str) -> None:
    """An EN pulse through the auto-reset circuit (RTS asserted, DTR not): the board reboots."""
    port = open_port(url)
    try:
        port.dtr = False
        port.rts = True
        time.sleep(RESET_HOLD_S)
        port.rts = False
    finally:
        port.close()


def wait_banner(port: serial.Serial, timeout: float) -> tuple[str | None, bytes]:
    """Read the console until the MicroPython banner: (version, console), version None on failure."""
    deadline = time.monotonic() + timeout
    seen = b""
    port.timeout = 0.2
    while time.monotonic() < deadline:
        try:
            chunk = port.read(4096)
        except (serial.SerialException, OSError):
            break
        seen += chunk
        m = BANNER_RE.search(seen)
        if m:
            return m.group(1).decode(errors="replace"), seen
        if BOOT_FAILURE_RE.search(seen) and time.monotonic() > deadline - timeout + 2.0:
            break  # a boot loop repeats forever: two seconds of it is enough
    return None, seen


def boot_failure(console: bytes) -> str | None:
    """The boot error a console shows, as one line, if any."""
    m = BOOT_FAILURE_RE.search(console)
    return m.group(0).decode(errors="replace") if m else None
