# Transport manager: bearer order and failover, the SMS fallback for alerts, PSM between uses.
#
# The device sees one transport with the same members as wifi.WifiTransport
# (up(), bearer, rssi(), run()) plus dial() for mqtt.Conn, location() for the
# ALERT and fault() for the HEARTBEAT. Bearers come in the order the board and
# config.json give (button: Wi-Fi then LTE; bracelet: LTE only). The first
# usable one carries the MQTT session; one that is up but cannot reach the
# broker for FAILOVER_MS is benched for PENALTY_MS so the next one takes over.
#
# SMS fallback (issue 12, SPEC §10.4): an ALERT still waiting for its C4 ACK
# SMS_BUDGET (config sms.budget_s, default 20 s) after it was queued is also
# sent as one SMS to the C4 number: the same frame (same counter, restamped as
# a retransmission would be, §12.3) in base64. We wait for the C4's ACK rather
# than the broker's PUBACK because a PUBACK only proves the broker has it. The
# SMS never replaces the data path: the alert keeps being retried over MQTT,
# and its ACK still comes over data (no downlink over SMS). Meanwhile the
# wearer feels the distinct "sms" pattern.
#
# Power: with PSM (lte.low_power "psm" and a profile that has it) the modem
# may sleep whenever nothing is waiting: outbox empty, no press in progress,
# no SMS due, LINGER_MS after the last use and PSM_AFTER_ALERT_S after an
# alert (so "attending" reaches the wearer promptly).
#
# RAM budget: ~0.4 KB: one MAX_FRAME copy buffer, 3 x TRACK small arrays, the
# bearer list. Bytecode: 3.9 KB as .mpy, 6-10 KB of heap once imported (64-bit
# unix / 32-bit wasm ports), none when frozen; imported only when a board has
# a modem (a Wi-Fi-only board gets the bare WifiTransport).

import asyncio
from array import array
from time import ticks_add, ticks_diff, ticks_ms

try:
    from micropython import const
except ImportError:

    def const(x):
        return x


_TICK_MS = const(500)  # manager period: bearer choice, SMS budget, sleep decision
_FAILOVER_MS = const(30000)  # up but no broker session this long: try the next bearer
_PENALTY_MS = const(300000)  # a benched bearer is skipped this long
_RETURN_MS = const(5000)  # a preferred bearer must stay up this long before we go back
_SWITCH_MS = const(300)  # link reported down this long on a switch (session redials)
# Stay awake this long after the outbox empties. Downlinks queued for our persistent
# session arrive right after CONNACK, before the PUBACK that emptied the outbox, so
# this only covers one more round trip.
_LINGER_MS = const(500)
_PSM_AFTER_ALERT_S = const(300)  # no PSM this long after an alert (attending ACK)
_SMS_RETRY_MS = const(5000)  # a refused or impossible SMS is retried this often
_TRACK = const(4)  # alerts tracked for the SMS budget at once (oldest kept first)

_ALERT = const(0x01)  # SPEC §4 type code
_MAX_FRAME = const(96)


class Transport:
    """Several bearers behind one link, plus the modem's SMS fallback and PSM policy."""

    def __init__(self, links, modem, cfg, log):
        self.links = links  # preference order
        self.modem = modem  # the LTE bearer (also in links when LTE is a data bearer), or None
        self.log = log
        self.sms_to = cfg.sms_to
        self.budget_ms = cfg.sms_budget_s * 1000
        t = cfg.lte_tunables
        self.failover_ms = t.get("failover_ms", _FAILOVER_MS)
        self.penalty_ms = t.get("failover_penalty_ms", _PENALTY_MS)
        self.linger_ms = t.get("psm_linger_ms", _LINGER_MS)
        self.after_alert_ms = t.get("psm_after_alert_s", _PSM_AFTER_ALERT_S) * 1000
        self.sms_retry_ms = t.get("sms_retry_ms", _SMS_RETRY_MS)
        self.dev = None
        self._active = None
        self._since = ticks_ms()  # when the preferred candidate last changed
        self._cand = None
        self._drop_until = ticks_ms()
        self._bench = [0] * len(links)  # ticks until which link i is skipped (0: never)
        self._sess_seen = ticks_ms()  # last time the session was connected (or a switch)
        self._busy_t = ticks_ms()  # last time something needed the link
        self._fb = bytearray(_MAX_FRAME)
        self._tc = array("I", bytes(4 * _TRACK))  # tracked alert counters (0 = free)
        self._tt = array("i", bytes(4 * _TRACK))  # ticks when first seen waiting
        self._tn = array("i", bytes(4 * _TRACK))  # ticks of the next SMS attempt
        self._td = bytearray(_TRACK)  # 1 once its SMS was accepted
        self._sms_due = False
        self.sms_sent = 0
        self.switches = 0

    # ----------------------------------------------------- device-facing ----

    def attach(self, dev):
        """The Device (outbox, feedback, clock): set once after construction."""
        self.dev = dev

    @property
    def bearer(self):
        # The bearer carrying the session, even while the modem sleeps in PSM
        # between beats; 0 (none, SPEC §9) when no bearer is usable at all.
        a = self._active
        return a.bearer if a is not None else 0

    def up(self):
        a = self._active
        if a is None or ticks_diff(self._drop_until, ticks_ms()) > 0:
            return False
        return a.up()

    def rssi(self):
        a = self._active or self.modem
        return a.rssi() if a is not None else None

    async def dial(self, host, port, timeout_ms):
        """A socket-like object on the active bearer, or None: use the system socket."""
        a = self._active
        d = getattr(a, "dial", None)
        if d is None:
            return None
        return await d(host, port, timeout_ms)

    def location(self):
        m = self.modem
        return m.location() if m is not None else None

    def fault(self):
        """The modem fault for the next HEARTBEAT: current, else the latched one (then cleared)."""
        m = self.modem
        if m is None:
            return 0
        if m.fault:
            return m.fault
        f = m.last_fault
        m.last_fault = 0
        return f

    # -------------------------------------------------------------- run ----

    async def _keep(self, fn):
        while True:
            try:
                await fn()
                return  # finished on purpose (Wi-Fi without an SSID)
            except Exception as e:  # noqa: BLE001 - a bearer task must never die
                self.log("transport: bearer task failed (%r); restarting" % e)
                await asyncio.sleep_ms(500)

    async def run(self):
        kids = [asyncio.create_task(self._keep(link.run)) for link in self.links]
        m = self.modem
        if m is not None and m not in self.links:
            kids.append(asyncio.create_task(self._keep(m.run)))  # SMS-only modem
        try:
            while True:
                try:
                    self._choose()
                    self._power()
                    await self._sms()
                except Exception as e:  # noqa: BLE001
                    self.log("transport: %r" % e)
                await asyncio.sleep_ms(_TICK_MS)
        finally:  # the Device is stopped (soft reset): its bearer tasks go with it
            for k in kids:
                k.cancel()
            if m is not None:
                m.close()

    def _usable(self, i, now):
        link = self.links[i]
        if self._bench[i] and ticks_diff(self._bench[i], now) > 0:
            return False
        av = getattr(link, "available", None)
        return av() if av is not None else link.up()

    def _choose(self):
        now = ticks_ms()
        links = self.links
        best = None
        for i in range(len(links)):
            if self._usable(i, now):
                best = links[i]
                break
        if best is not self._cand:
            self._cand = best
            self._since = now
        a = self._active
        if best is not a and best is not None:
            # Going back to a more preferred bearer waits until it has been stable.
            back = a is not None and self._usable(links.index(a), now)
            if not back or ticks_diff(now, self._since) >= _RETURN_MS:
                self._switch(best, now)
        elif (
            best is None and a is not None and not a.up() and not self._usable(links.index(a), now)
        ):
            self._active = None
        s = self.dev.session if self.dev is not None else None
        if s is None or s.connected() or self._active is None or not self._active.up():
            self._sess_seen = now
        elif ticks_diff(now, self._sess_seen) > self.failover_ms and len(links) > 1:
            i = links.index(self._active)
            self._bench[i] = ticks_add(now, self.penalty_ms) or 1
            self.log("transport: no broker over %s; trying the next bearer" % _name(self._active))
            self._sess_seen = now

    def _switch(self, link, now):
        if self._active is not None:
            self._drop_until = ticks_add(now, _SWITCH_MS)  # the session drops and redials
        self._active = link
        self._sess_seen = now
        self.switches += 1
        self.log("transport: bearer %s" % _name(link))

    def _power(self):
        m = self.modem
        if m is None:
            return
        now = ticks_ms()
        if self._demand(now):
            self._busy_t = now
        if m in self.links and (self._active is m or self._active is None):
            idle = m.psm and ticks_diff(now, self._busy_t) > self.linger_ms
        else:
            idle = not self._sms_due  # standby: registered, asleep where PSM allows
        m.set_idle(idle)

    def _demand(self, now):
        if self._sms_due:
            return True
        d = self.dev
        if d is None:
            return True
        if d.outbox.depth() or d.gesture.active():
            return True
        return d.last_alert_t and ticks_diff(now, d.last_alert_t) < self.after_alert_ms

    # -------------------------------------------------------------- SMS ----

    def _track(self, c, now):
        tc = self._tc
        free = -1
        for k in range(_TRACK):
            if tc[k] == c:
                return k
            if not tc[k] and free < 0:
                free = k
        if free < 0:
            return -1  # more than _TRACK alerts waiting: the newest wait for a slot
        tc[free] = c
        self._tt[free] = now
        self._tn[free] = now
        self._td[free] = 0
        return free

    async def _sms(self):
        d = self.dev
        m = self.modem
        self._sms_due = False
        if d is None or m is None or not self.sms_to:
            return
        now = ticks_ms()
        ob = d.outbox
        tc = self._tc
        for k in range(_TRACK):  # forget alerts acked or cancelled meanwhile
            if tc[k] and ob.find(tc[k], _ALERT) < 0:
                tc[k] = 0
        for i in range(ob.slots):  # every ALERT waiting for its ACK, without building a list
            c = ob.waiting(_ALERT, i)
            if not c:
                continue
            k = self._track(c, now)
            if k < 0 or self._td[k] or ticks_diff(now, self._tt[k]) < self.budget_ms:
                continue
            self._sms_due = True
            if ticks_diff(now, self._tn[k]) < 0 or not m.can_sms():
                continue
            if await self._send(c):
                self._td[k] = 1
                self.sms_sent += 1
                self.log("transport: alert %d also sent by SMS" % c)
                d.feedback.show("sms")
                d.hal.state("sms", c)
            else:
                self._tn[k] = ticks_add(ticks_ms(), self.sms_retry_ms)

    async def _send(self, c):
        d = self.dev
        fb = self._fb
        n = d.outbox.copy_restamped(c, _ALERT, fb, d.now_ts(), d.flags())  # §12.3: same counter
        if not n:
            return False  # acked while we waited for the modem
        from auxsms import sms_encode  # loaded on the first SMS only (SPEC §10.4)

        text = sms_encode(memoryview(fb)[:n])
        return await self.modem.sms(self.sms_to, text)

    def status(self):
        """For modem-check and tests."""
        a = self._active
        return {
            "bearer": _name(a) if a is not None else "none",
            "switches": self.switches,
            "sms_sent": self.sms_sent,
            "modem": self.modem.status() if self.modem is not None else None,
        }


def _name(link):
    return "lte" if link.bearer == 2 else "wifi" if link.bearer == 1 else "none"


def make(cfg, log, hal):
    """The transport cfg.bearers asks for, built from the HAL's parts.

    hal.wifi_link(cfg, log) -> a Wi-Fi bearer; hal.modem_port(pins, baud) -> a
    UART-like stream or None (no modem wired); hal.modem_pin(pins, name) -> a
    Pin or None. A board with no modem gets the bare Wi-Fi link (no manager).
    """
    m = None
    if cfg.modem is not None:
        m = make_modem(cfg, log, hal)
    if m is None:
        return hal.wifi_link(cfg, log)
    links = []
    for b in cfg.bearers:
        if b == "wifi":
            links.append(hal.wifi_link(cfg, log))
        elif b == "lte":
            links.append(m)
    return Transport(links, m, cfg, log)


def make_modem(cfg, log, hal):
    """The board's Modem (modem.json + the HAL's UART and pins), or None."""
    from config import ConfigError, read_json

    pins = cfg.modem["pins"]
    try:
        prof = read_json(cfg.modem["file"], "modem.json")
    except ConfigError as e:
        log("config error: %s; no modem" % e)
        return None
    prof = prof.get("at", prof)  # the deployed file is the profile's "at" section
    port = hal.modem_port(pins, prof.get("baud", 115200))
    if port is None:
        return None
    from modem import Modem

    return Modem(
        port,
        hal.modem_pin(pins, "pwrkey"),
        hal.modem_pin(pins, "reset"),
        prof,
        cfg,
        log,
        pins.get("active_high", True),
    )
