# One panic device: owns all state (config, keys, outbox, counters, session) and the alert lifecycle.
#
# Lifecycle (issue 3 §5, SPEC §12): press -> frame encoded into a preallocated
# outbox slot -> outbox persisted -> QoS 1 publish -> signed ACK verified ->
# feedback. Unacked frames are retried with capped, jittered exponential
# backoff forever (alerts are never given up while unacked and uncancelled).
# Several Device objects can share one interpreter (the emulator's fleets):
# nothing lives at module level except constants.
#
# RAM budget per Device: Keys ~0.5 KB, outbox ~2.2 KB (12 slots), gesture
# ring ~0.1 KB, scratch buffers 0.2 KB, config ~1 KB, plus the MQTT session's
# buffers and ~6 asyncio tasks, and the test window (SPEC §8.10.1: 4 ints).
# Steady state target: well under 8 KB.

import asyncio
import json
import os
import struct
from time import ticks_add, ticks_diff, ticks_ms, ticks_us

import auxcodec as codec
import gesture as gesture_mod
from config import Config, join
from counter_store import CounterStore
from feedback import Feedback
from outbox import Outbox, type_flags
from power import PowerWatch

# How long a publish may wait for the broker's PUBACK before it counts as failed.
PUBLISH_TIMEOUT_MS = 5000
# Number of recently acknowledged alert counters kept so a later "attending"
# ACK for an already-received alert is still honoured (SPEC §12.4).
RECENT_ACKED = 4
# Longest time the sender idles without re-checking (also its liveness tick).
IDLE_WAIT_MS = 1000
# Re-anchor the derived clock well before ticks_ms wraps (ticks_diff is valid
# for 2**29 ms on every port).
CLOCK_REANCHOR_MS = 3600000
# Task crash budget before the watchdog is starved (a crash loop => reboot).
CRASH_LIMIT = 20
# The sender must tick at least this often for the device to count as healthy.
HEALTHY_TICK_MS = 30000
# SPEC §8.10.1: the longest test window a CONFIG may open; longer asks are capped.
TEST_WINDOW_MAX_S = 600

_ATTENDING = 1  # SPEC §8.9 disposition values
_RECEIVED = 0
_TIME_NAK = 2
_REJECTED = 3
_REASON_REPLAY = 3
_REASON_COLLISION = 6  # SPEC §8.9: the counter names another stored frame

_SETTINGS_KEYS = ("heartbeat_s", "discreet", "cancel_window_s", "hold_ms")
# CONFIG field ranges accepted from the C4 (SPEC §8.10 types, sane bounds).
_CONFIG_RANGES = {
    "heartbeat_s": (1, 65535),  # HEARTBEAT interval_s is u16 (SPEC §8.3)
    "cancel_window_s": (0, 600),
    "hold_ms": (50, 10000),
}


def _mkdir(path):
    try:
        os.mkdir(path)
    except OSError:
        pass


class Device:
    """All state of one bracelet or street button."""

    def __init__(self, root, hal, index=0):
        self.root = root
        self.hal = hal
        self.index = index
        self.cfg = cfg = Config(root, codec)  # ConfigError -> caller logs and blinks
        self.tag = "[" + cfg.device_str + "] "
        self.keys = codec.Keys(cfg.secret)
        data = join(root, "data")
        _mkdir(data)
        self.settings_path = join(data, "settings.json")
        self.config_seq = 0
        self._load_settings()
        self.outbox = Outbox(
            join(data, "outbox.bin"),
            cfg.outbox_slots,
            self.keys,
            self.log,
            ticks_ms,
            cfg.retry_base_ms,
            cfg.retry_cap_ms,
        )
        self.recovered = self.outbox.load(cfg.device)
        if self.recovered:  # each counts as sent: it may have gone out before the reset
            self.log("outbox: %d frame(s) recovered from flash" % self.recovered)
        self.counters = CounterStore(join(data, "counter"), cfg.counter_block, self.log)
        self.counters.load(self.outbox.hw, self.outbox.hw > 0, cfg.counter_floor)
        self.gesture = gesture_mod.Gesture(cfg.hold_ms, cfg.cancel_taps)
        self.feedback = Feedback(hal, cfg.has_haptic, cfg.has_led, cfg.has_buzzer, cfg.discreet)
        self.power = PowerWatch(
            cfg.low_battery,
            hal.mains() if cfg.has_mains else None,
            hal.tamper_open() if cfg.has_tamper else None,
        )
        self.transport = hal.make_transport(cfg, self.log)
        if hasattr(self.transport, "attach"):
            self.transport.attach(self)  # issue 12: outbox/feedback for the SMS fallback and PSM
        p = cfg.prefix
        self.up_topic = codec.topic(p, cfg.device, "up")
        self.down_topic = codec.topic(p, cfg.device, "down")
        self.status_topic = codec.topic(p, cfg.device, "status")
        self.session = None
        # Preallocated buffers for the alert path (no allocation per frame).
        self._pl = bytearray(codec.MAX_PAYLOAD)
        self._rx = bytearray(codec.MAX_PAYLOAD)
        self._loc = [0, 0, 0, 0, 0, 0, 0, 0]
        self._wake = asyncio.Event()
        self.hb_changed = asyncio.Event()
        # ThreadSafeFlag on hardware (set from the IRQ); a plain Event on the host,
        # where 5+ ThreadSafeFlag waiters next to sockets crash the unix port.
        self.button_flag = hal.make_flag()
        # Clock (SPEC §12.5): unknown until a genuine ACK carries server time;
        # "synced" only while that ACK said the gateway's own clock is synced.
        self._clk_ts = 0
        self._clk_ticks = 0
        self._clk_synced = False
        self.last_alert = 0
        self.last_alert_t = 0
        self.recent = [0] * RECENT_ACKED
        self._recent_i = 0
        self.crashes = 0
        self.alive = ticks_ms()
        self.last_activity = ticks_ms()
        self.was_connected = False
        self.t_detect_us = 0  # when the gesture decided ALERT (latency figure)
        self.last_latency_us = -1
        # Test window (SPEC §8.10.1): RAM only, so a reboot closes it.
        self.test_window = False
        self.test_until = 0  # ticks_ms when it closes
        self.test_press = False  # the current press sent TEST: a long hold escalates
        self.silent_test = 0  # counter of a TEST whose ACK gives no feedback (selftest = 2)

    # -------------------------------------------------------------- misc ----

    def log(self, msg):
        self.hal.log(self.tag + msg)

    def make_session(self):
        from session import Session

        cfg = self.cfg
        extra = {}
        if cfg.mqtt_backoff_min_ms is not None:
            extra["backoff_min_ms"] = cfg.mqtt_backoff_min_ms
        if cfg.mqtt_backoff_max_ms is not None:
            extra["backoff_max_ms"] = cfg.mqtt_backoff_max_ms
        self.session = Session(
            cfg.device_str,
            cfg.host,
            cfg.port,
            user=cfg.username,
            password=cfg.password,
            keepalive=cfg.keepalive_s,
            ssl_ca=cfg.read_ca(self.root),
            server_hostname=cfg.server_hostname if cfg.tls else None,
            will_topic=self.status_topic,
            will_msg=b"offline",
            online_topic=self.status_topic,
            subscriptions=(self.down_topic,),
            on_message=self.on_downlink,
            link_up=self.transport.up,
            dial=getattr(self.transport, "dial", None),  # issue 12: modem sockets
            log=self.log,
            max_packet=256,
            **extra,
        )
        self.session.on_first_byte = self._first_byte
        return self.session

    def _first_byte(self):
        if self.t_detect_us:
            self.last_latency_us = ticks_diff(ticks_us(), self.t_detect_us)
            self.t_detect_us = 0

    def healthy(self):
        return self.crashes < CRASH_LIMIT and ticks_diff(ticks_ms(), self.alive) < HEALTHY_TICK_MS

    def crashed(self, name, exc):
        self.crashes += 1
        self.log("task %s failed (%r); restarting" % (name, exc))

    # ------------------------------------------------------------- clock ----

    def now_ts(self):
        if not self._clk_ts:
            return 0
        d = ticks_diff(ticks_ms(), self._clk_ticks)
        if d > CLOCK_REANCHOR_MS:
            s = d // 1000
            self._clk_ts += s
            self._clk_ticks = ticks_add(self._clk_ticks, s * 1000)
            d -= s * 1000
        return self._clk_ts + d // 1000

    def _sync_clock(self, ts, synced):
        if ts:
            self._clk_ts = ts
            self._clk_ticks = ticks_ms()
            self._clk_synced = synced

    def flags(self):
        return codec.FLAG_CLOCK_SYNCED if self._clk_ts and self._clk_synced else 0

    # ---------------------------------------------------------- settings ----

    def _load_settings(self):
        try:
            with open(self.settings_path, "rb") as f:
                raw = f.read()
        except OSError:
            return
        try:
            s = json.loads(raw.decode())
            seq = s.get("seq", 0)
            if not isinstance(seq, int):
                raise ValueError
        except (ValueError, UnicodeError, AttributeError):
            self.log("settings file corrupt: quarantined, using config.json values")
            try:
                os.rename(self.settings_path, self.settings_path + ".bad")
            except OSError:
                pass
            return
        self.config_seq = seq
        for k in _SETTINGS_KEYS:
            if k in s:
                setattr(self.cfg, k, s[k])

    def _save_settings(self):
        cfg = self.cfg
        s = {"seq": self.config_seq}
        for k in _SETTINGS_KEYS:
            s[k] = getattr(cfg, k)
        tmp = self.settings_path + ".tmp"
        with open(tmp, "w") as f:
            f.write(json.dumps(s))
        os.rename(tmp, self.settings_path)

    # ------------------------------------------------------------ uplink ----

    def queue(self, code, n):
        """Queue self._pl[:n] as a new frame of type code; return its counter (0 if dropped)."""
        c = self.counters.take()
        fl = self.flags() | type_flags(code)
        i = self.outbox.add(code, fl, self.cfg.device, c, self.now_ts(), memoryview(self._pl)[:n])
        self._wake.set()
        if i < 0:
            return 0
        self.hal.state("queued", c)
        return c

    def raise_alert(self):
        """The gesture said ALERT: encode, persist, pulse, wake the sender."""
        self.t_detect_us = ticks_us()
        self.last_activity = ticks_ms()
        c = self._queue_located(codec.ALERT)
        self.feedback.show("queued")
        if c:
            self.last_alert = c
            self.last_alert_t = ticks_ms()
        return c

    def raise_test(self):
        """A TEST frame (SPEC §8.7): ALERT's layout and path, the test flag set, never dispatched."""
        c = self._queue_located(codec.TEST)  # a full outbox says so itself
        if c:
            self.log("test frame %d queued" % c)
        return c

    def on_hold(self):
        """The alert gesture: TEST for the one press an open test window allows, else ALERT."""
        if self.test_window and ticks_diff(self.test_until, ticks_ms()) > 0:
            self._close_window()  # SPEC §8.10.1 rule 2: one press per window
            self.test_press = True
            self.last_activity = ticks_ms()
            self.feedback.show("queued")
            return self.raise_test()
        if self.test_window:
            self._close_window()  # rule 5: after the window a press is an ALERT
        self.test_press = False
        return self.raise_alert()

    def on_long_hold(self):
        """Still held at 3x hold_ms: a test press becomes a real ALERT too (SPEC §8.10.1 rule 3)."""
        if not self.test_press:
            return 0
        self.test_press = False
        self.log("test press held on: raising a real ALERT")
        return self.raise_alert()

    def _close_window(self):
        self.test_window = False
        self.log("test window closed")
        self.hal.state("test_window", 0)

    def _queue_located(self, code):
        v = self._loc
        loc = self.hal.location()
        if loc is None:
            v[0] = -2147483648  # SPEC §8.1: 0x80000000 = no fix
            v[1] = -2147483648
            v[2] = 0xFFFF
            v[3] = 0xFFFF
        else:
            v[0], v[1], v[2], v[3] = loc
        v[4] = self._battery_wire()
        v[5] = self._rssi_wire()
        v[6] = self.transport.bearer
        v[7] = self.now_ts()  # SPEC §8.1 pressed_at: 0 = no clock yet
        n = codec.pack_payload_into(self._pl, 0, code, v)
        return self.queue(code, n)

    def cancel_gesture(self):
        """Tap sequence: CANCEL the last alert if still inside the cancel window."""
        self.last_activity = ticks_ms()
        c = self.last_alert
        if not c or ticks_diff(ticks_ms(), self.last_alert_t) > self.cfg.cancel_window_s * 1000:
            return 0
        self.last_alert = 0  # one cancel per alert
        n = codec.pack_payload_into(self._pl, 0, codec.CANCEL, (c, 0))  # 0: gesture
        k = self.queue(codec.CANCEL, n)
        self.feedback.show("cancelled")
        self.log("cancel queued for alert %d" % c)
        return k

    def queue_boot(self):
        cause = self.hal.reset_cause()
        try:
            idx = codec.RESET_CAUSES.index(cause)
        except ValueError:
            idx = 0
        fw = self.cfg.fw
        depth = self.recovered if self.recovered < 255 else 255
        n = codec.pack_payload_into(self._pl, 0, codec.BOOT, (idx, fw[0], fw[1], fw[2], depth))
        self.log(
            "boot: reset cause %s, fw %d.%d.%d" % (codec.RESET_CAUSES[idx], fw[0], fw[1], fw[2])
        )
        return self.queue(codec.BOOT, n)

    def queue_heartbeat(self):
        cfg = self.cfg
        hal = self.hal
        status = 0
        if cfg.has_mains and hal.mains():
            status |= codec.STATUS_MAINS
        if cfg.has_tamper and hal.tamper_open():
            status |= codec.STATUS_TAMPER_OPEN
        if hal.charging():
            status |= codec.STATUS_CHARGING
        if cfg.discreet:
            status |= codec.STATUS_DISCREET
        fault = getattr(self.transport, "fault", None)
        if fault is not None:
            status |= (fault() & 7) << 4  # SPEC §8.3: the modem fault code, bits 4-6
        depth = self.outbox.depth()
        fw = cfg.fw
        hb = cfg.heartbeat_s if cfg.heartbeat_s < 0xFFFF else 0xFFFF
        n = codec.pack_payload_into(
            self._pl,
            0,
            codec.HEARTBEAT,
            (
                self._battery_wire(),
                self._rssi_wire(),
                self.transport.bearer,
                depth if depth < 255 else 255,
                fw[0],
                fw[1],
                fw[2],
                status,
                hb,
            ),
        )
        return self.queue(codec.HEARTBEAT, n)

    def queue_event(self, code, a, b=None):
        """TAMPER(open) / POWER(mains, battery) / LOW_BATTERY(battery, threshold)."""
        if b is None:
            n = codec.pack_payload_into(self._pl, 0, code, (a,))
        else:
            n = codec.pack_payload_into(self._pl, 0, code, (a, b))
        return self.queue(code, n)

    def _battery_wire(self):
        b = self.hal.battery_pct()
        if b is None or b < 0 or b > 100:
            return 0xFF
        return b

    def _rssi_wire(self):
        r = self.transport.rssi()
        if r is None or r < -127 or r > 127:
            return -128
        return r

    # ------------------------------------------------------------ sender ----

    async def _idle(self, ms):
        if ms < 0 or ms > IDLE_WAIT_MS:
            ms = IDLE_WAIT_MS
        if not self._wake.is_set():
            try:
                await asyncio.wait_for_ms(self._wake.wait(), ms)
            except asyncio.TimeoutError:
                pass
        self._wake.clear()

    async def sender(self):
        """Publishes due frames, most urgent first; never returns."""
        ob = self.outbox
        while True:
            self.alive = ticks_ms()
            s = self.session
            up = s.connected()
            if up != self.was_connected:
                self.was_connected = up
                self.hal.state("connected" if up else "disconnected", 0)
                if up:
                    ob.hurry()  # waiting frames go out promptly, not after a long backoff
            if not up:
                await self._idle(200)
                continue
            i, wait = ob.next_due(ticks_ms())
            if i < 0:
                await self._idle(wait)
                continue
            gen = ob.begin_send(i, self.now_ts(), self.flags())
            ok = None  # the publish never finished (the task failed or was cancelled)
            try:
                ok = await s.publish(self.up_topic, ob.frame(i), 1, False, PUBLISH_TIMEOUT_MS)
            finally:
                c = ob.end_send(i, gen, ok)  # clears BUSY, schedules the retry
            if c >= 0:
                self.hal.state("sent", c)  # its first delivery to the broker

    # ---------------------------------------------------------- downlink ----

    def on_downlink(self, topic, payload):
        """Session callback for .../down: verify, then ACK or CONFIG handling."""
        if len(payload) > codec.MAX_FRAME:
            self.log("downlink dropped: oversized (%d bytes)" % len(payload))
            return
        try:
            code, fl, dev, ctr, ts, n = codec.verify_into(payload, self.keys, self._rx)
        except codec.FrameError as e:
            self.log("downlink ignored: " + e.reason)
            return
        if dev != self.cfg.device:
            self.log("downlink ignored: addressed to another device")
            return
        if code == codec.ACK:
            rx = self._rx
            hw = struct.unpack_from(">I", rx, 3)[0]  # SPEC §8.9 high_water
            self._on_ack(ctr, ts, rx[0], rx[1], rx[2], hw, fl & codec.FLAG_CLOCK_SYNCED != 0)
        elif code == codec.CONFIG:
            self._on_config(ctr, n)
        else:
            self.log("downlink ignored: type %d" % code)

    def _remember(self, counter):
        self.recent[self._recent_i] = counter
        self._recent_i = (self._recent_i + 1) % RECENT_ACKED

    def _on_ack(self, ctr, ts, acked_type, disp, reason, hw=0, synced=True):
        ob = self.outbox
        i = ob.find(ctr, acked_type)
        if i < 0:
            if disp == _ATTENDING and acked_type == codec.ALERT and ctr in self.recent:
                # Attending after received: honoured once (SPEC §12.4).
                self.recent[self.recent.index(ctr)] = 0
                self._sync_clock(ts, synced)
                self.feedback.show("attending")
                self.hal.state("attending", ctr)
                return
            self.log("ack ignored: no frame %d of type %d waiting" % (ctr, acked_type))
            return
        self._sync_clock(ts, synced)
        if disp == _RECEIVED or disp == _ATTENDING:
            if acked_type == codec.CANCEL:
                self.hal.state("cancelled", ob.cancel_acked(i))  # the alert is retried no more
                return
            ob.remove(i)
            if acked_type == codec.TEST:
                if ctr != self.silent_test:
                    self.feedback.show("received")  # SPEC §8.10.1: the wearer feels it got through
                self.hal.state("acked", ctr)
            elif acked_type != codec.ALERT:
                self.hal.state("acked", ctr)
            elif disp == _RECEIVED:
                self._remember(ctr)
                self.feedback.show("received")
                self.hal.state("acked", ctr)
            else:
                self.feedback.show("attending")
                self.hal.state("attending", ctr)
        elif disp == _TIME_NAK:
            # Clock now set from the ACK; re-send the same counter at once, restamped.
            self.log("time-NAK for frame %d: clock set, re-sending" % ctr)
            ob.resend_now(i)
            self._wake.set()
        elif disp == _REJECTED and (reason == _REASON_REPLAY or reason == _REASON_COLLISION):
            # SPEC §12.4: resynchronise once above the C4's high-water mark
            # (one durable write), then re-send the same content under a fresh
            # counter after the normal backoff - never a tight reject loop.
            self.counters.skip_past(hw)
            c = self.counters.take()
            ob.requeue(i, self.cfg.device, c, self.now_ts(), self.flags())
            if acked_type == codec.ALERT and self.last_alert == ctr:
                self.last_alert = c
            if acked_type == codec.TEST and self.silent_test == ctr:
                self.silent_test = c
            why = "replay" if reason == _REASON_REPLAY else "collision"
            self.log("frame %d rejected (%s, C4 at %d): re-queued as %d" % (ctr, why, hw, c))
            self.hal.state("resync", c)
            self.hal.state("queued", c)
        else:
            names = codec.REJECT_REASONS
            why = names[reason] if reason < len(names) else str(reason)
            self.log(
                "frame %d (type %d) rejected by the C4: %s; not retrying" % (ctr, acked_type, why)
            )
            ob.remove(i)
            self.feedback.error()
            self.hal.state("rejected", ctr)

    def _on_config(self, seq, n):
        if seq <= self.config_seq:
            self.log("config %d ignored: not newer than %d" % (seq, self.config_seq))
            return
        try:
            fields = codec.unpack_payload(codec.CONFIG, self._rx, n)
        except codec.FrameError as e:
            self.log("config %d ignored: %s" % (seq, e.reason))
            return
        window = fields.pop("test_window_s", None)  # actions, not settings (SPEC §8.10.1)
        selftest = fields.pop("selftest", 0)  # 1: with feedback, 2: silent (scheduled)
        for k in fields:
            lim = _CONFIG_RANGES.get(k)
            if lim is not None and not (lim[0] <= fields[k] <= lim[1]):
                self.log("config %d ignored: %s out of range" % (seq, k))
                return
        cfg = self.cfg
        for k in fields:
            setattr(cfg, k, fields[k])
        self.gesture.hold_ms = cfg.hold_ms
        self.feedback.discreet = cfg.discreet
        self.config_seq = seq
        try:
            self._save_settings()
        except OSError as e:
            self.log("config %d: could not persist (%r)" % (seq, e))
        self.log("config %d applied" % seq)
        self.hb_changed.set()
        if window is not None:
            self._open_window(window)
        if selftest:
            c = self.raise_test()
            if selftest == 2:
                self.silent_test = c  # no pulses on its ACK

    def _open_window(self, seconds):
        if seconds == 0:
            if self.test_window:
                self._close_window()
            return
        if seconds > TEST_WINDOW_MAX_S:
            self.log("test window of %d s capped at %d s" % (seconds, TEST_WINDOW_MAX_S))
            seconds = TEST_WINDOW_MAX_S
        self.test_window = True
        self.test_until = ticks_add(ticks_ms(), seconds * 1000)
        self.log("test window open: %d s" % seconds)
        self.hal.state("test_window", seconds)

    # ------------------------------------------------------------- tasks ----

    async def gestures(self):
        """Turns IRQ timestamps into ALERT / CANCEL; sleeps on the IRQ flag when idle."""
        g = self.gesture
        while True:
            if not g.active():
                await self.button_flag.wait()
                self.button_flag.clear()
            ev = g.poll(ticks_ms())
            if ev == gesture_mod.ALERT:
                self.on_hold()
            elif ev == gesture_mod.LONG:
                self.on_long_hold()
            elif ev == gesture_mod.TAPS:
                self.cancel_gesture()
            if g.active():
                await asyncio.sleep_ms(gesture_mod.POLL_MS)

    def press_edge(self, level):
        """Called by the HAL's IRQ handler: timestamp only (issue 3 §4)."""
        self.gesture.edge(level, ticks_ms())
        self.button_flag.set()
