# Persistent outbox: encoded uplink frames waiting for delivery, on flash (SPEC §12.3-12.4).
#
# Slots are preallocated (one MAX_FRAME bytearray each) so queuing an alert
# allocates no frame buffer. The file is rewritten whole on every add/remove:
# temp file, then rename (atomic on LittleFS/POSIX), so a power cut leaves the
# old or the new outbox. Records are self-verifying (each frame carries its
# HMAC tag), so a damaged file is salvaged frame by frame.
#
# File: b"AXOB" ver(1) hw(u32) count(u8) { meta(u8) len(u8) frame }* crc32(u32)
# RAM budget: slots x ~110 B (96-byte frame + metadata arrays + one memoryview)
# ~1.4 KB for 12 slots.

import struct
from array import array
from binascii import crc32
from time import ticks_diff

import auxcodec as codec

_MAGIC = b"AXOB"
_VERSION = 1
_HDR = ">4sBIB"  # magic, version, high-water counter, record count
_HDR_LEN = 10
_META_SENT = 0x01  # the frame was published at least once (retransmission flag next time)

# Delivery priority: alerts go ahead of all other traffic (issue 3 §5).
_PRIO = {
    codec.ALERT: 0,
    codec.CANCEL: 1,
    codec.TEST: 2,
    codec.TAMPER: 2,
    codec.POWER: 2,
    codec.LOW_BATTERY: 2,
    codec.BOOT: 3,
    codec.HEARTBEAT: 4,
}


# A slot is an int index into parallel arrays (no per-record objects: on the
# 64-bit unix port an object per slot cost ~370 B, the arrays ~110 B).
USED = 0x01
SENT = 0x02  # published at least once: the next transmission is a retransmission
BUSY = 0x04  # the sender is publishing it right now: do not reuse the slot


class Outbox:
    """Bounded, persistent, priority-ordered store of frames awaiting delivery."""

    def __init__(self, path, slots, keys, log, ticks_ms):
        self.path = path
        self.keys = keys
        self.log = log
        self.ticks_ms = ticks_ms
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

    def used(self, i):
        return self.flags[i] & USED

    def depth(self):
        n = 0
        for fl in self.flags:
            if fl & USED:
                n += 1
        return n

    def find(self, counter, code):
        """Slot index of the waiting frame (counter, code), or -1."""
        for i in range(self.slots):
            if self.flags[i] & USED and self.counter[i] == counter and self.code[i] == code:
                return i
        return -1

    def frame(self, i):
        return self.views[i][: self.n[i]]

    def next_due(self, now):
        """(slot, 0) for the most urgent due frame, else (-1, ms until the next one or -1)."""
        best = -1
        wait = -1
        for i in range(self.slots):
            fl = self.flags[i]
            if not fl & USED or fl & BUSY:
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
            if not self.flags[i] & (USED | BUSY):
                return i
        # Full: drop the oldest heartbeat first (issue 3 §5).
        victim = self._oldest(_PRIO[codec.HEARTBEAT], _PRIO[codec.HEARTBEAT])
        if victim < 0 and _PRIO.get(code, 9) <= 1:
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
            if not fl & USED or fl & BUSY:
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
        self.flags[i] = USED | sent
        self.gen[i] = (self.gen[i] + 1) & 0xFFFF
        self.code[i] = code
        self.counter[i] = counter
        self.prio[i] = _PRIO.get(code, 9)
        self.attempts[i] = 0
        self.due[i] = self.ticks_ms()

    def remove(self, i, persist=True):
        if self.flags[i] & USED:
            self.flags[i] &= ~USED & 0xFF
            self.gen[i] = (self.gen[i] + 1) & 0xFFFF
            if persist:
                self.save()

    def mark_sent(self, i):
        self.flags[i] |= SENT

    def requeue(self, i, device, counter, ts, flags):
        """Re-encode slot i's plaintext under a fresh counter (after a replay rejection, §12.4)."""
        code, fl, dev, old, t, n = codec.verify_into(self.frame(i), self.keys, self._scratch)
        if code == codec.ALERT or code == codec.TEST:
            flags |= codec.FLAG_ENCRYPTED
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

    # ------------------------------------------------------- persistence ----

    def persist(self):
        import os

        hdr = self._hdr
        struct.pack_into(_HDR, hdr, 0, _MAGIC, _VERSION, self.hw, self.depth())
        tmp = self.path + ".tmp"
        with open(tmp, "wb") as f:
            f.write(hdr)
            crc = crc32(hdr)
            meta = self._meta
            for i in range(self.slots):
                if not self.flags[i] & USED:
                    continue
                meta[0] = _META_SENT if (self.flags[i] & SENT or self.attempts[i]) else 0
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
        import os

        try:
            os.rename(self.path, self.path + ".bad")
        except OSError:
            pass

    def _scan(self, data, pos, end, device, resync):
        """Parse records in data[pos:end]; with resync, slide byte by byte past damage."""
        n = 0
        mv = memoryview(data)
        while pos + 2 + codec.OVERHEAD <= end:
            meta = data[pos]
            size = data[pos + 1]
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
                        self._fill(i, code, ctr, SENT if meta & _META_SENT else 0)
                        n += 1
                if ctr > self.hw:
                    self.hw = ctr
                pos += 2 + size
            elif resync:
                pos += 1
            else:
                break
        return n
