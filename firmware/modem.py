# Cellular modem driver: power sequencing, SIM, registration, PDP, TCP sockets over AT, GNSS, SMS, PSM.
#
# Everything model-specific comes from the modem profile (modem.json on the
# device, the "at" section of boards/modems/<profile>.json): command strings,
# URC names, the receive header layout, datasheet timeouts and PWRKEY timing.
# The code knows three shapes of socket dialect only through that data (open
# result in the response or as a later URC; send confirmed by OK or "SEND
# OK"; payload after the header's comma or on the next line).
#
# The data bearer is the modem's own TCP stack: dial() returns a ModemSocket,
# a pollable stream (io.IOBase) that mqtt.Conn reads with asyncio.StreamReader
# and may wrap in TLS, so frames, sessions and TLS are the same as on Wi-Fi.
# (PPP through network.PPP is not used: the unix port has no network.PPP, so
# it could not be tested here; every profile offers AT sockets.)
#
# Failure handling: a failed bring-up records a fault code (reported in the
# next HEARTBEAT, transport.py), is retried with capped jittered backoff, and
# after FAIL_CYCLE consecutive failures the modem is power-cycled (RESET pin,
# else a long PWRKEY press). A PWRKEY pulse toggles power on these modules, so
# the driver always probes with "AT" before pulsing.
#
# RAM budget: ~3 KB per modem: the AT engine (~0.9 KB), one ModemSocket
# (rx 512 B + tx 256 B buffers), the parsed profile (~1.5 KB of short strings
# on a 32-bit port), a few ints. Bytecode: 14 KB as .mpy, ~22 KB of heap once
# imported (32-bit wasm port; 24 KB on the 64-bit unix port), none when frozen;
# imported only on boards whose board.json names a modem profile.

import asyncio
import io
import os
from time import ticks_add, ticks_diff, ticks_ms

from at import AT, CME, OK, RESET, TIMEOUT, field, field_int, put_int
from auxcodec import MODEM_FAULTS

try:
    from micropython import const
except ImportError:

    def const(x):
        return x


BEARER_LTE = const(2)  # auxcodec.BEARERS index (SPEC §9)

# Fault codes, HEARTBEAT status bits 4-6 (proposed for SPEC §8.3 by issue 12).
FAULT_NONE = const(0)
FAULT_SIM_MISSING = const(1)
FAULT_SIM_LOCKED = const(2)  # PIN wrong or missing, PUK needed
FAULT_DENIED = const(3)  # registration denied (CEREG stat 3)
FAULT_NO_SERVICE = const(4)  # searching / no signal until the attach timeout
FAULT_NOT_RESPONDING = const(5)  # no answer to AT even after power-on
FAULT_DATA_DOWN = const(6)  # registered (SMS works) but the PDP context fails
FAULT_OTHER = const(7)
# Their names, as HEARTBEATs carry the code (SPEC §8.3, §9): the codec's one table.
FAULTS = MODEM_FAULTS

# Driver states.
OFF = const(0)
STARTING = const(1)
SEARCHING = const(2)
REGISTERED = const(3)  # attached, SMS possible, no data context
READY = const(4)  # data context active: up()
SLEEP = const(5)  # PSM allowed: we stopped talking to it
STATES = ("off", "starting", "searching", "registered", "ready", "sleep")

# Tunables (config.json "tunables" overrides each name in lower case).
_RETRY_BASE_MS = const(2000)  # first retry after a failed bring-up; doubled, jittered
_RETRY_CAP_MS = const(60000)
_FAIL_CYCLE = const(3)  # consecutive failed bring-ups before a power cycle
_CHECK_MS = const(15000)  # registration/signal/PDP poll while awake
_PROBE_MS = const(300)  # one "AT" probe
_REG_POLL_MS = const(1000)
_DENIED_CONFIRM = const(3)  # stat 3 this many polls in a row = denied (not a transient)
_RX_PROBE_MS = const(5000)  # a socket read without a URC, in case one was lost or garbled
_GNSS_EVERY_S = const(900)  # fix refresh period while idle (0: never)
_GNSS_TIMEOUT_S = const(30)  # one fix attempt (hot start is ~2 s, cold ~30 s)
_PSM_ACTIVE_S = const(2)  # T3324 requested: reachable this long after the last data
_EDRX_CYCLE = "0101"  # 81.92 s eDRX cycle (3GPP TS 24.008 §10.5.5.32, Cat-M)
_UERE_M = const(5)  # accuracy ~ HDOP x 5 m (typical GNSS user range error)
_RX_SIZE = const(512)
_TX_SIZE = const(256)

_ENETUNREACH = const(101)
_ECONNRESET = const(104)
_ETIMEDOUT = const(110)
_ECONNREFUSED = const(111)

_CTRL_Z = b"\x1a"  # 0x1A: ends an SMS body in text mode (3GPP TS 27.005 §3.5.1)
_NOFIX = const(-2147483648)  # SPEC §8.1: 0x80000000 = no fix


def _b(s):
    return s.encode() if isinstance(s, str) else s


def _fmt(tmpl, **kw):
    """Fill '{name}' fields of a profile template (str in, bytes out)."""
    for k in kw:
        tmpl = tmpl.replace("{" + k + "}", str(kw[k]))
    return tmpl.encode()


def _bits8(v):
    s = ""
    for i in range(7, -1, -1):
        s += "1" if (v >> i) & 1 else "0"
    return s


def gprs_timer3(seconds):
    """T3412 extended as the 8-bit string AT+CPSMS wants (3GPP TS 24.008 §10.5.7.4a)."""
    # (unit code in bits 8-6, unit seconds), smallest unit first
    for code, unit in ((3, 2), (4, 30), (5, 60), (0, 600), (1, 3600), (2, 36000), (6, 1152000)):
        v = (seconds + unit - 1) // unit
        if v <= 31:
            return _bits8(code << 5 | v)
    return _bits8(6 << 5 | 31)


def gprs_timer2(seconds):
    """T3324 active time as 8 bits (3GPP TS 24.008 §10.5.7.3): 2 s, 1 min, 6 min units."""
    for code, unit in ((0, 2), (1, 60), (2, 360)):
        v = (seconds + unit - 1) // unit
        if v <= 31:
            return _bits8(code << 5 | v)
    return _bits8(2 << 5 | 31)


def deg_e7(s):
    """b"-99.1332" -> -991332000 without floats (single-precision on ESP32 loses metres)."""
    s = bytes(s).strip()
    if not s:
        return None
    neg = s[0] == 45  # '-'
    if neg or s[0] == 43:  # '+'
        s = s[1:]
    i = s.find(b".")
    whole = s if i < 0 else s[:i]
    frac = b"" if i < 0 else s[i + 1 :]
    if not whole.isdigit() or (frac and not frac.isdigit()):
        return None
    frac = (frac + b"0000000")[:7]
    v = int(whole) * 10000000 + int(frac)
    return -v if neg else v


def ddmm_e7(s, hemi):
    """NMEA ddmm.mmmm (+CGPSINFO) and N/S/E/W -> degrees x 1e7."""
    s = bytes(s).strip()
    i = s.find(b".")
    if i < 3:
        return None
    mins = deg_e7(s[i - 2 :])  # minutes x 1e7
    deg = s[: i - 2]
    if mins is None or not deg.isdigit():
        return None
    v = int(deg) * 10000000 + mins // 60
    return -v if hemi in (b"S", b"W") else v


def parse_fix(fmt, line):
    """(lat_e7, lon_e7, accuracy_m) from one GNSS query answer, or None (no fix)."""
    try:
        if fmt == "cgnsinf":  # +CGNSINF: run,fix,utc,lat,lon,alt,sog,cog,mode,,HDOP,...
            if field_int(line, 1) != 1:
                return None
            lat, lon, hdop = deg_e7(field(line, 3)), deg_e7(field(line, 4)), field(line, 10)
        elif fmt == "qgpsloc":  # +QGPSLOC: utc,lat,lon,HDOP,alt,fix,...
            lat, lon, hdop = deg_e7(field(line, 1)), deg_e7(field(line, 2)), field(line, 3)
        elif fmt == "cgpsinfo":  # +CGPSINFO: ddmm.mm,N,dddmm.mm,W,date,utc,alt,speed,course
            lat = ddmm_e7(field(line, 0), field(line, 1))
            lon = ddmm_e7(field(line, 2), field(line, 3))
            hdop = None
        else:
            return None
    except (ValueError, IndexError, TypeError):
        return None
    if lat is None or lon is None:
        return None
    if not (-900000000 <= lat <= 900000000 and -1800000000 <= lon <= 1800000000):
        return None
    acc = 0xFFFF
    if hdop:
        h = deg_e7(hdop)  # HDOP x 1e7
        if h is not None:
            acc = h * _UERE_M // 10000000
            acc = 1 if acc < 1 else 0xFFFE if acc > 0xFFFE else acc
    return lat, lon, acc


def _prefix(cmd):
    """The information-line prefix of a command: "AT+CEREG?" -> b"+CEREG:"."""
    c = _b(cmd)
    i = 2
    j = i
    while j < len(c) and c[j] not in b"?=":
        j += 1
    return c[i:j] + b":"


class ModemSocket(io.IOBase):
    """The modem's TCP socket as a non-blocking, pollable stream (what mqtt.Conn reads)."""

    def __init__(self, modem):
        self.modem = modem
        self.rx = bytearray(_RX_SIZE)
        self.rxh = 0
        self.rxt = 0
        self.tx = bytearray(_TX_SIZE)
        self.txn = 0
        self.open = False
        self.closed = False  # peer closed, link lost or close() called: EOF after rx drains
        self.close_req = False
        self.rx_pending = False
        self.sent = 0
        self.received = 0

    def readinto(self, buf, n=-1):
        # Only rxh moves here: the modem task may be filling rx[rxt:] right now.
        h, t = self.rxh, self.rxt
        if h == t:
            return 0 if self.closed else None  # None: EAGAIN
        k = len(buf) if n < 0 or n > len(buf) else n
        if k > t - h:
            k = t - h
        buf[:k] = memoryview(self.rx)[h : h + k]
        self.rxh = h + k
        return k

    def compact(self):
        """Make room at the end (the modem task calls this when no read is in flight)."""
        h, t = self.rxh, self.rxt
        if h == t:
            self.rxh = self.rxt = 0
        elif h:
            self.rx[: t - h] = self.rx[h:t]
            self.rxh = 0
            self.rxt = t - h

    def write(self, buf, n=-1):
        if self.closed:
            raise OSError(_ECONNRESET)
        k = len(buf) if n < 0 or n > len(buf) else n
        room = _TX_SIZE - self.txn
        if not room:
            return None
        if k > room:
            k = room
        self.tx[self.txn : self.txn + k] = memoryview(buf)[:k]
        self.txn += k
        self.modem.kick()
        return k

    def ioctl(self, req, arg):
        if req == 3:  # MP_STREAM_POLL
            r = 0
            if arg & 1 and (self.rxt > self.rxh or self.closed):  # POLLIN
                r |= 1
            if arg & 4 and (self.txn < _TX_SIZE or self.closed):  # POLLOUT
                r |= 4
            if self.closed and self.rxt == self.rxh:
                r |= 16  # POLLHUP
            return r
        if req == 4:  # MP_STREAM_CLOSE
            self.close()
            return 0
        return -1  # not a file descriptor, no other ioctls

    def close(self):
        if not self.close_req:
            self.close_req = True
            self.closed = True
            self.modem.kick()

    def setblocking(self, flag):
        pass  # always non-blocking

    def setsockopt(self, *args):
        pass  # TCP options live in the modem's stack


class Modem:
    """One cellular modem on a UART, driven from its profile; the LTE bearer."""

    bearer = BEARER_LTE

    def __init__(self, port, pwrkey, reset, prof, cfg, log, active_high=True):
        self.p = prof
        self.port = port
        self.pwrkey = pwrkey
        self.reset_pin = reset
        self._on = 1 if active_high else 0  # MCU level that asserts PWRKEY/RESET (transistor)
        self.log = log
        self.apn = cfg.apn or ""
        self.sim_pin = cfg.sim_pin
        self.roaming_ok = cfg.roaming
        self.low_power = cfg.low_power
        self.heartbeat_s = cfg.heartbeat_s
        t = cfg.lte_tunables
        self.retry_base = t.get("modem_retry_base_ms", _RETRY_BASE_MS)
        self.retry_cap = t.get("modem_retry_cap_ms", _RETRY_CAP_MS)
        self.fail_cycle = t.get("modem_fail_cycle", _FAIL_CYCLE)
        self.check_ms = t.get("modem_check_ms", _CHECK_MS)
        self.gnss_every_s = t.get("gnss_every_s", _GNSS_EVERY_S)
        self.gnss_timeout_s = t.get("gnss_timeout_s", _GNSS_TIMEOUT_S)
        self.psm_active_s = t.get("psm_active_s", _PSM_ACTIVE_S)
        self.attach_ms = t.get("modem_attach_ms", self._to("attach"))
        self.has_gnss = bool(prof.get("gnss_query"))
        self.psm = self.low_power == "psm" and bool(prof.get("psm_on"))
        for pin in (pwrkey, reset):
            if pin is not None:
                pin.value(1 - self._on)
        urcs = [_b(u) for u in list(prof.get("ready_urcs", ())) + list(prof.get("reset_urcs", ()))]
        for u in prof.get("pdp_lost_urcs", ()):
            urcs.append(_b(u))
        for k in ("pdp_on_urc", "tcp_rx_urc", "psm_urc"):
            if prof.get(k):
                urcs.append(_b(prof[k]))
        self._closed_urc = _fmt(prof["tcp_closed_urc"], cid=0)
        urcs.append(self._closed_urc)
        if prof.get("tcp_open_async"):
            urcs.append(_b(prof["tcp_open_result"]))
        # Generic URCs a modem may print unasked (boot, SIM, SMS storage, time zone).
        for u in (b"+CPIN:", b"SMS DONE", b"PB DONE", b"+CMTI:", b"+CGEV:", b"*PSUTTZ", b"DST:"):
            urcs.append(u)
        for u in (b"+CTZV:", b"+CTZE:", b"+QIND:", b"+CPSMSTATUS:", b"+CEREG:", b"+CREG:"):
            urcs.append(u)
        for u in (b"+CIPSEND:", b"+CIPCLOSE:", b"+CIPEVENT:", b"+QIURC:"):
            urcs.append(u)
        self._reset_urcs = tuple(_b(u) for u in prof.get("reset_urcs", ()))
        self._pdp_lost = tuple(_b(u) for u in prof.get("pdp_lost_urcs", ()))
        self.at = AT(port, urcs, self._on_urc, log)
        self._rx_urc = _b(prof["tcp_rx_urc"])
        self._open_res_pfx = _b(prof["tcp_open_result"])
        self._pdp_urc = _b(prof["pdp_on_urc"]) if prof.get("pdp_on_urc") else None
        rh = _b(prof["tcp_recv_header"])
        self._rx_spec = [rh, prof["tcp_recv_field"], bool(prof["tcp_recv_inline"]), None]
        self._rx_expect = rh
        self._recv_pfx, self._recv_sfx = self._split(prof["tcp_recv"])
        self._send_pfx, self._send_sfx = self._split(prof["tcp_send"])
        self._send_final = _b(prof["tcp_send_final"]) if prof.get("tcp_send_final") else None
        self._send_fail = _b(prof["tcp_send_fail"]) if prof.get("tcp_send_fail") else None
        self._hdr = bytearray(48)  # send/recv command lines built here (alert path)
        self.state = OFF
        self.fault = FAULT_NONE  # the current fault (FAULT_NONE when working)
        self.last_fault = FAULT_NONE  # latched until transport.fault() reports it
        self.registered = False
        self.roaming = False
        self.data_ok = False
        self.rssi_dbm = None
        self.sock = None
        self._ev = asyncio.Event()  # socket work / wake / sleep requests
        self._urc_ev = asyncio.Event()
        self._rebooted = False
        self._pdp_res = None
        self._open_res = None
        self._pin_tried = False
        self._idle = False  # transport says: PSM allowed, stop using the link
        self._fix = None  # (lat_e7, lon_e7, acc_m, ticks_ms)
        self._gnss_last = None
        self._lp_done = False
        # The modem may still hold socket 0 open: True at first, because the MCU may
        # have rebooted (watchdog, soft reset) while the modem kept its connection.
        self._cid_busy = True
        self._tasks = None
        self.fails = 0
        # Counters (modem-check, heartbeat faults, tests).
        self.bringups = 0
        self.power_cycles = 0
        self.wakes = 0
        self.sms_sent = 0
        self.sms_failed = 0
        self.psm_entered = 0
        self.resets_seen = 0

    # ---------------------------------------------------------- helpers ----

    def _to(self, name):
        t = self.p.get("timeouts_ms") or {}
        return t.get(name, t.get("default", 2000))

    def _split(self, tmpl):
        """'AT+CASEND={cid},{len}' -> (b'AT+CASEND=0,', b''): the length goes between."""
        tmpl = tmpl.replace("{cid}", "0")
        i = tmpl.find("{len}")
        return tmpl[:i].encode(), tmpl[i + 5 :].encode()

    def _line(self, pfx, n, sfx):
        """Build prefix + decimal n + suffix in the preallocated header buffer."""
        h = self._hdr
        k = len(pfx)
        h[:k] = pfx
        k = put_int(h, k, n)
        h[k : k + len(sfx)] = sfx
        return memoryview(h)[: k + len(sfx)]

    def _say(self, msg):
        self.log("modem: " + msg)

    def _set_fault(self, code):
        if code != self.fault:
            self._say("fault %s" % FAULTS[code])
        self.fault = code
        if code:
            self.last_fault = code

    def kick(self):
        self._ev.set()

    async def _cmd(self, text, timeout_ms=None, expect=None, **kw):
        return await self.at.cmd(
            _b(text), self._to("default") if timeout_ms is None else timeout_ms, expect, **kw
        )

    def _jitter(self, ms):
        half = ms // 2
        return half + (os.urandom(1)[0] * half) // 255

    # ------------------------------------------------------------- URCs ----

    def _on_urc(self, line):
        if self._pdp_urc is not None and line.startswith(self._pdp_urc):
            # The activation result; a DEACTIVE one is also a "lost" URC (SIM7080G).
            self._pdp_res = line == _b(self.p["pdp_on_ok"])
            self._urc_ev.set()
        if self._starts(line, self._reset_urcs):
            self.resets_seen += 1
            self._rebooted = True
            self.at.abort(RESET)
            self._drop_socket()
        elif self._starts(line, self._pdp_lost):
            self.data_ok = False
            self._drop_socket()
        elif line.startswith(self._rx_urc):
            s = self.sock
            if s is not None:
                s.rx_pending = True
                self._ev.set()
        elif line.startswith(self._closed_urc):
            self._cid_busy = False
            self._drop_socket()
        elif self.p.get("tcp_open_async") and line.startswith(self._open_res_pfx):
            self._open_res = field_int(line, self.p["tcp_open_field"])
            self._urc_ev.set()
        elif self.p.get("psm_urc") and line.startswith(_b(self.p["psm_urc"])):
            self.psm_entered += 1

    def _starts(self, line, prefixes):
        for p in prefixes:
            if line.startswith(p):
                return True
        return False

    def _drop_socket(self):
        s = self.sock
        if s is not None:
            s.closed = True
            s.open = False

    # ------------------------------------------------------ public API ----

    def up(self):
        return self.state == READY and not self._idle

    def available(self):
        """Could carry data if woken (registered with a data context, maybe asleep)."""
        return self.data_ok and self.state in (READY, SLEEP)

    def can_sms(self):
        return self.registered and self.state in (REGISTERED, READY, SLEEP)

    def rssi(self):
        return self.rssi_dbm

    def set_idle(self, idle):
        """The transport allows (True) or forbids (False) sleeping between uses."""
        if idle != self._idle:
            self._idle = idle
            self._ev.set()

    def location(self):
        f = self._fix
        if f is None:
            return None
        age = ticks_diff(ticks_ms(), f[3]) // 1000
        return f[0], f[1], f[2], age if age < 0xFFFE else 0xFFFE

    async def dial(self, host, port, timeout_ms=10000):
        """Open the modem's TCP socket to host:port; a ModemSocket or OSError."""
        if self.state != READY or not await self._awake():
            raise OSError(_ENETUNREACH)
        old = self.sock
        if old is not None:
            old.closed = True
        if self._cid_busy:  # left open by a drop (link loss, reboot of the MCU side)
            await self._cmd(_fmt(self.p["tcp_close"], cid=0), self._to("close"))
            self._cid_busy = False
        s = ModemSocket(self)
        self.sock = s
        text = _fmt(self.p["tcp_open"], cid=0, host=host, port=port)
        to = timeout_ms if timeout_ms < self._to("open") else self._to("open")
        if self.p.get("tcp_open_async"):
            self._open_res = None
            self._urc_ev.clear()
            st = await self._cmd(text, to)
            if st == OK:
                res = await self._wait_urc(to, "_open_res")
            else:
                res = None
        else:
            st = await self._cmd(text, to, self._open_res_pfx)
            res = None
            if st == OK and self.at.info:
                res = field_int(self.at.info[-1], self.p["tcp_open_field"])
        if res != 0:
            self.sock = None
            if st == TIMEOUT or (st == OK and res is None):
                raise OSError(_ETIMEDOUT)
            raise OSError(_ECONNREFUSED)
        s.open = True
        self._cid_busy = True
        self._ev.set()
        return s

    async def _wait_urc(self, to, attr):
        t0 = ticks_ms()
        while getattr(self, attr) is None and ticks_diff(ticks_ms(), t0) < to:
            try:
                await asyncio.wait_for_ms(self._urc_ev.wait(), to - ticks_diff(ticks_ms(), t0))
            except asyncio.TimeoutError:
                break
            self._urc_ev.clear()
        return getattr(self, attr)

    async def sms(self, to, text):
        """Send one text-mode SMS (3GPP TS 27.005 §3.5.1); True once the SMSC accepted it."""
        if self.state == SLEEP:
            self.set_idle(False)  # the supervisor wakes it; wait for that
            t0 = ticks_ms()
            lim = self.p["boot_ms"] + self._to("default")
            while self.state not in (READY, REGISTERED) and ticks_diff(ticks_ms(), t0) < lim:
                await asyncio.sleep_ms(100)
        if not self.can_sms() or self.state == SLEEP or not await self._awake():
            return False
        st = await self._cmd(
            _fmt(self.p["sms_send"], to=to), self._to("sms"), b"+CMGS:", data=_b(text) + _CTRL_Z
        )
        if st == OK:
            self.sms_sent += 1
            return True
        self.sms_failed += 1
        self._say("sms refused (%s %d)" % ("CMS" if st == 3 else str(st), self.at.err))
        return False

    # ------------------------------------------------------------ power ----

    async def _pulse(self, pin, ms):
        pin.value(self._on)
        await asyncio.sleep_ms(ms)
        pin.value(1 - self._on)

    async def _probe(self, tries=2):
        for _ in range(tries):
            if await self._cmd(b"AT", _PROBE_MS) == OK:
                return True
        return False

    async def _wait_ready(self, ms):
        t0 = ticks_ms()
        while ticks_diff(ticks_ms(), t0) < ms:
            if await self._probe(1):
                return True
            await asyncio.sleep_ms(200)
        return False

    async def _power_on(self):
        # Probe first: a PWRKEY pulse toggles power, so it would switch off a modem
        # that is already on (the MCU rebooted but the modem kept running).
        if await self._probe(3):
            return True
        if self.pwrkey is None:
            return False
        self._say("power on (PWRKEY %d ms)" % self.p["pwrkey_on_ms"])
        await self._pulse(self.pwrkey, self.p["pwrkey_on_ms"])
        return await self._wait_ready(self.p["boot_ms"])

    async def power_cycle(self):
        """Hard recovery: RESET pin, else a long PWRKEY press, else power off and on."""
        self.power_cycles += 1
        self._drop_socket()
        self.state = STARTING
        self._lp_done = False
        p = self.p
        if self.reset_pin is not None and p.get("reset_ms"):
            self._say("power cycle: RESET %d ms" % p["reset_ms"])
            await self._pulse(self.reset_pin, p["reset_ms"])
        elif self.pwrkey is not None and p.get("pwrkey_reset_ms"):
            self._say("power cycle: PWRKEY held %d ms" % p["pwrkey_reset_ms"])
            await self._pulse(self.pwrkey, p["pwrkey_reset_ms"])
        elif self.pwrkey is not None:
            self._say("power cycle: PWRKEY off")
            if await self._probe(1) and p.get("power_off"):
                await self._cmd(p["power_off"], 2000)
            else:
                await self._pulse(self.pwrkey, p["pwrkey_off_ms"])
            await asyncio.sleep_ms(p.get("off_ms", 2000))
        await asyncio.sleep_ms(200)

    # --------------------------------------------------------- bring-up ----

    async def _bring_up(self):
        """Power, init, SIM, APN, registration, PDP. True when data is up (READY)."""
        self.bringups += 1
        self.state = STARTING
        self._rebooted = False
        if not await self._power_on():
            self._set_fault(FAULT_NOT_RESPONDING)
            self.state = OFF
            return False
        await self._init()
        if not await self._sim():
            return False
        await self._cmd(_fmt(self.p["pdp_define"], apn=self.apn))
        for c in self.p.get("pdp_setup", ()):
            await self._cmd(_fmt(c, apn=self.apn))
        await self._low_power()
        self.state = SEARCHING
        if not await self._register(self.attach_ms):
            return False
        return await self._data()

    async def _init(self):
        # ATE0 first: with echo left on, the engine still matches the echo, but
        # echoed socket payloads would cost UART time and garbage counts.
        await self._cmd(b"ATE0", 1000)
        for c in self.p.get("init", ()):
            if await self._cmd(c) != OK:
                self._say("init command refused: %s" % c)
        self._rebooted = False  # the boot URCs (RDY...) were this power-on's

    async def _sim(self):
        for _ in range(3):
            st = await self._cmd(b"AT+CPIN?", self._to("cpin"), b"+CPIN:")
            if st == CME and self.at.err == 10:  # 10: SIM not inserted (27.007 §9.2.1)
                self._set_fault(FAULT_SIM_MISSING)
                return False
            if st == CME and self.at.err in (13, 15):  # SIM failure / wrong
                self._set_fault(FAULT_SIM_MISSING)
                return False
            if st == OK and self.at.info:
                v = self.at.info[-1]
                if v.endswith(b"READY"):
                    return True
                if v.endswith(b"SIM PIN") and self.sim_pin and not self._pin_tried:
                    # Once per boot: three wrong PINs lock the SIM behind its PUK.
                    self._pin_tried = True
                    await self._cmd('AT+CPIN="%s"' % self.sim_pin, self._to("cpin"))
                    await asyncio.sleep_ms(500)
                    continue
                self._set_fault(FAULT_SIM_LOCKED)
                return False
            await asyncio.sleep_ms(1000)  # 14: SIM busy right after boot
        self._set_fault(FAULT_SIM_MISSING if self.at.err == 10 else FAULT_OTHER)
        return False

    async def _low_power(self):
        if self._lp_done:
            return
        p = self.p
        if self.psm:
            # T3412 (periodic TAU) longer than a heartbeat: the beat itself keeps us known.
            tau = gprs_timer3(self.heartbeat_s * 4 if self.heartbeat_s * 4 > 3600 else 3600)
            act = gprs_timer2(self.psm_active_s)
            await self._cmd(_fmt(p["psm_on"], tau=tau, active=act))
        elif self.low_power == "edrx" and p.get("edrx_on"):
            await self._cmd(_fmt(p["edrx_on"], cycle=_EDRX_CYCLE))
        elif p.get("psm_off"):
            await self._cmd(p["psm_off"])
        self._lp_done = True

    async def _reg_stat(self):
        """Best registration status over the profile's commands (27.007 §7.2/§10.1.22)."""
        best = -1
        for c in self.p["reg"]:
            st = await self._cmd(c, None, _prefix(c))
            if st == TIMEOUT:
                return None
            for line in self.at.info:
                n = line.count(b",")
                s = field_int(line, 1 if n >= 1 else 0)  # answer "n,stat"; a URC is "stat"
                if s in (1, 5):
                    if best not in (1, 5):
                        best = s
                elif s == 3 and best not in (1, 5):
                    best = 3
                elif s is not None and best < 0:
                    best = s
        return best

    async def _signal(self):
        st = await self._cmd(self.p["signal"], None, b"+CSQ:")
        rssi = None
        if st == OK and self.at.info:
            v = field_int(self.at.info[-1], 0)
            if v is not None and v <= 31:
                rssi = -113 + 2 * v  # 27.007 §8.5: 0 = -113 dBm ... 31 = -51 dBm
        if rssi is None and self.p.get("cesq"):
            st = await self._cmd(self.p["cesq"], None, b"+CESQ:")
            if st == OK and self.at.info:
                v = field_int(self.at.info[-1], 5)
                if v is not None and v <= 97:
                    rssi = v - 141  # 27.007 §8.69: RSRP 0 = -140 dBm ... 97 = -44 dBm
        self.rssi_dbm = rssi
        return rssi

    async def _register(self, timeout_ms):
        t0 = ticks_ms()
        denied = 0
        while ticks_diff(ticks_ms(), t0) < timeout_ms:
            if self._rebooted:
                return False
            s = await self._reg_stat()
            if s is None:
                self._set_fault(FAULT_NOT_RESPONDING)
                return False
            if s == 1 or (s == 5 and self.roaming_ok):
                self.registered = True
                self.roaming = s == 5
                await self._signal()
                return True
            if s == 3:
                denied += 1
                if denied >= _DENIED_CONFIRM:
                    self.registered = False
                    self._set_fault(FAULT_DENIED)
                    return False
            else:
                denied = 0
            await self._signal()
            await asyncio.sleep_ms(_REG_POLL_MS)
        self.registered = False
        self._set_fault(FAULT_NO_SERVICE)
        return False

    async def _pdp_active(self):
        q = self.p["pdp_query"]
        st = await self._cmd(q, None, _prefix(q))
        if st != OK:
            return False
        want = _b(self.p["pdp_query_prefix"])
        for line in self.at.info:
            if line.startswith(want):
                return field_int(line, self.p["pdp_active_field"]) == 1
        return False

    async def _data(self):
        """Activate the PDP context; without it the modem is REGISTERED (SMS only)."""
        ok = await self._pdp_active()
        if not ok:
            if self._pdp_urc is not None:
                self._pdp_res = None
                self._urc_ev.clear()
                st = await self._cmd(self.p["pdp_on"], self._to("pdp"))
                ok = st == OK and bool(await self._wait_urc(self._to("pdp"), "_pdp_res"))
            else:
                ok = await self._cmd(self.p["pdp_on"], self._to("pdp")) == OK
        self.data_ok = ok
        if ok:
            self.state = READY
            self._set_fault(FAULT_NONE)
            return True
        self.state = REGISTERED
        self._set_fault(FAULT_DATA_DOWN)
        return False

    # ------------------------------------------------------------- tasks ----

    async def _keep(self, fn):
        """A sub-task that never dies (app._guard only wraps run())."""
        while True:
            try:
                await fn()
            except Exception as e:  # noqa: BLE001
                self._say("task failed (%r); restarting" % e)
                await asyncio.sleep_ms(200)

    async def run(self):
        """Bring the modem up and keep it up; never returns."""
        if not self._tasks:  # run() restarted after a crash: the helpers still run
            self._tasks = [
                asyncio.create_task(self._keep(self.at.run)),
                asyncio.create_task(self._keep(self._sockets)),
            ]
        while True:
            try:
                ok = await self._bring_up()
            except Exception as e:  # noqa: BLE001
                self._say("bring-up error %r" % e)
                ok = False
            if ok:
                self.fails = 0
                self._say(
                    "ready (%s, rssi %s)" % ("roaming" if self.roaming else "home", self.rssi_dbm)
                )
                await self._supervise()
                if self.state == REGISTERED:
                    await self._data_retry()
                await asyncio.sleep_ms(500)  # a flapping link must not spin
                continue
            self.fails += 1
            if self.state == REGISTERED:
                await self._data_retry()  # SMS keeps working meanwhile
                continue
            if self.fail_cycle and self.fails % self.fail_cycle == 0:
                await self.power_cycle()
            d = self._backoff()
            self._say("%s; retry in %d ms" % (FAULTS[self.fault], d))
            await asyncio.sleep_ms(d)

    def _backoff(self):
        f = self.fails
        d = self.retry_base << (0 if f < 2 else f - 1 if f < 12 else 11)
        return self._jitter(d if d < self.retry_cap else self.retry_cap)

    async def _data_retry(self):
        """Registered without data: retry the PDP context with backoff, staying registered."""
        while self.state == REGISTERED and not self._rebooted:
            d = self._backoff()
            self._say("data down; retry in %d ms" % d)
            t0 = ticks_ms()
            while ticks_diff(ticks_ms(), t0) < d and not self._rebooted:
                await asyncio.sleep_ms(200)
            await self._awake()
            s = await self._reg_stat()
            if s not in (1, 5):
                self.registered = False
                return
            if await self._data():
                self.fails = 0
                await self._supervise()
                return
            self.fails += 1

    async def _supervise(self):
        """READY (or REGISTERED without data): poll health, sleep when allowed, refresh GNSS."""
        next_check = ticks_add(ticks_ms(), self.check_ms)
        misses = 0
        while True:
            if self._rebooted:
                self._say("modem rebooted")
                self.state = STARTING
                return
            if self._idle and self.psm and self.state == READY:
                await self._sleep()
                if not await self._wake():
                    return
                next_check = ticks_add(ticks_ms(), self.check_ms)
                continue
            if self.state == REGISTERED:
                return  # data lost: the caller retries the context with backoff
            if ticks_diff(ticks_ms(), next_check) >= 0:
                next_check = ticks_add(ticks_ms(), self.check_ms)
                s = await self._reg_stat()
                if s is None and await self._revive():
                    continue  # it had slipped into PSM on its own (no socket, quiet UART)
                if s is None:
                    misses += 1
                    if misses >= 2 or not await self._probe(2):
                        self._set_fault(FAULT_NOT_RESPONDING)
                        self.state = OFF
                        self._drop_socket()
                        return
                    continue
                misses = 0
                if s not in (1, 5):
                    self._say("registration lost (stat %d)" % s)
                    self.registered = False
                    self.state = SEARCHING
                    self._drop_socket()
                    return
                await self._signal()
                if not self.data_ok or not await self._pdp_active():
                    self._drop_socket()
                    if not await self._data():
                        return
            if self._gnss_due():
                await self.gnss_fix()
                continue
            try:
                await asyncio.wait_for_ms(self._ev.wait(), 1000)
            except asyncio.TimeoutError:
                pass
            self._ev.clear()

    async def _sleep(self):
        """Let the modem reach PSM: close the socket, stop talking until needed."""
        t0 = ticks_ms()
        while self.sock is not None and self.sock.open and ticks_diff(ticks_ms(), t0) < 1000:
            await asyncio.sleep_ms(50)  # the session sees the link go down and closes first
        s = self.sock
        if s is not None and s.open:
            await self._close(s)
        if self._gnss_due():
            await self.gnss_fix()
        self.state = SLEEP
        while self._idle and not self._rebooted:
            self._ev.clear()
            try:
                await asyncio.wait_for_ms(self._ev.wait(), 5000)
            except asyncio.TimeoutError:
                pass

    async def _awake(self):
        """With PSM on the module may have slept on its own (UART dead): wake it if so."""
        if not self.psm or await self._probe(1):
            return True
        return await self._revive()

    async def _revive(self):
        """A silent modem with PSM on may simply be in PSM: a wake pulse, then a probe."""
        if not self.psm or self.pwrkey is None or not self.p.get("wake_ms"):
            return False
        self.wakes += 1
        await self._pulse(self.pwrkey, self.p["wake_ms"])
        if await self._wait_ready(self.p["boot_ms"] // 2):
            await self._cmd(b"ATE0", 1000)
            return True
        return False

    async def _wake(self):
        """Back from PSM: probe (it may never have slept), else PWRKEY; then check the link."""
        self.wakes += 1
        if not await self._probe(1):
            if self.pwrkey is None or not self.p.get("wake_ms"):
                return False
            await self._pulse(self.pwrkey, self.p["wake_ms"])
            if not await self._wait_ready(self.p["boot_ms"]):
                self._set_fault(FAULT_NOT_RESPONDING)
                self.state = OFF
                return False
        await self._cmd(b"ATE0", 1000)  # settings not saved with AT&W may be back to defaults
        await self._cmd(b"AT+CMEE=1")
        self._rebooted = False
        self.state = SEARCHING
        if not await self._register(self.attach_ms):
            return False
        return await self._data()

    # ----------------------------------------------------------- sockets ----

    async def _sockets(self):
        """Move bytes between ModemSockets and the modem; never returns."""
        last_rx = ticks_ms()
        while True:
            s = self.sock
            if s is None or (not s.open and not s.close_req):
                self._ev.clear()
                await self._wait_ev(1000)
                continue
            if s.close_req:
                if s.open:
                    await self._close(s)
                if self.sock is s:
                    self.sock = None
                continue
            if not s.open:
                await self._wait_ev(1000)
                continue
            did = False
            if s.txn:
                await self._send(s)
                did = True
            if s.open and (s.rx_pending or ticks_diff(ticks_ms(), last_rx) > _RX_PROBE_MS):
                s.compact()
                if len(s.rx) - s.rxt > 0:
                    await self._recv(s)
                    last_rx = ticks_ms()
                    did = True
            if not did:
                self._ev.clear()
                await self._wait_ev(_RX_PROBE_MS)

    async def _wait_ev(self, ms):
        try:
            await asyncio.wait_for_ms(self._ev.wait(), ms)
        except asyncio.TimeoutError:
            pass

    async def _send(self, s):
        n = s.txn
        mx = self.p["tcp_send_max"]
        if n > mx:
            n = mx
        st = await self.at.cmd(
            self._line(self._send_pfx, n, self._send_sfx),
            self._to("send"),
            None,
            data=memoryview(s.tx)[:n],
            final=self._send_final,
            final_err=self._send_fail,
        )
        if st != OK:
            self._say("socket send failed (%d)" % st)
            s.closed = True
            s.open = False
            return
        rest = s.txn - n
        if rest:
            s.tx[:rest] = s.tx[n : s.txn]
        s.txn = rest
        s.sent += n

    async def _recv(self, s):
        s.compact()
        room = len(s.rx) - s.rxt
        mx = self.p["tcp_recv_max"]
        want = room if room < mx else mx
        spec = self._rx_spec
        spec[3] = memoryview(s.rx)[s.rxt : s.rxt + want]
        s.rx_pending = False  # cleared first: a URC arriving during the read sets it again
        st = await self.at.cmd(
            self._line(self._recv_pfx, want, self._recv_sfx),
            self._to("recv"),
            self._rx_expect,
            rx=spec,
        )
        spec[3] = None
        got = self.at.rx_n
        if st == OK and got:
            s.rxt += got
            s.received += got
            if got == want:
                s.rx_pending = True  # a full read: there may be more

    async def _close(self, s):
        s.closed = True
        if s.open:
            s.open = False
            if await self._cmd(_fmt(self.p["tcp_close"], cid=0), self._to("close")) == OK:
                self._cid_busy = False

    # -------------------------------------------------------------- GNSS ----

    def _gnss_due(self):
        if not self.has_gnss or not self.gnss_every_s:
            return False
        if self.sock is not None and self.sock.open and self.p.get("gnss_exclusive"):
            return False  # GNSS shares the RF front end with LTE on this module
        g = self._gnss_last
        return g is None or ticks_diff(ticks_ms(), g) >= self.gnss_every_s * 1000

    async def gnss_fix(self, timeout_s=None):
        """Try for one fix (bounded; stops early when data is wanted). True on a fix."""
        self._gnss_last = ticks_ms()
        p = self.p
        t = self.gnss_timeout_s if timeout_s is None else timeout_s
        if not await self._awake() or await self._cmd(p["gnss_on"]) != OK:
            return False
        got = None
        t0 = ticks_ms()
        try:
            while ticks_diff(ticks_ms(), t0) < t * 1000:
                st = await self._cmd(p["gnss_query"], self._to("gnss"), _prefix(p["gnss_query"]))
                if st == OK and self.at.info:
                    got = parse_fix(p["gnss_format"], self.at.info[-1])
                    if got is not None:
                        break
                if (not self._idle and self.state == SLEEP) or self._rebooted:
                    break
                if p.get("gnss_exclusive") and self.sock is not None and self.sock.open:
                    break  # data wanted the radio
                await asyncio.sleep_ms(1000)
        finally:
            await self._cmd(p["gnss_off"])
        if got is None:
            return False
        self._fix = (got[0], got[1], got[2], ticks_ms())  # never logged: a location
        return True

    def close(self):
        """Stop the helper tasks (the Device is being stopped); the modem stays powered."""
        for t in self._tasks or ():
            t.cancel()
        self._tasks = None
        self._drop_socket()

    # ------------------------------------------------------------ report ----

    def status(self):
        """One dict for modem-check and tests (no location in it)."""
        return {
            "state": STATES[self.state],
            "fault": FAULTS[self.fault],
            "registered": self.registered,
            "roaming": self.roaming,
            "data": self.data_ok,
            "rssi": self.rssi_dbm,
            "fix": self._fix is not None,
            "bringups": self.bringups,
            "power_cycles": self.power_cycles,
            "wakes": self.wakes,
            "sms_sent": self.sms_sent,
            "at": self.at.stats(),
        }
