# Persistent outbox: encoded uplink frames waiting for delivery, on flash (SPEC §12.3-12.4).
#
# The outbox owns its frames: queue (add), pick the next due (next_due), send
# (begin_send/end_send: restamp, count the attempt, BUSY while the publish is
# in flight, then the backoff), re-encode under a fresh counter (requeue), and
# the SMS fallback's restamped copy. The device and the transport speak to it
# in those terms and never touch the slot arrays.
#
# Slots are preallocated (one MAX_FRAME bytearray each) so queuing an alert
# allocates no frame buffer. The file is rewritten whole on every add/remove:
# temp file, then rename (atomic on LittleFS/POSIX), so a power cut leaves the
# old or the new outbox. Records are self-verifying (each frame carries its
# HMAC tag), so a damaged file is salvaged frame by frame.
#
# File: b"AXOB" ver(1) hw(u32) count(u8) { meta(u8) len(u8) frame }* crc32(u32)
# RAM budget: slots x ~110 B (96-byte frame + metadata arrays + one memoryview)
# ~1.4 KB for 12 slots; sending, retrying and restamping allocate nothing but
# the frame's memoryview slice and the RNG's 4 bytes.

import os
import struct
from array import array
from binascii import crc32
from time import ticks_add, ticks_diff

import auxcodec as codec

try:
    from micropython import const
except ImportError:  # CPython (tools that read the outbox file)

    def const(x):
        return x


_MAGIC = b"AXOB"
_VERSION = 1
_HDR = ">4sBIB"  # magic, version, high-water counter, record count
_HDR_LEN = 10
# Record meta bit 0: the frame was published at least once. Written for the file
# format; on load every recovered frame counts as sent anyway, since it may have
# gone out just before the reset (its next transmission is a retransmission).
_META_SENT = const(0x01)

# Delivery priority: alerts go ahead of all other traffic (issue 3 §5).
# Indexed by the SPEC §4 type code 0x01-0x08 (a bytes table: smaller than a dict).
#        -   ALERT CANCEL HEARTBEAT TAMPER POWER LOW_BAT TEST BOOT
_PRIO = b"\x09\x00\x01\x04\x02\x02\x02\x02\x03"
_PRIO_HB = const(4)  # HEARTBEAT: the first to go when the outbox is full
_PRIO_NONE = const(9)  # a type outside the table: last


def _prio(code):
    return _PRIO[code] if code < len(_PRIO) else _PRIO_NONE


def type_flags(code):
    """Header flags a frame type always carries: encrypted (§5) and, for TEST, test (§8.7)."""
    if code == codec.TEST:
        return codec.FLAG_ENCRYPTED | codec.FLAG_TEST
    if code == codec.ALERT:
        return codec.FLAG_ENCRYPTED
    return 0


# A slot is an int index into parallel arrays (no per-record objects: on the
# 64-bit unix port an object per slot cost ~370 B, the arrays ~110 B).
_USED = const(0x01)
_SENT = const(0x02)  # published at least once: the next transmission is a retransmission
_BUSY = const(0x04)  # the sender is publishing it right now: do not reuse the slot
_MAX_SHIFT = const(16)  # backoff doubling stops here (the cap applies long before)
_NONE = const(0)  # waiting(): no such frame (counters handed out start at 1, SPEC §12.1)


class Outbox:
    """Bounded, persistent, priority-ordered store of frames awaiting delivery."""

    def __init__(self, path, slots, keys, log, ticks_ms, retry_base_ms, retry_cap_ms):
        self.path = path
        self.keys = keys
        self.log = log
        self.ticks_ms = ticks_ms
        self.retry_base_ms = retry_base_ms  # first retry after this (config tunables)
        self.retry_cap_ms = retry_cap_ms  # backoff cap
        self.slots = slots
        f = codec.MAX_FRAME
        self.frames = bytearray(slots * f)
        mv = memoryview(self.frames)
        self.views = [mv[i * f : (i + 1) * f] for i in range(slots)]  # one per slot, made once
        self.n = bytearray(slots)
        self.code = bytearray(slots)
        self.attempts = bytearray(slots)  # saturates at 255
        self.flags = bytearray(slots)
        self.prio = bytearray(slots)
        self.counter = array("I", bytes(4 * slots))
        self.due = array("i", bytes(4 * slots))  # ticks_ms of the next transmission
        self.gen = array("H", bytes(2 * slots))  # bumped on reuse: a sender can tell
        self.hw = 0  # highest counter ever queued (a floor for the counter store)
        self.dropped = 0  # frames discarded because the outbox was full
        self._hdr = bytearray(_HDR_LEN)
        self._meta = bytearray(2)
        self._scratch = bytearray(codec.MAX_PAYLOAD)

    # ----------------------------------------------------------- queries ----

    def depth(self):
        n = 0
        for fl in self.flags:
            if fl & _USED:
                n += 1
        return n

    def find(self, counter, code):
        """Slot index of the waiting frame (counter, code), or -1."""
        for i in range(self.slots):
            if self.flags[i] & _USED and self.counter[i] == counter and self.code[i] == code:
                return i
        return -1

    def frame(self, i):
        return self.views[i][: self.n[i]]

    def waiting(self, code, i):
        """The counter of slot i's frame if it is of type code and waits for its ACK, else 0."""
        if self.flags[i] & _USED and self.code[i] == code:
            return self.counter[i]
        return _NONE

    def next_due(self, now):
        """(slot, 0) for the most urgent due frame, else (-1, ms until the next one or -1)."""
        best = -1
        wait = -1
        for i in range(self.slots):
            fl = self.flags[i]
            if not fl & _USED or fl & _BUSY:
                continue
            d = ticks_diff(self.due[i], now)
            if d <= 0:
                if (
                    best < 0
                    or self.prio[i] < self.prio[best]
                    or (self.prio[i] == self.prio[best] and self.counter[i] < self.counter[best])
                ):
                    best = i
            elif wait < 0 or d < wait:
                wait = d
        if best >= 0:
            return best, 0
        return -1, wait

    # ---------------------------------------------------------- mutation ----

    def _free_slot(self, code):
        for i in range(self.slots):
            if not self.flags[i] & (_USED | _BUSY):
                return i
        # Full: drop the oldest heartbeat first (issue 3 §5).
        victim = self._oldest(_PRIO_HB, _PRIO_HB)
        if victim < 0 and _prio(code) <= 1:
            # An alert/cancel never waits behind housekeeping frames: drop the
            # oldest status frame (BOOT, POWER...), never another alert.
            victim = self._oldest(2, 3)
        if victim < 0:
            return -1
        self.dropped += 1
        self.log(
            "outbox full: dropped frame %d (type %d)" % (self.counter[victim], self.code[victim])
        )
        self.flags[victim] = 0
        return victim

    def _oldest(self, lo, hi):
        best = -1
        for i in range(self.slots):
            fl = self.flags[i]
            if not fl & _USED or fl & _BUSY:
                continue
            if lo <= self.prio[i] <= hi and (best < 0 or self.counter[i] < self.counter[best]):
                best = i
        return best

    def add(self, code, flags, device, counter, ts, payload, persist=True):
        """Encode a new frame into a free slot and persist; -1 when it cannot be queued."""
        i = self._free_slot(code)
        if i < 0:
            self.dropped += 1
            self.log("outbox full of alerts: frame %d (type %d) not queued" % (counter, code))
            return -1
        self.n[i] = codec.encode_into(
            self.views[i], self.keys, code, flags, device, counter, ts, payload
        )
        self._fill(i, code, counter, 0)
        if counter > self.hw:
            self.hw = counter
        if persist:
            self.save()
        return i

    def save(self):
        """persist(), but a failing flash only costs durability: the frame stays queued in RAM."""
        try:
            self.persist()
        except OSError as e:
            self.log("outbox not persisted (%r): flash failing" % e)

    def _fill(self, i, code, counter, sent):
        self.flags[i] = _USED | sent
        self.gen[i] = (self.gen[i] + 1) & 0xFFFF
        self.code[i] = code
        self.counter[i] = counter
        self.prio[i] = _prio(code)
        self.attempts[i] = 0
        self.due[i] = self.ticks_ms()

    def remove(self, i, persist=True):
        if self.flags[i] & _USED:
            self.flags[i] &= ~_USED & 0xFF
            self.gen[i] = (self.gen[i] + 1) & 0xFFFF
            if persist:
                self.save()

    def requeue(self, i, device, counter, ts, flags):
        """Re-encode slot i's plaintext under a fresh counter (after a replay/collision, §12.4).

        The attempt count is kept, so the re-send waits for the normal backoff:
        never a tight reject loop.
        """
        attempts = self.attempts[i]
        code, fl, dev, old, t, n = codec.verify_into(self.frame(i), self.keys, self._scratch)
        flags |= type_flags(code)
        self.n[i] = codec.encode_into(
            self.views[i],
            self.keys,
            code,
            flags,
            device,
            counter,
            ts,
            memoryview(self._scratch)[:n],
        )
        self._fill(i, code, counter, 0)
        if counter > self.hw:
            self.hw = counter
        self.save()
        self.attempts[i] = attempts
        self._retry(i, self.attempts[i], self.ticks_ms())

    # ---------------------------------------------------------- sending ----

    def begin_send(self, i, ts, flags):
        """Slot i goes out now: restamp a retransmission, count the attempt, mark it BUSY.

        Returns the token end_send needs (the slot's generation).
        """
        fl = self.flags
        a = self.attempts
        if fl[i] & _SENT or a[i]:
            # SPEC §12.3: same counter and payload; only timestamp and flags change.
            codec.restamp(
                self.views[i], self.n[i], self.keys, ts, codec.FLAG_RETRANSMISSION | flags
            )
        if a[i] < 255:
            a[i] += 1
        fl[i] |= _BUSY
        return self.gen[i]

    def end_send(self, i, gen, ok):
        """The publish of slot i returned ok (None: it never finished); -1, or the frame's
        counter when this was its first delivery to the broker.

        A frame acked or replaced meanwhile is left alone. A HEARTBEAT is done
        once the broker has it (fire-and-forget at QoS 1, SPEC §12.4); any other
        frame waits for its ACK and goes out again after the backoff.
        """
        fl = self.flags
        fl[i] &= ~_BUSY & 0xFF
        if ok is None or not fl[i] & _USED or self.gen[i] != gen:
            return -1
        first = -1
        if ok:
            if not fl[i] & _SENT:
                fl[i] |= _SENT
                first = self.counter[i]
            if self.code[i] == codec.HEARTBEAT:
                self.remove(i)
                return first
        self._retry(i, self.attempts[i], self.ticks_ms())
        return first

    def cancel_acked(self, i):
        """The CANCEL in slot i is acked: it and the alert it cancels stop; that alert's counter."""
        ref = struct.unpack_from(">I", self.views[i], codec.HEADER_LEN)[0]  # §8.2 ref_counter
        self.remove(i)
        a = self.find(ref, codec.ALERT)
        if a >= 0:
            self.remove(a)
        return ref

    def resend_now(self, i):
        """Slot i goes out again at once, restamped (a time-NAK just set the clock, §12.5)."""
        self.flags[i] |= _SENT
        self.due[i] = self.ticks_ms()

    def hurry(self):
        """After a reconnect, frames waiting for an ACK go out within one jittered base retry
        instead of sitting out a long backoff."""
        now = self.ticks_ms()
        for i in range(self.slots):
            if self.flags[i] & _USED and ticks_diff(self.due[i], now) > self.retry_base_ms:
                self._retry(i, 1, now)  # the first retry's delay

    def copy_restamped(self, counter, code, buf, ts, flags):
        """buf[:n] = the waiting frame (counter, code) restamped for another transmission
        (SPEC §12.3; flagged a retransmission once it went out over data); n, or 0 once
        it no longer waits."""
        i = self.find(counter, code)
        if i < 0:
            return 0
        n = self.n[i]
        buf[:n] = self.frame(i)
        if self.attempts[i]:
            flags |= codec.FLAG_RETRANSMISSION
        codec.restamp(buf, n, self.keys, ts, flags)
        return n

    def _retry(self, i, attempts, now):
        """Slot i is due after the capped exponential backoff that follows its attempts-th
        transmission (SPEC §12.3), with equal jitter from the hardware RNG: d/2 + U(0, d/2)."""
        shift = attempts - 1 if attempts > 1 else 0
        if shift > _MAX_SHIFT:
            shift = _MAX_SHIFT
        d = self.retry_base_ms << shift
        if d > self.retry_cap_ms:
            d = self.retry_cap_ms
        half = d // 2
        if half > 0:
            d = half + struct.unpack("<I", os.urandom(4))[0] % (half + 1)
        self.due[i] = ticks_add(now, d)

    # ------------------------------------------------------- persistence ----

    def persist(self):
        hdr = self._hdr
        struct.pack_into(_HDR, hdr, 0, _MAGIC, _VERSION, self.hw, self.depth())
        tmp = self.path + ".tmp"
        with open(tmp, "wb") as f:
            f.write(hdr)
            crc = crc32(hdr)
            meta = self._meta
            for i in range(self.slots):
                if not self.flags[i] & _USED:
                    continue
                meta[0] = _META_SENT if (self.flags[i] & _SENT or self.attempts[i]) else 0
                meta[1] = self.n[i]
                f.write(meta)
                mv = self.frame(i)
                f.write(mv)
                crc = crc32(meta, crc)
                crc = crc32(mv, crc)
            struct.pack_into(">I", hdr, 0, crc & 0xFFFFFFFF)
            f.write(memoryview(hdr)[:4])
        os.rename(tmp, self.path)

    def load(self, device):
        """Read the outbox file; return the number of frames recovered. Never raises on bad data."""
        try:
            with open(self.path, "rb") as f:
                data = f.read()
        except OSError:
            return 0
        ok = False
        if len(data) >= _HDR_LEN + 4:
            body = memoryview(data)[:-4]
            want = struct.unpack_from(">I", data, len(data) - 4)[0]
            ok = (crc32(body) & 0xFFFFFFFF) == want and data[:4] == _MAGIC
        if ok:
            magic, ver, hw, count = struct.unpack_from(_HDR, data, 0)
            self.hw = hw
            n = self._scan(data, _HDR_LEN, len(data) - 4, device, False)
            if n == count and ver == _VERSION:
                return n
        # Damaged: keep a copy for analysis, salvage every frame whose tag still verifies.
        self.log("outbox file corrupt: quarantined, salvaging frames")
        for i in range(self.slots):
            self.flags[i] = 0
        self._quarantine()
        n = self._scan(data, 0, len(data), device, True)
        try:
            self.persist()
        except OSError as e:
            self.log("outbox rewrite failed: %r" % e)
        return n

    def _quarantine(self):
        try:
            os.rename(self.path, self.path + ".bad")
        except OSError:
            pass

    def _scan(self, data, pos, end, device, resync):
        """Parse records in data[pos:end]; with resync, slide byte by byte past damage."""
        n = 0
        mv = memoryview(data)
        while pos + 2 + codec.OVERHEAD <= end:
            size = data[pos + 1]  # after the meta byte
            good = False
            if codec.OVERHEAD <= size <= codec.MAX_FRAME and pos + 2 + size <= end:
                frame = mv[pos + 2 : pos + 2 + size]
                try:
                    code, fl, dev, ctr, ts, pn = codec.verify_into(frame, self.keys, self._scratch)
                    good = dev == device and not (code & codec.DOWNLINK)
                except codec.FrameError:
                    good = False
            if good:
                if self.find(ctr, code) < 0:
                    i = self._free_slot(code)
                    if i >= 0:
                        self.views[i][:size] = frame
                        self.n[i] = size
                        self._fill(i, code, ctr, _SENT)  # may have gone out before the reset
                        n += 1
                if ctr > self.hw:
                    self.hw = ctr
                pos += 2 + size
            elif resync:
                pos += 1
            else:
                break
        return n
