# Persistent outbox: encoded uplink frames waiting for delivery, on flash (SPEC §12.3-12.4).
#
# Slots are preallocated (one MAX_FRAME bytearray each) so queuing an alert
# allocates no frame buffer. The file is rewritten whole on every add/remove:
# temp file, then rename (atomic on LittleFS/POSIX), so a power cut leaves the
# old or the new outbox. Records are self-verifying (each frame carries its
# HMAC tag), so a damaged file is salvaged frame by frame.
#
# File: b"AXOB" ver(1) hw(u32) count(u8) { meta(u8) len(u8) frame }* crc32(u32)
# RAM budget: slots x (96-byte buffer + ~80-byte Record) ~ 2.2 KB for 12 slots.

import struct
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


class Record:
    """One outbox slot: an encoded frame plus delivery state."""

    def __init__(self):
        self.buf = bytearray(codec.MAX_FRAME)
        self.used = False
        self.gen = 0  # bumped on every reuse, so a sender can tell its record was replaced
        self.n = 0
        self.code = 0
        self.counter = 0
        self.prio = 9
        self.attempts = 0
        self.sent = False
        self.busy = False
        self.due = 0  # ticks_ms when the next transmission is due


class Outbox:
    """Bounded, persistent, priority-ordered store of frames awaiting delivery."""

    def __init__(self, path, slots, keys, log, ticks_ms):
        self.path = path
        self.keys = keys
        self.log = log
        self.ticks_ms = ticks_ms
        self.records = [Record() for _ in range(slots)]
        self.hw = 0  # highest counter ever queued (a floor for the counter store)
        self.dropped = 0  # frames discarded because the outbox was full
        self._hdr = bytearray(_HDR_LEN)
        self._meta = bytearray(2)
        self._scratch = bytearray(codec.MAX_PAYLOAD)

    # ----------------------------------------------------------- queries ----

    def depth(self):
        n = 0
        for r in self.records:
            if r.used:
                n += 1
        return n

    def find(self, counter, code):
        for r in self.records:
            if r.used and r.counter == counter and r.code == code:
                return r
        return None

    def next_due(self, now):
        """(record, 0) for the most urgent due record, else (None, ms until the next one or -1)."""
        best = None
        wait = -1
        for r in self.records:
            if not r.used or r.busy:
                continue
            d = ticks_diff(r.due, now)
            if d <= 0:
                if (
                    best is None
                    or r.prio < best.prio
                    or (r.prio == best.prio and r.counter < best.counter)
                ):
                    best = r
            elif wait < 0 or d < wait:
                wait = d
        if best is not None:
            return best, 0
        return None, wait

    # ---------------------------------------------------------- mutation ----

    def _free_slot(self, code):
        for r in self.records:
            if not r.used and not r.busy:
                return r
        # Full: drop the oldest heartbeat first (issue 3 §5).
        victim = self._oldest(codec.HEARTBEAT, codec.HEARTBEAT)
        if victim is None and _PRIO.get(code, 9) <= 1:
            # An alert/cancel never waits behind housekeeping frames: drop the
            # oldest status frame (BOOT, POWER...), never another alert.
            victim = self._oldest(2, 3, by_prio=True)
        if victim is None:
            return None
        self.dropped += 1
        self.log("outbox full: dropped frame %d (type %d)" % (victim.counter, victim.code))
        victim.used = False
        return victim

    def _oldest(self, lo, hi, by_prio=False):
        best = None
        for r in self.records:
            if not r.used or r.busy:
                continue
            key = r.prio if by_prio else r.code
            if lo <= key <= hi and (best is None or r.counter < best.counter):
                best = r
        return best

    def add(self, code, flags, device, counter, ts, payload, persist=True):
        """Encode a new frame into a free slot and persist; None when it cannot be queued."""
        r = self._free_slot(code)
        if r is None:
            self.dropped += 1
            self.log("outbox full of alerts: frame %d (type %d) not queued" % (counter, code))
            return None
        r.n = codec.encode_into(r.buf, self.keys, code, flags, device, counter, ts, payload)
        self._fill(r, code, counter, False)
        if counter > self.hw:
            self.hw = counter
        if persist:
            self.persist()
        return r

    def _fill(self, r, code, counter, sent):
        r.used = True
        r.gen += 1
        r.code = code
        r.counter = counter
        r.prio = _PRIO.get(code, 9)
        r.attempts = 0
        r.sent = sent
        r.busy = False
        r.due = self.ticks_ms()

    def remove(self, r, persist=True):
        if r.used:
            r.used = False
            r.gen += 1
            if persist:
                self.persist()

    def requeue(self, r, device, counter, ts, flags):
        """Re-encode r's plaintext under a fresh counter (after a replay rejection, §12.4)."""
        code, fl, dev, old, t, n = codec.verify_into(
            memoryview(r.buf)[: r.n], self.keys, self._scratch
        )
        if code == codec.ALERT or code == codec.TEST:
            flags |= codec.FLAG_ENCRYPTED
        r.n = codec.encode_into(
            r.buf, self.keys, code, flags, device, counter, ts, memoryview(self._scratch)[:n]
        )
        self._fill(r, code, counter, False)
        if counter > self.hw:
            self.hw = counter
        self.persist()

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
            for r in self.records:
                if not r.used:
                    continue
                meta[0] = _META_SENT if (r.sent or r.attempts) else 0
                meta[1] = r.n
                f.write(meta)
                mv = memoryview(r.buf)[: r.n]
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
        for r in self.records:
            r.used = False
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
                if self.find(ctr, code) is None:
                    r = self._free_slot(code)
                    if r is not None:
                        r.buf[:size] = frame
                        r.n = size
                        self._fill(r, code, ctr, bool(meta & _META_SENT))
                        n += 1
                if ctr > self.hw:
                    self.hw = ctr
                pos += 2 + size
            elif resync:
                pos += 1
            else:
                break
        return n
