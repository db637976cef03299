"""MQTT connectivity layer: keeps one persistent-session connection alive and tracks QoS 1 publishes."""

# RAM budget (measured on the unix port, .mpy build, `make bench` -> mqtt.heap): one Session with
# its Conn is ~4 KB (rx buffer = max_packet, tx buffer 256 B, the in-flight table of at most
# _MAX_INFLIGHT entries each holding a payload copy, two tasks); TLS adds ~6 KB of mbedTLS state
# while connected. Loaded as .mpy, the bytecode of mqtt.py + session.py costs another ~17 KB of
# heap; frozen into the firmware image it costs none. The whole test runner (asyncio, json, this
# layer, connected) sits at ~37 KB under -X heapsize=64K (43 KB with TLS).
#
# Why a separate layer (the design card, DESIGN.md 4, mqtt_as): mqtt.py speaks the protocol on
# one connection; this module decides when to connect, what to re-send and when the broker is
# gone. The outbox (outbox.py) owns durability; this module only remembers unacked
# publishes for the life of the process, which is what MQTT 4.4 asks of a persistent session.

import asyncio
import os
import time

import mqtt

try:
    from micropython import const
except ImportError:

    def const(x):
        return x


# Tunables (constructor arguments override the ones named there).
_BACKOFF_MIN_MS = const(500)  # first reconnect delay; doubled per failure, jittered
_BACKOFF_MAX_MS = const(30000)  # reconnect delay cap: an alert waits at most this for a retry
_CONNECT_TIMEOUT_MS = const(10000)  # TCP connect + TLS + CONNACK, and each SUBACK
_TICK_MS = const(100)  # supervision tick: link check, ping schedule, drop detection
_MISSED_PINGS = const(2)  # broker is gone after this many PINGREQs with nothing received back
_MAX_INFLIGHT = const(6)  # unacked QoS 1 publishes remembered; the oldest orphan is evicted

# In-flight entry fields (a list per QoS 1 publish).
_E_PID = const(0)
_E_TOPIC = const(1)
_E_PAYLOAD = const(2)
_E_RETAIN = const(3)
_E_SENT = const(4)  # written at least once (the next write carries DUP, MQTT 3.3.1.1)
_E_GEN = const(5)  # connection generation it was last written on
_E_EVENT = const(6)  # asyncio.Event set on PUBACK or stop(); None for internal publishes
_E_ACKED = const(7)
_E_WAITER = const(8)  # a publish() call is waiting on it (else it is an orphan)


def _b(s):
    return s.encode() if isinstance(s, str) else s


def _bytes(s):
    """Immutable copy: the entry outlives the caller's buffer (retransmit after reconnect)."""
    if isinstance(s, str):
        return s.encode()
    return s if isinstance(s, bytes) else bytes(s)


def _der(ca):
    """PEM -> DER for the pinned CA: this MicroPython's mbedTLS parses only DER ("invalid cert")."""
    ca = _b(ca)
    i = ca.find(b"-----BEGIN")
    if i < 0:
        return ca  # already DER
    import binascii

    i = ca.find(b"\n", i) + 1
    j = ca.find(b"-----END", i)
    if i <= 0 or j < 0:
        raise ValueError("bad PEM CA certificate")
    return binascii.a2b_base64(ca[i:j].replace(b"\r", b"").replace(b"\n", b""))


def _urandom16():
    return (os.urandom(1)[0] << 8) | os.urandom(1)[0]


def _why(e):
    """One-line reason for an exception, never including secrets (we never put any in them)."""
    if isinstance(e, mqtt.MQTTError):
        return e.args[0] if e.args else "protocol error"
    if isinstance(e, OSError):
        code = e.args[0] if e.args else 0
        if isinstance(code, int):
            try:
                import errno

                name = errno.errorcode.get(code)
            except (ImportError, AttributeError):
                name = None
            if name:
                return name
            return "OSError %d" % code  # negative: an mbedTLS or resolver error code
        return "OSError " + str(code)
    if isinstance(e, asyncio.TimeoutError):
        return "timeout"
    # mbedTLS certificate errors arrive as ValueError("\nThe certificate ..."): keep one line.
    return " ".join(("%s: %s" % (type(e).__name__, e)).split())[:160]


class Session:
    """A persistent MQTT session (clean session off) with LWT, resubscribe and QoS 1 retransmit."""

    def __init__(
        self,
        client_id,
        host,
        port,
        *,
        user=None,
        password=None,
        keepalive=60,
        ssl_ca=None,
        server_hostname=None,
        will_topic=None,
        will_msg=b"offline",
        online_topic=None,
        subscriptions=(),
        on_message=None,
        link_up=None,
        log=None,
        max_packet=256,
        rand=None,
        on_state=None,
        backoff_min_ms=_BACKOFF_MIN_MS,
        backoff_max_ms=_BACKOFF_MAX_MS,
        connect_timeout_ms=_CONNECT_TIMEOUT_MS,
        tcp_nodelay=True,
        dial=None,
    ):
        self.client_id = _b(client_id)
        self.host = host
        self.port = port
        self._user = user
        self._password = password
        self.keepalive = keepalive
        self._ssl_ca = ssl_ca
        self._ssl_ctx = None  # built on first TLS connect, then reused (parsing the CA costs RAM)
        self.server_hostname = server_hostname
        self.will_topic = _b(will_topic) if will_topic else None
        self.will_msg = _b(will_msg)
        self.online_topic = _b(online_topic) if online_topic else None
        self.subscriptions = [_b(t) for t in subscriptions]
        self.on_message = on_message
        self.link_up = link_up
        self._log = log
        self.rand = rand or _urandom16
        self.on_state = on_state  # optional callable(bool) on connect / disconnect
        self.backoff_min_ms = backoff_min_ms
        self.backoff_max_ms = backoff_max_ms
        self.connect_timeout_ms = connect_timeout_ms
        self.tcp_nodelay = tcp_nodelay  # False only in the bench that shows why it is True
        self.dial = dial  # the transport's socket factory (a modem's TCP socket), None = system
        self.on_first_byte = None  # latency probe, called right before a PUBLISH's first byte

        self._conn = mqtt.Conn(max_packet)
        self._inflight = []
        self._pid = 0
        self._gen = 0
        self._up = False
        self._stop = False
        self._dead = None  # reason the current connection must be dropped, or None
        self._pings_out = 0
        self._suback = None  # SUBACK return codes (bytes) of the current connection
        self._suback_pid = 0
        self._suback_ev = asyncio.Event()
        self._reader = None
        self._announced = False  # on_state(True) was reported for the current connection

        # Counters for tests and heartbeats.
        self.connects = 0  # successful CONNACKs
        self.reconnects = 0  # successful connects after the first
        self.drops = 0  # established connections lost
        self.pings = 0  # PINGREQs sent
        self.evicted = 0  # orphaned in-flight publishes dropped because the table was full
        self.bad_packets = 0  # garbage / oversized / protocol errors from the broker side
        self.last_error = None  # one-line reason of the last failure

    # --- public API ---------------------------------------------------------------------------

    def connected(self):
        return self._up

    def stop(self):
        """Close the socket and make run() return; waiting publish() calls return False."""
        self._stop = True
        self._kill("stopped")
        self._conn.close()
        for e in self._inflight:
            if e[_E_EVENT] is not None:
                e[_E_EVENT].set()

    async def publish(self, topic, payload, qos=1, retain=False, timeout_ms=5000):
        """Publish; True once PUBACKed (QoS 1) or written (QoS 0), False on timeout or link loss.

        A QoS 1 publish made while disconnected waits (up to timeout_ms) for the connection;
        one interrupted by a broker drop is re-sent with DUP after the reconnect, same packet id.
        The transport link going down (link_up() false) ends the wait at once with False.
        If it times out after being written, it stays remembered: a retry with the same topic
        and payload reuses its packet id with DUP set; otherwise it is still re-sent after the
        next reconnect until acked or evicted (_MAX_INFLIGHT).
        """
        if self._stop or not self._link():
            return False
        if qos == 0:
            if not self._up:
                return False
            try:
                await self._conn.publish(
                    _b(topic), _b(payload), 0, retain, False, 0, self.on_first_byte
                )
                return True
            except Exception as ex:
                self._kill(_why(ex))
                return False
        topic = _bytes(topic)
        payload = _bytes(payload)
        e = self._adopt(topic, payload, retain)
        if e is not None:
            if self._up:
                await self._write_entry(e)  # a retry: same packet id, DUP set
        else:
            e = self._new_entry(topic, payload, retain, True)
            if e is None:
                self.last_error = "too many unacked publishes"
                return False
            if self._up:
                await self._write_entry(e)
        try:
            await asyncio.wait_for_ms(e[_E_EVENT].wait(), timeout_ms)
        except asyncio.TimeoutError:
            pass
        if e[_E_ACKED]:
            return True
        e[_E_WAITER] = False
        if not e[_E_SENT] or self._stop:
            self._forget(e)  # never on the wire: nothing to deduplicate, the caller retries
        return False

    async def run(self):
        """Forever: connect, resubscribe, re-send, serve, reconnect with backoff. Never raises."""
        fails = 0
        while not self._stop:
            if not self._link():
                await asyncio.sleep_ms(_TICK_MS)
                continue
            try:
                await self._connect()
                fails = 0
                await self._serve()
            except asyncio.CancelledError:
                self._teardown()
                raise
            except Exception as ex:  # noqa: BLE001 - the session task must never die
                self._kill(_why(ex))
            was_up = self._announced
            reason = self._dead or "connection lost"
            self._teardown()
            if self._stop:
                break
            fails += 1
            delay = self._delay(fails)
            self.last_error = reason
            if was_up:
                self.drops += 1
                self.log("mqtt: connection lost (%s); reconnecting in %d ms" % (reason, delay))
            else:
                self.log(
                    "mqtt: connect to %s:%d failed (%s); retry in %d ms"
                    % (self.host, self.port, reason, delay)
                )
            await self._sleep(delay)
        self._teardown()

    # --- connection lifecycle -----------------------------------------------------------------

    def log(self, msg):
        if self._log is not None:
            try:
                self._log(msg)
            except Exception:  # noqa: BLE001 - a broken logger must not take the session down
                pass

    def _link(self):
        if self.link_up is None:
            return True
        try:
            return bool(self.link_up())
        except Exception:  # noqa: BLE001
            return False

    def _kill(self, reason):
        """Mark the current connection dead (first reason wins); run() tears it down."""
        if self._dead is None:
            self._dead = reason
        self._up = False

    def _delay(self, fails):
        """Capped exponential backoff with 'equal jitter': half fixed, half random."""
        d = self.backoff_min_ms << (fails - 1 if fails < 16 else 15)
        if d > self.backoff_max_ms:
            d = self.backoff_max_ms
        half = d >> 1
        return half + (self.rand() % (half + 1))

    async def _sleep(self, ms):
        t0 = time.ticks_ms()
        while not self._stop and time.ticks_diff(time.ticks_ms(), t0) < ms:
            await asyncio.sleep_ms(_TICK_MS)

    def _context(self):
        if self._ssl_ca is None:
            return None
        if self._ssl_ctx is None:
            import ssl

            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.verify_mode = ssl.CERT_REQUIRED  # the pinned CA, nothing else
            ctx.load_verify_locations(cadata=_der(self._ssl_ca))  # first certificate only
            self._ssl_ctx = ctx
        return self._ssl_ctx

    async def _connect(self):
        self._dead = None
        self._pings_out = 0
        conn = self._conn
        await conn.open(
            self.host,
            self.port,
            self._context(),
            self.server_hostname,
            self.connect_timeout_ms,
            self.tcp_nodelay,
            self.dial,
        )
        present = await conn.connect(
            self.client_id,
            self.keepalive,
            self._user,
            self._password,
            self.will_topic,
            self.will_msg,
            False,  # clean session off: queued downlinks survive our absence (MQTT 3.1.2.4)
            self.connect_timeout_ms,
        )
        self.connects += 1
        if self.connects > 1:
            self.reconnects += 1
        self._gen += 1
        self._reader = asyncio.create_task(self._read_loop(self._gen))
        # Always resubscribe: cheap, and covers a broker that lost our session (present == 0).
        if self.subscriptions:
            await self._subscribe()
        # Re-send what the last connection left unacked, oldest first (alerts were queued first),
        # until a pass finds nothing new (publish() calls may add entries while we yield).
        again = True
        while again:
            again = False
            for e in self._inflight:
                if e[_E_GEN] != self._gen and not self._dead:
                    await self._write_entry(e)
                    again = True
                    break
        if self._dead:
            raise mqtt.MQTTError(self._dead)
        self._up = True
        if present == 0 and self.connects > 1:
            self.log("mqtt: broker had no session for us (downlinks queued meanwhile are lost)")
        self._state(True)
        if self.online_topic is not None:
            for e in self._inflight:
                if e[_E_TOPIC] == self.online_topic:
                    break
            else:
                e = self._new_entry(self.online_topic, b"online", True, False)
                if e is not None:
                    await self._write_entry(e)

    async def _subscribe(self):
        self._suback = None
        self._suback_ev.clear()
        self._suback_pid = self._next_pid()
        await self._conn.subscribe(self._suback_pid, self.subscriptions, 1)
        await asyncio.wait_for_ms(self._suback_ev.wait(), self.connect_timeout_ms)
        codes = self._suback
        if codes is not None and 0x80 in codes:  # 0x80: failure (MQTT 3.9.3), e.g. an ACL
            self.last_error = "subscription refused"
            self.log("mqtt: broker refused a subscription (check the ACL for this device)")

    async def _serve(self):
        """Supervise the live connection: link state, keepalive pings, drop detection."""
        ka_ms = self.keepalive * 1000
        every = ka_ms // 4 if ka_ms else 0  # PINGREQ every keepalive/4 (mqtt_as practice)
        last = time.ticks_ms()
        while True:
            if self._stop or self._dead:
                return
            if not self._link():
                self._kill("link down")
                for e in self._inflight:  # waiting publish() calls return False now
                    if e[_E_WAITER]:
                        e[_E_EVENT].set()
                return
            if every and time.ticks_diff(time.ticks_ms(), last) >= every:
                if self._pings_out >= _MISSED_PINGS:
                    self._kill("broker silent, %d pings unanswered" % self._pings_out)
                    return
                last = time.ticks_ms()
                self._pings_out += 1
                self.pings += 1
                try:
                    await self._conn.ping()
                except Exception as ex:  # noqa: BLE001
                    self._kill(_why(ex))
                    return
            await asyncio.sleep_ms(_TICK_MS if not every or every > _TICK_MS else every)

    def _teardown(self):
        self._up = False
        r = self._reader
        self._reader = None
        if r is not None:
            try:
                r.cancel()
            except Exception:  # noqa: BLE001 - already finished
                pass
        self._conn.close()
        if self._announced:
            self._state(False)

    def _state(self, up):
        self._announced = up
        if self.on_state is not None:
            try:
                self.on_state(up)
            except Exception as ex:  # noqa: BLE001
                self.log("mqtt: on_state callback failed: " + _why(ex))

    # --- reader -------------------------------------------------------------------------------

    async def _read_loop(self, gen):
        conn = self._conn
        try:
            while gen == self._gen and not self._dead:
                first, n = await conn.read_packet()
                self._pings_out = 0  # anything from the broker proves it is alive
                kind = first & 0xF0
                if first == mqtt.OVERSIZED:
                    self.bad_packets += 1
                    self.log(
                        "mqtt: dropped an oversized downlink (%d > %d bytes)" % (n, conn.max_packet)
                    )
                    if conn.rx_pid:
                        await conn.puback(conn.rx_pid)  # acked, so never redelivered
                elif kind == 0x30:  # PUBLISH
                    await self._on_publish(first, n)
                elif kind == 0x40:  # PUBACK
                    if n != 2:
                        raise mqtt.MQTTError("garbage on the socket (bad PUBACK)")
                    self._on_puback((conn.rx[0] << 8) | conn.rx[1])
                elif kind == 0x90:  # SUBACK
                    if n < 3:
                        raise mqtt.MQTTError("garbage on the socket (bad SUBACK)")
                    if ((conn.rx[0] << 8) | conn.rx[1]) == self._suback_pid:
                        self._suback = bytes(conn.rxv[2:n])
                        self._suback_ev.set()
                elif kind == 0x20:  # CONNACK twice is a protocol violation
                    raise mqtt.MQTTError("garbage on the socket (unexpected CONNACK)")
                # PINGRESP and UNSUBACK need nothing beyond proving liveness.
        except asyncio.CancelledError:
            pass
        except Exception as ex:  # noqa: BLE001
            if gen == self._gen and not self._stop:
                if isinstance(ex, mqtt.MQTTError) and not ex.args[0].startswith("connection"):
                    self.bad_packets += 1
                self._kill(_why(ex))

    async def _on_publish(self, first, n):
        topic, payload, qos, pid = self._conn.parse_publish(first, n)
        if self.on_message is not None:
            try:
                self.on_message(topic, payload)
            except Exception as ex:  # noqa: BLE001 - the app's bug must not drop the link
                self.log("mqtt: on_message failed: " + _why(ex))
        if qos:
            # Acked after the callback took it over; a crash before this means redelivery.
            await self._conn.puback(pid)

    def _on_puback(self, pid):
        for e in self._inflight:
            if e[_E_PID] == pid:
                e[_E_ACKED] = True
                self._forget(e)
                if e[_E_EVENT] is not None:
                    e[_E_EVENT].set()
                return
        # A PUBACK for something we no longer track (evicted orphan): nothing to do.

    # --- in-flight table ----------------------------------------------------------------------

    def _next_pid(self):
        while True:
            self._pid = self._pid % 65535 + 1  # 1..65535; 0 is not a valid packet id
            for e in self._inflight:
                if e[_E_PID] == self._pid:
                    break
            else:
                return self._pid

    def _new_entry(self, topic, payload, retain, waiter):
        if len(self._inflight) >= _MAX_INFLIGHT:
            for e in self._inflight:  # oldest orphan first: a live caller outranks it
                if not e[_E_WAITER]:
                    self._forget(e)
                    self.evicted += 1
                    break
            else:
                return None
        e = [
            self._next_pid(),
            topic,
            payload,
            retain,
            False,
            0,
            asyncio.Event() if waiter else None,
            False,
            waiter,
        ]
        self._inflight.append(e)
        return e

    def _adopt(self, topic, payload, retain):
        """A caller retrying an orphaned publish gets its packet id back, so it goes out as DUP."""
        for e in self._inflight:
            if (
                not e[_E_WAITER]
                and e[_E_EVENT] is not None
                and e[_E_TOPIC] == topic
                and e[_E_RETAIN] == retain
                and e[_E_PAYLOAD] == payload
            ):
                e[_E_WAITER] = True
                e[_E_EVENT].clear()
                return e
        return None

    def _forget(self, e):
        try:
            self._inflight.remove(e)
        except ValueError:
            pass

    async def _write_entry(self, e):
        dup = e[_E_SENT]
        e[_E_SENT] = True  # from the first byte on, the broker may have it
        e[_E_GEN] = self._gen
        try:
            await self._conn.publish(
                e[_E_TOPIC], e[_E_PAYLOAD], 1, e[_E_RETAIN], dup, e[_E_PID], self.on_first_byte
            )
        except Exception as ex:  # noqa: BLE001
            self._kill(_why(ex))
