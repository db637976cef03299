# Factory self-test steps, run one at a time over the REPL by `auxilio factory-test` (issue 10 §7).
#
# Each step builds the HAL from board.json, prints "AUXREADY" once it is armed
# (the host then asks the technician to watch, listen or press), and prints one
# "AUXTEST <json>" line with what it measured. The host judges the values
# against the board file's factory-test ranges; nothing is judged here. The
# app never imports this module, so it costs no heap in normal operation.
#
# RAM budget: transient, for one step: the parsed board.json (2-12 KB), one
# HAL, and on the host the control channel's queue.

import asyncio
import json
from time import sleep_ms, ticks_diff, ticks_ms

import hal
from config import read_json

try:
    from micropython import const
except ImportError:  # CPython (host-side tooling may import this module)

    def const(x):
        return x


_BUTTON_WAIT_MS = const(15000)  # how long the technician has to press
_PLAY_MS = const(1500)  # outputs play their pattern (~1 s) before the step ends
_CHANNEL_WAIT_MS = const(3000)  # host: the controller accepts within this
_MODEM_REPLY_MS = const(1500)  # an AT command's answer arrives within this
_MODEM_BAUD = const(115200)  # SIMCom modems auto-baud; 115200 is their default
# A clearly visible / felt / heard pattern per output (each lasts about a second).
_PATTERN = {"haptic": "long", "led": "solid", "buzzer": "tone"}


class _Button:
    """Takes the HAL's button edges (as a Device would) and keeps the first press."""

    def __init__(self):
        self.down = None
        self.up = None

    def press_edge(self, v):
        t = ticks_ms()
        if v and self.down is None:
            self.down = t
        elif not v and self.down is not None and self.up is None:
            self.up = t


async def _session(step, arg):
    board = read_json("board.json", "board.json")
    channel = None
    if not hal.is_esp32():
        from hal.control import channel_from_env

        channel = channel_from_env()
    h = hal.make(board, 0, channel)
    task = None
    if channel is not None:
        task = asyncio.create_task(channel.run())
        t0 = ticks_ms()
        while not channel.connected and ticks_diff(ticks_ms(), t0) < _CHANNEL_WAIT_MS:
            await asyncio.sleep_ms(20)
    try:
        res = await _STEPS[step](h, board, arg)
    finally:
        if task is not None:
            await asyncio.sleep_ms(100)  # let the channel send the last events
            task.cancel()
    res["step"] = step
    res["board"] = board.get("name")
    return res


async def _output(h, board, kind):
    if not (board.get("feedback") or {}).get(kind):
        return {"kind": kind, "present": False}
    print("AUXREADY")
    getattr(h, kind)(_PATTERN[kind])
    await asyncio.sleep_ms(_PLAY_MS)
    return {"kind": kind, "present": True, "pattern": _PATTERN[kind]}


async def _button(h, board, wait_ms):
    b = _Button()
    h.attach_button(b)
    print("AUXREADY")
    wait_ms = wait_ms or _BUTTON_WAIT_MS
    t0 = ticks_ms()
    while b.up is None and ticks_diff(ticks_ms(), t0) < wait_ms:
        await asyncio.sleep_ms(10)
    if b.down is None:
        return {"pressed": False}
    if b.up is None:
        return {"pressed": True, "released": False}
    return {"pressed": True, "released": True, "ms": ticks_diff(b.up, b.down)}


async def _sensors(h, board, arg):
    return {
        "battery_mv": h.battery_mv(),
        "battery_pct": h.battery_pct(),
        "mains": h.mains(),
        "tamper_open": h.tamper_open(),
    }


async def _modem(h, board, arg):
    return modem_probe(board)


class _UartLink:
    """machine.UART as a byte pipe."""

    def __init__(self, pins):
        import machine

        self.u = machine.UART(
            pins.get("uart", 1),
            baudrate=_MODEM_BAUD,
            tx=pins.get("tx"),
            rx=pins.get("rx"),
            timeout=0,
        )

    def write(self, data):
        self.u.write(data)

    def read(self):
        return self.u.read() or b""

    def close(self):
        self.u.deinit()


class _SocketLink:
    """The host's stand-in for the modem UART: a TCP stream (AUXILIO_MODEM_UART=host:port)."""

    def __init__(self, addr):
        import socket

        host, port = addr.rsplit(":", 1)
        self.s = socket.socket()
        self.s.connect(socket.getaddrinfo(host, int(port))[0][-1])
        self.s.setblocking(False)

    def write(self, data):
        self.s.send(data)

    def read(self):
        try:
            return self.s.recv(256) or b""
        except OSError:
            return b""

    def close(self):
        self.s.close()


def _modem_link(modem):
    if hal.is_esp32():
        return _UartLink(modem.get("pins") or {})
    import os

    addr = os.getenv("AUXILIO_MODEM_UART")
    return _SocketLink(addr) if addr else None


def _ask(link, cmd):
    """Send one AT command; the reply text up to OK/ERROR, or what came before the timeout."""
    link.write(cmd)
    buf = b""
    t0 = ticks_ms()
    while ticks_diff(ticks_ms(), t0) < _MODEM_REPLY_MS:
        buf += link.read()
        if b"OK\r\n" in buf or b"ERROR" in buf:
            break
        sleep_ms(10)
    return buf.decode("utf-8", "replace")


def modem_probe(board):
    """AT, then AT+CPIN? (SIM state) over the board's modem UART; never claims what it did not see."""
    modem = board.get("modem")
    if not modem:
        return {"present": False, "reason": "the board has no modem"}
    try:
        link = _modem_link(modem)
    except OSError as e:
        return {"present": True, "at": False, "reason": "modem UART unavailable: %r" % e}
    if link is None:
        return {"present": True, "at": False, "reason": "no modem UART on this platform"}
    try:
        at = _ask(link, b"AT\r\n")
        if "OK" not in at:
            why = (
                "no answer to AT"
                if not at.strip()
                else "unexpected answer to AT: " + at.strip()[:40]
            )
            return {"present": True, "at": False, "reason": why}
        cpin = _ask(link, b"AT+CPIN?\r\n")
        sim = None
        if "+CPIN:" in cpin:
            sim = cpin.split("+CPIN:", 1)[1].strip().split("\r")[0].strip()
        return {"present": True, "at": True, "sim": sim, "reply": cpin.strip()[:60]}
    finally:
        link.close()


_STEPS = {"output": _output, "button": _button, "sensors": _sensors, "modem": _modem}


def run(step, arg=None):
    """Run one step and print its AUXTEST line (what the host reads)."""
    print("AUXTEST " + json.dumps(asyncio.run(_session(step, arg))))
