"""MQTT 3.1.1 protocol layer: one broker connection, packets built and parsed in preallocated buffers."""

# RAM budget (per Conn, measured): ~1.8 KB: rx buffer = max_packet bytes (256 for downlinks),
# tx buffer 256 bytes, the stream and the write lock. TLS adds ~6 KB of mbedTLS state.
# Bytecode: ~7 KB of heap when loaded as .mpy, none when frozen.
#
# This module knows nothing about reconnecting, keepalive timing or packet-id bookkeeping: that is
# the connectivity layer (session.py). Every failure here raises MQTTError (protocol/peer problems,
# one-line reason), OSError (socket problems) or ValueError (mbedTLS certificate checks); the
# caller drops the connection and reconnects. One exception: an oversized PUBLISH is read, skipped
# and reported as OVERSIZED, because dropping the connection would only get it redelivered.
# Wire format references are to the MQTT 3.1.1 OASIS standard, "MQTT" section numbers.

import asyncio
import select
import socket
import struct
import time

try:
    from micropython import const
except ImportError:  # CPython (host-side tooling may import this module)

    def const(x):
        return x


# Control packet first bytes (MQTT 2.2).
_CONNECT = const(0x10)  # 0x10: CONNECT
_CONNACK = const(0x20)  # 0x20: CONNACK
_PUBLISH = const(0x30)  # 0x30: PUBLISH (low nibble = DUP, QoS x2, RETAIN)
_PUBACK = const(0x40)  # 0x40: PUBACK
_SUBSCRIBE = const(0x82)  # 0x82: SUBSCRIBE (reserved flags must be 0b0010, MQTT 3.8.1)
_SUBACK = const(0x90)  # 0x90: SUBACK
_UNSUBACK = const(0xB0)  # 0xB0: UNSUBACK
_PINGREQ = const(0xC0)  # 0xC0: PINGREQ
_PINGRESP = const(0xD0)  # 0xD0: PINGRESP

# Tunables.
_TX_SIZE = const(256)  # tx buffer; larger packets are written in two parts, never truncated
_WRITE_POLL_MS = const(2)  # retry interval when the socket (or a TLS handshake) says EAGAIN
_CONNECT_POLL_MS = const(5)  # poll interval while a non-blocking TCP connect completes
_WRITE_TIMEOUT_MS = const(10000)  # a write stalled this long means the peer is gone
_SKIP_MAX = const(65536)  # an oversized PUBLISH up to this is read and discarded; beyond, drop

OVERSIZED = const(0)  # read_packet()'s first byte for an oversized PUBLISH it skipped

# CONNACK return codes (MQTT 3.2.2.3), for one-line logs.
_REFUSED = (
    "accepted",
    "unacceptable protocol version",
    "identifier rejected",
    "server unavailable",
    "bad user name or password",
    "not authorized",
)


class MQTTError(Exception):
    """The broker (or something pretending to be one) broke the protocol; args[0] is one line."""


def _b(s):
    """str -> bytes; bytes stay as they are (no copy)."""
    return s.encode() if isinstance(s, str) else s


def _put_len(buf, i, n):
    """Write the MQTT remaining-length varint (MQTT 2.2.3) at buf[i]; return the next index."""
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            buf[i] = b | 0x80
            i += 1
        else:
            buf[i] = b
            return i + 1


def _put_str(buf, i, s):
    """Write a UTF-8 string with its 16-bit length prefix (MQTT 1.5.3); return the next index."""
    n = len(s)
    struct.pack_into("!H", buf, i, n)
    buf[i + 2 : i + 2 + n] = s
    return i + 2 + n


def _valid_first(b):
    """Is b a first byte a broker may send to a client that subscribes at QoS <= 1?"""
    if b & 0xF0 == _PUBLISH:
        return b & 0x06 != 0x06 and b & 0x06 != 0x04  # QoS 3 is malformed, QoS 2 never asked
    return b == _CONNACK or b == _PUBACK or b == _SUBACK or b == _UNSUBACK or b == _PINGRESP


class Conn:
    """One TCP (or TLS) connection to a broker, with allocation-light packet I/O."""

    def __init__(self, max_packet=256):
        self.max_packet = max_packet  # largest incoming remaining length accepted (downlinks)
        self.rx = bytearray(max_packet if max_packet > 4 else 4)
        self.rxv = memoryview(self.rx)
        self.tx = bytearray(_TX_SIZE)
        self.txv = memoryview(self.tx)
        self.sock = None
        self.reader = None
        self.rx_pid = 0  # packet id of the last oversized PUBLISH skipped (0 = QoS 0)
        self.lock = asyncio.Lock()  # one packet at a time on the wire (reader, publishers, pinger)

    # --- connection ---------------------------------------------------------------------------

    async def open(
        self,
        host,
        port,
        ssl_ctx=None,
        server_hostname=None,
        timeout_ms=10000,
        nodelay=True,
        dial=None,
    ):
        """Open the TCP connection (non-blocking connect), then wrap it in TLS if asked.

        dial: optional coroutine function (host, port, timeout_ms) -> a connected,
        non-blocking, pollable stream or None; a modem's own TCP socket (issue 12).
        """
        self.close()
        sock = await dial(host, port, timeout_ms) if dial is not None else None
        if sock is None:
            sock = await self._tcp(host, port, timeout_ms, nodelay)
        self.sock = sock
        if ssl_ctx is not None:
            # The handshake runs inside the first writes/reads (non-blocking), so it never
            # stalls other tasks; a bad certificate surfaces as ValueError from the CONNECT write.
            sock = ssl_ctx.wrap_socket(
                sock, server_hostname=server_hostname or host, do_handshake_on_connect=False
            )
            self.sock = sock
        self.reader = asyncio.StreamReader(sock)

    async def _tcp(self, host, port, timeout_ms, nodelay):
        # Name resolution blocks (no async resolver on MicroPython); an IP literal costs nothing.
        addr = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)[0][-1]
        sock = socket.socket()
        self.sock = sock
        if nodelay:  # off only for the bench that shows why it is on
            try:
                # 6 = IPPROTO_TCP, 1 = TCP_NODELAY: the unix port lacks the names. Nagle plus
                # delayed ACK costs ~88 ms per QoS1 round trip (DESIGN.md 3, NOTES.md MQTT).
                sock.setsockopt(6, 1, 1)
            except (OSError, AttributeError):
                pass  # a port without it still works, only slower
        sock.setblocking(False)
        try:
            sock.connect(addr)
        except OSError as e:
            if e.args[0] not in (115, 119):  # EINPROGRESS on Linux (115) / lwIP (119)
                raise
        poller = select.poll()
        poller.register(sock, select.POLLOUT)
        t0 = time.ticks_ms()
        while True:
            ev = poller.poll(0)
            if ev:
                if ev[0][1] & (select.POLLERR | select.POLLHUP):
                    raise OSError(111)  # ECONNREFUSED: nothing listening
                break
            if time.ticks_diff(time.ticks_ms(), t0) > timeout_ms:
                raise OSError(110)  # ETIMEDOUT
            await asyncio.sleep_ms(_CONNECT_POLL_MS)
        return sock

    def close(self):
        """Close the socket; safe to call twice. Never sends DISCONNECT, so the LWT fires."""
        s = self.sock
        self.sock = None
        self.reader = None
        if s is not None:
            try:
                s.close()
            except OSError:
                pass

    # --- writing ------------------------------------------------------------------------------

    async def _send(self, mv, n):
        """Write mv[:n] completely from a non-blocking socket, waiting out EAGAIN."""
        off = 0
        t0 = time.ticks_ms()
        while off < n:
            s = self.sock
            if s is None:
                raise OSError(9)  # EBADF: closed under us (stop() or a drop)
            k = s.write(mv[off:n] if off else mv[:n])
            if k:
                off += k
                continue
            if time.ticks_diff(time.ticks_ms(), t0) > _WRITE_TIMEOUT_MS:
                raise MQTTError("write stalled for %d ms" % _WRITE_TIMEOUT_MS)
            await asyncio.sleep_ms(_WRITE_POLL_MS)

    async def connect(
        self,
        client_id,
        keepalive,
        user=None,
        password=None,
        will_topic=None,
        will_msg=None,
        clean=False,
        timeout_ms=10000,
    ):
        """Send CONNECT (MQTT 3.1) and wait for CONNACK; return the session-present flag."""
        client_id = _b(client_id)
        flags = 0x02 if clean else 0  # bit 1: clean session
        rem = 10 + 2 + len(client_id)  # variable header (3.1.2) + client id
        if will_topic:
            will_topic = _b(will_topic)
            will_msg = _b(will_msg or b"")
            flags |= 0x04 | 0x08 | 0x20  # will flag, will QoS 1 (bits 4-3 = 01), will retain
            rem += 4 + len(will_topic) + len(will_msg)
        if user is not None:
            user = _b(user)
            flags |= 0x80  # user name flag
            rem += 2 + len(user)
            if password is not None:
                password = _b(password)
                flags |= 0x40  # password flag (only with a user name, MQTT 3.1.2.9)
                rem += 2 + len(password)
        total = rem + 5
        buf = self.tx if total <= _TX_SIZE else bytearray(total)  # rare: long credentials
        buf[0] = _CONNECT
        i = _put_len(buf, 1, rem)
        i = _put_str(buf, i, b"MQTT")
        struct.pack_into("!BBH", buf, i, 4, flags, keepalive)  # level 4 = MQTT 3.1.1
        i = _put_str(buf, i + 4, client_id)
        if will_topic:
            i = _put_str(buf, i, will_topic)
            i = _put_str(buf, i, will_msg)
        if flags & 0x80:
            i = _put_str(buf, i, user)
        if flags & 0x40:
            i = _put_str(buf, i, password)
        async with self.lock:
            await self._send(memoryview(buf), i)
        first, n = await asyncio.wait_for_ms(self.read_packet(), timeout_ms)
        if first != _CONNACK or n != 2:
            raise MQTTError("expected CONNACK, got packet 0x%02x" % first)
        rc = self.rx[1]
        if rc:
            why = _REFUSED[rc] if rc < len(_REFUSED) else "code %d" % rc
            raise MQTTError("broker refused the connection: " + why)
        return self.rx[0] & 1

    async def publish(self, topic, payload, qos=0, retain=False, dup=False, pid=0, hook=None):
        """Write one PUBLISH (MQTT 3.3). topic/payload are bytes-like; pid is used when qos=1."""
        tl = len(topic)
        pl = len(payload)
        rem = 2 + tl + pl + (2 if qos else 0)
        async with self.lock:
            tx = self.tx
            tx[0] = _PUBLISH | (0x08 if dup else 0) | (qos << 1) | (1 if retain else 0)
            i = _put_len(tx, 1, rem)
            head = i + 2 + tl + (2 if qos else 0)
            if head > _TX_SIZE:
                raise MQTTError("topic too long")
            i = _put_str(tx, i, topic)
            if qos:
                struct.pack_into("!H", tx, i, pid)
                i += 2
            if hook is not None:
                try:
                    hook()  # latency probe: the first byte of this PUBLISH goes out next
                except Exception:  # noqa: BLE001 - a probe must never cost a publish
                    pass
            if i + pl <= _TX_SIZE:
                self.txv[i : i + pl] = payload
                await self._send(self.txv, i + pl)  # one write -> one segment with NODELAY
            else:
                await self._send(self.txv, i)
                await self._send(memoryview(payload), pl)

    async def subscribe(self, pid, topics, qos=1):
        """Write one SUBSCRIBE (MQTT 3.8) for all topics at the same QoS."""
        rem = 2
        for t in topics:
            rem += 3 + len(t)
        total = rem + 5
        async with self.lock:
            buf = self.tx if total <= _TX_SIZE else bytearray(total)
            buf[0] = _SUBSCRIBE
            i = _put_len(buf, 1, rem)
            struct.pack_into("!H", buf, i, pid)
            i += 2
            for t in topics:
                i = _put_str(buf, i, t)
                buf[i] = qos
                i += 1
            await self._send(memoryview(buf), i)

    async def puback(self, pid):
        """Write PUBACK (MQTT 3.4) for an incoming QoS 1 PUBLISH."""
        async with self.lock:
            struct.pack_into("!BBH", self.tx, 0, _PUBACK, 2, pid)
            await self._send(self.txv, 4)

    async def ping(self):
        """Write PINGREQ (MQTT 3.12)."""
        async with self.lock:
            self.tx[0] = _PINGREQ
            self.tx[1] = 0
            await self._send(self.txv, 2)

    # --- reading ------------------------------------------------------------------------------

    async def _read_exact(self, n):
        """Read exactly n bytes into rx[:n]."""
        off = 0
        rxv = self.rxv
        while off < n:
            r = self.reader
            if r is None:
                raise OSError(9)  # EBADF: closed under us
            k = await r.readinto(rxv[off:n])
            if k is None:
                continue  # TLS record not complete yet
            if not k:
                raise MQTTError("connection closed by the broker")
            off += k

    async def read_packet(self):
        """Read one packet; return (first_byte, n) with its body in self.rx[:n]."""
        await self._read_exact(1)
        first = self.rx[0]
        if not _valid_first(first):
            raise MQTTError("garbage on the socket (first byte 0x%02x)" % first)
        n = 0
        shift = 0
        while True:
            await self._read_exact(1)
            b = self.rx[0]
            n |= (b & 0x7F) << shift
            if not b & 0x80:
                break
            shift += 7
            if shift > 21:  # at most 4 length bytes (MQTT 2.2.3)
                raise MQTTError("garbage on the socket (bad remaining length)")
        if n > self.max_packet:
            if first & 0xF0 != _PUBLISH or n > _SKIP_MAX:
                raise MQTTError("oversized packet (%d > %d bytes)" % (n, self.max_packet))
            # An oversized PUBLISH is read to its end and discarded, not fatal: with a persistent
            # session the broker would redeliver it after every reconnect, forever (poison
            # message). The caller PUBACKs rx_pid so the broker forgets it.
            await self._skip_publish(first, n)
            return OVERSIZED, n
        if n:
            await self._read_exact(n)
        return first, n

    async def _skip_publish(self, first, n):
        """Consume an oversized PUBLISH body; leave its packet id (0 for QoS 0) in rx_pid."""
        await self._read_exact(2)
        tl = (self.rx[0] << 8) | self.rx[1]
        qos = first & 0x06
        rest = n - 2 - tl - (2 if qos else 0)
        if rest < 0:
            raise MQTTError("garbage on the socket (short PUBLISH)")
        await self._discard(tl)  # the topic
        pid = 0
        if qos:
            await self._read_exact(2)
            pid = (self.rx[0] << 8) | self.rx[1]
        await self._discard(rest)  # the payload
        self.rx_pid = pid

    async def _discard(self, n):
        """Read and drop n bytes, a buffer at a time."""
        chunk = len(self.rx)
        while n:
            k = n if n < chunk else chunk
            await self._read_exact(k)
            n -= k

    def parse_publish(self, first, n):
        """Split a PUBLISH body in rx[:n] into (topic bytes, payload bytes, qos, pid)."""
        rx = self.rx
        if n < 2:
            raise MQTTError("garbage on the socket (short PUBLISH)")
        tl = (rx[0] << 8) | rx[1]
        qos = (first >> 1) & 3
        i = 2 + tl
        pid = 0
        if qos:
            if i + 2 > n:
                raise MQTTError("garbage on the socket (short PUBLISH)")
            pid = (rx[i] << 8) | rx[i + 1]
            i += 2
        elif i > n:
            raise MQTTError("garbage on the socket (short PUBLISH)")
        return bytes(self.rxv[2 : 2 + tl]), bytes(self.rxv[i:n]), qos, pid
