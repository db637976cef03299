# AT command engine: one command at a time on a modem UART, URCs dispatched, garbage counted.
#
# One reader task (run()) turns the byte stream into lines and hands each line
# to whoever owns it: the pending command (echo, information lines, its final
# result code), the URC callback (a registered prefix), or the garbage
# counter. Three byte-level modes besides lines: the "> " data prompt (no line
# terminator, V.250 / 3GPP TS 27.005 §3.5.1), and raw payloads announced by a
# header whose length field says how many bytes follow (SIM7080G +CARECV:
# inline after the comma; SIM7600 +CIPRXGET: and BG95 +QIRD: after CRLF),
# copied straight into the caller's buffer so CR/LF or "OK" inside data never
# end a line.
#
# Never desynchronised by URCs: a URC is recognised by its prefix wherever it
# falls (between echo and answer, between information lines), and a line the
# pending command asked for (its expect prefix) is the command's even when the
# same prefix is a URC (+CPIN: at boot). After a timeout the next command first
# resynchronises: "AT" answered by OK, then a quiet gap with no stray result
# code, so a late answer to the old command is never taken for the new one's.
#
# RAM budget: ~0.9 KB per engine: 64-byte read chunk, LINE_MAX line buffer,
# 48-byte command copy (echo check), at most INFO_MAX information lines of
# the pending command (small bytes objects), one Lock, one Event. Bytecode:
# 4.7 KB as .mpy, ~9 KB of heap once imported (32-bit wasm port; 11 KB on the
# 64-bit unix port); none when frozen into the firmware image.

import asyncio
from time import ticks_diff, ticks_ms

try:
    from micropython import const
except ImportError:  # CPython (host tools import the constants)

    def const(x):
        return x


# Results of cmd() (public: the driver and the tests compare against them).
OK = const(0)
ERROR = const(1)
CME = const(2)  # +CME ERROR: <err> (3GPP TS 27.007 §9.2), code in .err
CMS = const(3)  # +CMS ERROR: <err> (3GPP TS 27.005 §3.2.5), code in .err
TIMEOUT = const(4)
RESET = const(5)  # the modem rebooted (a reset URC) while the command was pending
NAMES = ("OK", "ERROR", "CME", "CMS", "TIMEOUT", "RESET")

# Tunables.
LINE_MAX = const(200)  # longest line kept (+CGNSINF is ~110 chars); longer is garbage
INFO_MAX = const(6)  # information lines kept per command; extra ones are counted
_CHUNK = const(64)  # UART read size: one FIFO's worth at 115200 baud is ~5 ms
_CMD_MAX = const(48)  # command bytes kept for the echo check
_SYNC_TRIES = const(3)  # "AT" probes before a resynchronisation gives up
_SYNC_MS = const(500)  # each probe's timeout
_QUIET_MS = const(60)  # a late result code would arrive within this after our OK
_WRITE_POLL_MS = const(2)
_WRITE_TIMEOUT_MS = const(2000)
_ESC = b"\x1b"  # 0x1B: cancels a pending data prompt (27.005 §3.5.1, SIMCom/Quectel)
_CR = const(13)  # "\r": S3, the command line terminator (V.250 §6.2.1)
_LF = const(10)
_GT = const(62)  # ">": the data prompt
_SP = const(32)
_COMMA = const(44)

_R_OK = b"OK"
_R_ERROR = b"ERROR"
_R_CME = b"+CME ERROR:"
_R_CMS = b"+CMS ERROR:"


def num(line, start=0):
    """First decimal integer in line[start:] (sign allowed), or None."""
    n = len(line)
    i = start
    while i < n and not (48 <= line[i] <= 57 or line[i] == 45):  # digit or '-'
        i += 1
    neg = False
    if i < n and line[i] == 45:
        neg = True
        i += 1
    v = -1
    while i < n and 48 <= line[i] <= 57:
        v = (0 if v < 0 else v * 10) + line[i] - 48
        i += 1
    if v < 0:
        return None
    return -v if neg else v


def field(line, k):
    """Field k (0-based) of '+NAME: a,b,"c"' as bytes (quotes stripped), or None."""
    i = line.find(b":")
    i = 0 if i < 0 else i + 1
    n = len(line)
    while k:
        j = line.find(b",", i)
        if j < 0:
            return None
        i = j + 1
        k -= 1
    j = line.find(b",", i)
    if j < 0:
        j = n
    v = line[i:j].strip()
    if len(v) >= 2 and v[0] == 34 and v[-1] == 34:  # 34: '"'
        v = v[1:-1]
    return v


def field_int(line, k):
    """Field k as an int, or None (empty or not a number)."""
    v = field(line, k)
    if not v:
        return None
    return num(v)


def put_int(buf, i, v):
    """Write v (>= 0) in decimal at buf[i]; return the next index (no allocation)."""
    if v == 0:
        buf[i] = 48
        return i + 1
    d = 1
    while d * 10 <= v:
        d *= 10
    while d:
        buf[i] = 48 + (v // d) % 10
        i += 1
        d //= 10
    return i


class AT:
    """AT command engine on one UART-like stream (readinto/write, pollable)."""

    def __init__(self, port, urcs=(), on_urc=None, log=None):
        self.port = port
        self.urcs = tuple(urcs)  # prefixes (bytes) that mark unsolicited result codes
        self.on_urc = on_urc  # callable(line bytes); must not raise (it is guarded anyway)
        self.log = log
        self.lock = asyncio.Lock()
        self._done = asyncio.Event()
        self._chunk = bytearray(_CHUNK)
        self._lb = bytearray(LINE_MAX)
        self._lbv = memoryview(self._lb)
        self._ln = 0
        self._long = False
        self._bad = False
        self._cb = bytearray(_CMD_MAX)
        self._cmd_n = 0
        # Pending command state.
        self._pending = False
        self._status = OK
        self._expect = None
        self._final = None
        self._final_err = None
        self._want_prompt = False
        self._prompted = False
        self._eat_sp = False
        self.info = []  # information lines of the last command (bytes)
        self.err = 0  # CME/CMS code of the last command
        # Raw payload reading.
        self._rx_pfx = None
        self._rx_field = 0
        self._rx_inline = False
        self._rx_buf = None
        self.rx_n = 0  # payload bytes copied for the last command
        self._raw_left = 0
        self._skip_lf = False
        self._resync = False
        # Counters (health reports and tests).
        self.commands = 0
        self.timeouts = 0
        self.urc_count = 0
        self.echoes = 0
        self.garbage = 0  # lines nobody asked for, overlong lines, non-text lines
        self.stray = 0  # result codes with no command pending (late answers)
        self.unexpected = 0  # lines a command did not ask for (counted, ignored)
        self.overflow = 0  # payload bytes beyond the caller's buffer (dropped)
        self.resyncs = 0
        self.rx_bytes = 0

    # ------------------------------------------------------------ reader ----

    async def run(self):
        """Read the UART forever; never raises (a broken port is retried)."""
        sr = asyncio.StreamReader(self.port)
        mv = memoryview(self._chunk)
        while True:
            try:
                n = await sr.readinto(mv)
            except (OSError, ValueError) as e:
                self._say("at: read error %r" % e)
                n = 0
            if n is None:
                continue
            if not n:
                await asyncio.sleep_ms(200)  # a dead line: nothing to read
                continue
            self.rx_bytes += n
            try:
                self.feed(mv, n)
            except Exception as e:  # noqa: BLE001 - the reader must never die
                self.garbage += 1
                self._reset_parser()
                self._say("at: parser error %r" % e)

    def feed(self, buf, n):
        """Consume buf[:n] (called by run(); tests call it directly)."""
        i = 0
        lb = self._lb
        while i < n:
            if self._raw_left:
                if self._skip_lf:
                    self._skip_lf = False
                    if buf[i] == _LF:
                        i += 1
                        continue
                k = self._raw_left
                if k > n - i:
                    k = n - i
                self._raw(buf, i, k)
                i += k
                continue
            b = buf[i]
            i += 1
            if self._eat_sp:
                self._eat_sp = False
                if b == _SP:
                    continue
            if b == _CR or b == _LF:
                if self._ln or self._long:
                    self._line_end(b)
                continue
            if b == _GT and self._ln == 0 and self._want_prompt:
                self._want_prompt = False
                self._prompted = True
                self._eat_sp = True
                self._done.set()
                continue
            ln = self._ln
            if ln < LINE_MAX:
                lb[ln] = b
                self._ln = ln + 1
            else:
                self._long = True
            if b < _SP or b > 126:
                self._bad = True
            elif b == _COMMA and self._rx_inline and self._rx_pfx is not None:
                self._inline_header()

    def _raw(self, buf, i, k):
        dst = self._rx_buf
        room = (len(dst) - self.rx_n) if dst is not None else 0
        c = k if k <= room else room
        if c:
            dst[self.rx_n : self.rx_n + c] = buf[i : i + c]
            self.rx_n += c
        if k > c:
            self.overflow += k - c
        self._raw_left -= k

    def _header_len(self, line):
        """The payload length announced by a receive header line (None if malformed)."""
        v = field(line, self._rx_field)
        if v is None:
            return None
        return num(v)

    def _inline_header(self):
        # "+CARECV: 5,<5 bytes>": the payload starts right after the comma that ends
        # the length field, on the same line.
        pfx = self._rx_pfx
        ln = self._ln
        if not self._pending or ln < len(pfx) or self._lb[: len(pfx)] != pfx:
            return
        line = bytes(self._lbv[:ln])
        if line.count(b",") != self._rx_field + 1:
            return
        k = self._header_len(line)
        if k is None:
            return
        self._ln = 0
        self._bad = False
        self.info_add(line[:-1])
        self._raw_left = k
        if not k:
            self._skip_lf = False

    def _line_end(self, term):
        n = self._ln
        self._ln = 0
        if self._long or self._bad:
            self._long = False
            self._bad = False
            self.garbage += 1
            return
        line = bytes(self._lbv[:n])
        pfx = self._rx_pfx
        if pfx is not None and not self._rx_inline and self._pending and line.startswith(pfx):
            k = self._header_len(line)
            if k:
                self.info_add(line)
                self._raw_left = k
                self._skip_lf = term == _CR  # the payload starts after this line's CRLF
                return
        self._line(line)

    def _line(self, line):
        if self._pending:
            c = self._cmd_n
            if c and len(line) == c and line == self._cb[:c]:
                self.echoes += 1  # ATE1 left on: our own command coming back
                return
            if line == _R_OK or (self._final is not None and line == self._final):
                self._finish(OK)
                return
            if line == _R_ERROR or (self._final_err is not None and line == self._final_err):
                self._finish(ERROR)
                return
            if line.startswith(_R_CME):
                self.err = num(line, 11) or 0
                self._finish(CME)
                return
            if line.startswith(_R_CMS):
                self.err = num(line, 11) or 0
                self._finish(CMS)
                return
            exp = self._expect
            if exp is not None and line.startswith(exp):
                self.info_add(line)
                return
            if self._is_urc(line):
                self._urc(line)
                return
            if exp is None:
                self.info_add(line)
                return
            self.unexpected += 1
            return
        if self._is_urc(line):
            self._urc(line)
        elif (
            line == _R_OK
            or line == _R_ERROR
            or line.startswith(_R_CME)
            or line.startswith(_R_CMS)
            or line == b"SEND OK"
        ):
            self.stray += 1
        else:
            self.garbage += 1

    def info_add(self, line):
        if len(self.info) < INFO_MAX:
            self.info.append(line)
        else:
            self.unexpected += 1

    def _is_urc(self, line):
        for p in self.urcs:
            if line.startswith(p):
                return True
        return False

    def _urc(self, line):
        self.urc_count += 1
        cb = self.on_urc
        if cb is not None:
            try:
                cb(line)
            except Exception as e:  # noqa: BLE001 - a driver bug must not stop the reader
                self.garbage += 1
                self._say("at: urc handler failed %r" % e)

    def _finish(self, status):
        self._status = status
        self._pending = False
        self._want_prompt = False
        self._rx_pfx = None
        self._done.set()

    def abort(self, status=RESET):
        """End the pending command now (the driver saw the modem reboot)."""
        self._reset_parser()
        if self._pending:
            self._finish(status)

    def _reset_parser(self):
        self._ln = 0
        self._long = False
        self._bad = False
        self._raw_left = 0
        self._skip_lf = False
        self._eat_sp = False

    def _say(self, msg):
        if self.log is not None:
            try:
                self.log(msg)
            except Exception:  # noqa: BLE001
                pass

    # ------------------------------------------------------------ writer ----

    async def _write(self, data):
        mv = memoryview(data)
        n = len(mv)
        off = 0
        t0 = ticks_ms()
        while off < n:
            try:
                k = self.port.write(mv[off:] if off else mv)
            except OSError:
                k = None
            if k:
                off += k
                continue
            if ticks_diff(ticks_ms(), t0) > _WRITE_TIMEOUT_MS:
                raise OSError(110)  # ETIMEDOUT: the UART does not drain
            await asyncio.sleep_ms(_WRITE_POLL_MS)

    async def cmd(
        self,
        text,
        timeout_ms=1000,
        expect=None,
        data=None,
        final=None,
        final_err=None,
        rx=None,
    ):
        """Send one command line; return OK/ERROR/CME/CMS/TIMEOUT/RESET (lines in .info).

        expect: prefix of the information lines wanted (others are counted, or URCs).
        data: bytes written after the "> " prompt (SMS body with Ctrl-Z, socket payload).
        final/final_err: extra final result lines (b"SEND OK" / b"SEND FAIL").
        rx: (header prefix, length field index, inline, buffer) for a payload read;
            the byte count lands in .rx_n.
        """
        async with self.lock:
            if self._resync:
                if text == b"AT":  # a probe is a resynchronisation attempt itself
                    return OK if await self._sync(1, timeout_ms) else TIMEOUT
                if not await self._sync(_SYNC_TRIES, _SYNC_MS):
                    return TIMEOUT
            return await self._cmd(text, timeout_ms, expect, data, final, final_err, rx)

    async def _sync(self, tries, timeout_ms):
        for _ in range(tries):
            self.resyncs += 1
            st = await self._cmd(b"AT", timeout_ms, None, None, None, None, None)
            if st != OK:
                continue
            s0 = self.stray
            await asyncio.sleep_ms(_QUIET_MS)
            if self.stray == s0:
                self._resync = False
                return True
        return False

    async def _cmd(self, text, timeout_ms, expect, data, final, final_err, rx):
        if isinstance(text, str):
            text = text.encode()
        n = len(text)
        c = n if n <= _CMD_MAX else 0  # longer commands skip the echo check
        self._cb[:c] = text[:c]
        self._cmd_n = c
        self.info = []
        self.err = 0
        self.rx_n = 0
        self._expect = expect
        self._final = final
        self._final_err = final_err
        if rx is not None:
            self._rx_pfx, self._rx_field, self._rx_inline, self._rx_buf = rx
        else:
            self._rx_pfx = None
            self._rx_buf = None
        self._status = TIMEOUT
        self._prompted = False
        self._want_prompt = data is not None
        self._done.clear()
        self._pending = True
        self.commands += 1
        t0 = ticks_ms()
        try:
            await self._write(text)
            await self._write(b"\r")
            if data is not None:
                if not await self._wait(t0, timeout_ms):
                    await self._write(_ESC)  # leave the prompt, nothing half-sent
                    return self._timed_out()
                if not self._prompted:
                    return self._status  # ERROR instead of a prompt
                self._done.clear()
                await self._write(data)
            if not await self._wait(t0, timeout_ms):
                return self._timed_out()
            return self._status
        except OSError:
            return self._timed_out()
        finally:
            self._pending = False
            self._want_prompt = False
            self._rx_pfx = None
            self._rx_buf = None

    async def _wait(self, t0, timeout_ms):
        left = timeout_ms - ticks_diff(ticks_ms(), t0)
        if left <= 0:
            return self._done.is_set()
        try:
            await asyncio.wait_for_ms(self._done.wait(), left)
        except asyncio.TimeoutError:
            return False
        return True

    def _timed_out(self):
        self.timeouts += 1
        self._resync = True
        self._reset_parser()
        return TIMEOUT

    def stats(self):
        """Counters as a dict (modem-check, tests)."""
        return {
            "commands": self.commands,
            "timeouts": self.timeouts,
            "urcs": self.urc_count,
            "echoes": self.echoes,
            "garbage": self.garbage,
            "stray": self.stray,
            "unexpected": self.unexpected,
            "overflow": self.overflow,
            "resyncs": self.resyncs,
        }
