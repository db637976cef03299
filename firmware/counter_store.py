# Frame counter store: never hand out a counter twice, even across power cuts (SPEC §12.1).
#
# The file holds one reservation: the exclusive upper bound of counters that
# may already have been used. Before counter c is handed out, the persisted
# bound must be above c; extending it writes a temp file and renames it over
# the old one (atomic on LittleFS and POSIX), so a power cut at any instant
# leaves either the old or the new bound, both >= every counter used.
#
# RAM budget: a few ints; writing a reservation allocates one short string.

from binascii import crc32

# How far past every visible counter a device jumps when its reservation file
# is corrupt or missing while other state exists (SPEC §12.1: "by a large
# margin, never below"). 2**20 leaves room for ~4000 such events in 32 bits.
SKIP_ON_CORRUPTION = 1 << 20
# Counters start at 1; 0 is never used, so "no counter" can be spelled 0.
FIRST_COUNTER = 1
_MAX = 0xFFFFFFFF


def _encode(limit):
    text = "%d" % limit
    return "%s %08x\n" % (text, crc32(text.encode()) & 0xFFFFFFFF)


def _decode(raw):
    try:
        parts = raw.decode().split()
    except UnicodeError:
        raise ValueError
    if len(parts) != 2:
        raise ValueError
    limit = int(parts[0])
    if limit < 0 or limit > _MAX or "%08x" % (crc32(parts[0].encode()) & 0xFFFFFFFF) != parts[1]:
        raise ValueError
    return limit


class CounterStore:
    """Hands out strictly increasing counters backed by a persisted reservation."""

    def __init__(self, path, block, log):
        self.path = path
        self.block = block if block > 0 else 32
        self.log = log
        self.next = FIRST_COUNTER
        self.limit = FIRST_COUNTER  # persisted exclusive bound; next < limit may be used

    def load(self, seen, other_state, floor=0):
        """Read the reservation. seen = highest counter visible elsewhere (outbox) or 0.

        other_state: True when the device has other persisted state (so a missing
        file is suspicious, not a first boot). floor: config.json's counter_floor,
        the lowest counter this key may still use (SPEC §12.1: a known secret on
        a fresh filesystem never restarts low).
        """
        try:
            with open(self.path, "rb") as f:
                text = f.read()
        except OSError:
            text = None
        if text is None:
            if other_state:
                self.log("counter file missing but device state exists: skipping ahead")
                start = seen + SKIP_ON_CORRUPTION
            else:
                start = FIRST_COUNTER
        else:
            try:
                start = _decode(text)
                if start <= seen:  # outbox knows a later counter: never go below it
                    start = seen + 1
            except ValueError:
                self.log("counter file corrupt: quarantined, skipping ahead")
                self._quarantine()
                start = seen + SKIP_ON_CORRUPTION
        if start < floor:
            start = floor
        if start < FIRST_COUNTER:
            start = FIRST_COUNTER
        if start > _MAX - self.block:
            # SPEC §12.1: the device must be re-keyed before wrapping; refuse to wrap.
            self.log("counter space exhausted: device must be re-keyed")
            start = _MAX - self.block
        self.next = start
        self.limit = start  # nothing reserved in RAM until persisted
        try:
            self._reserve(start + self.block)
        except OSError as e:
            self.log("counter reservation not persisted (%r): flash failing" % e)

    def _quarantine(self):
        import os

        try:
            os.rename(self.path, self.path + ".bad")
        except OSError:
            pass

    def _reserve(self, limit):
        import os

        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            f.write(_encode(limit))
        os.rename(tmp, self.path)
        self.limit = limit

    def take(self):
        """The next counter; persists a new reservation first when the block is used up.

        If the flash refuses the write, the counter is still handed out (an alert
        must go out) and the failure is logged; the next take() retries the write.
        """
        c = self.next
        if c >= self.limit:
            try:
                self._reserve(c + self.block)
            except OSError as e:
                self.log("counter reservation not persisted (%r): flash failing" % e)
        self.next = c + 1
        return c

    def skip_past(self, counter):
        """Never hand out counter or anything below it (SPEC §12.4 resync); one write at most."""
        if counter < self.next:
            return
        if counter >= _MAX - self.block:
            self.log("counter space exhausted: device must be re-keyed")
            counter = _MAX - self.block - 1
        self.next = counter + 1
        try:
            self._reserve(self.next + self.block)
        except OSError as e:
            self.log("counter reservation not persisted (%r): flash failing" % e)

    def peek(self):
        return self.next
