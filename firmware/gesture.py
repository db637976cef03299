# Button gestures: software debounce, hold-to-alert and the tap-sequence cancel (issue 3 §4).
#
# The IRQ side (edge) only stores a timestamp and a level in a preallocated
# ring: no allocation, no logic, safe in a hard IRQ. poll() runs in an asyncio
# task and turns raw edges into debounced presses:
#   * a press held for hold_ms raises ALERT at the moment the threshold is
#     reached (while still held); releasing it earlier raises nothing;
#   * a press still held at LONG_FACTOR x hold_ms raises LONG once (the Device
#     turns a test-window press held that long into a real ALERT, SPEC §8.10.1);
#   * `taps` short presses (each <= TAP_MAX_MS, gaps <= TAP_GAP_MS) raise TAPS,
#     which the Device turns into CANCEL only inside the cancel window.
#
# RAM budget: a 16-entry ring (64 + 16 bytes) and a dozen ints per Device.

from array import array
from time import ticks_diff

NONE = 0
ALERT = 1
TAPS = 2
LONG = 3

DEBOUNCE_MS = 30  # contact bounce on tactile switches settles within ~5-20 ms
TAP_MAX_MS = 600  # longer than this is not a deliberate short tap
TAP_GAP_MS = 1500  # max pause between taps of one sequence
POLL_MS = 10  # gesture task period while a gesture is in progress
LONG_FACTOR = 3  # SPEC §8.10.1: a hold this many times hold_ms is a real ALERT in a test window
_RING = 16  # power of two


class Gesture:
    """Debounced button state machine fed by IRQ timestamps."""

    def __init__(self, hold_ms, taps):
        self.hold_ms = hold_ms
        self.taps_needed = taps
        self._t = array("i", [0] * _RING)
        self._lv = bytearray(_RING)
        self._head = 0  # written only by edge()
        self._tail = 0  # read only by poll()
        self.stable = 0  # debounced level: 1 pressed
        self._cand = 0  # latest raw level not yet committed
        self._cand_t = 0
        self._down_t = 0
        self._fired = False
        self._long = False  # LONG already raised for this press
        self._taps = 0
        self._last_tap = 0
        self._pending = NONE
        self.overruns = 0

    def edge(self, level, t):
        """IRQ-safe: record a raw edge (level 1 = pressed) at ticks_ms t."""
        h = self._head
        nxt = (h + 1) & (_RING - 1)
        if nxt == self._tail:
            self.overruns += 1  # ring full: a bouncing contact; the latest level wins below
            h = (h - 1) & (_RING - 1)
            nxt = (h + 1) & (_RING - 1)
        self._t[h] = t
        self._lv[h] = level
        self._head = nxt

    def active(self):
        """True while something is in progress and poll() must keep running."""
        return (
            self._head != self._tail
            or self.stable
            or self._cand != self.stable
            or self._taps > 0
            or self._pending != NONE
        )

    def poll(self, now):
        """Consume edges; return NONE, ALERT, LONG or TAPS (one event per call)."""
        while self._tail != self._head:
            i = self._tail
            self._feed(self._lv[i], self._t[i])
            self._tail = (i + 1) & (_RING - 1)
        if self._cand != self.stable and ticks_diff(now, self._cand_t) >= DEBOUNCE_MS:
            self._commit(self._cand, self._cand_t)
        if self._pending != NONE:
            ev = self._pending
            self._pending = NONE
            return ev
        # A release still inside its debounce time ends the hold at its edge time.
        end = self._cand_t if self._cand != self.stable else now
        if self.stable and not self._fired and ticks_diff(end, self._down_t) >= self.hold_ms:
            self._fired = True
            self._taps = 0
            return ALERT
        if (
            self.stable
            and self._fired
            and not self._long
            and ticks_diff(end, self._down_t) >= self.hold_ms * LONG_FACTOR
        ):
            self._long = True
            return LONG
        if self._taps and ticks_diff(now, self._last_tap) > TAP_GAP_MS:
            self._taps = 0
        return NONE

    def _feed(self, level, t):
        if level == self._cand:
            return  # same level again (duplicate IRQ): keep the earlier time
        # A candidate that stayed put for DEBOUNCE_MS before this edge was real.
        if self._cand != self.stable and ticks_diff(t, self._cand_t) >= DEBOUNCE_MS:
            self._commit(self._cand, self._cand_t)
        self._cand = level
        self._cand_t = t

    def _commit(self, level, t):
        self.stable = level
        if level:
            self._down_t = t
            self._fired = False
            self._long = False
            return
        if self._fired:
            return  # release after an alert hold: not a tap
        dur = ticks_diff(t, self._down_t)
        if dur > TAP_MAX_MS:
            self._taps = 0  # a deliberate-but-short press: neither alert nor tap
            return
        if self._taps and ticks_diff(t, self._last_tap) > TAP_GAP_MS:
            self._taps = 0
        self._taps += 1
        self._last_tap = t
        if self._taps >= self.taps_needed:
            self._taps = 0
            self._pending = TAPS
