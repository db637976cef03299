"""Per-device anti-replay window: a counter high-water mark plus a 64-counter bitmap (SPEC §12)."""

from __future__ import annotations

# Width of the out-of-order window (protocol notes: 64-counter bitmap). Bit i
# of the bitmap says counter (high_water - i) has been seen.
WINDOW = 64
_MASK = (1 << WINDOW) - 1

NEW = "new"  # never seen, inside or above the window: accept
SEEN = "seen"  # inside the window and already seen: duplicate, re-ack idempotently
BELOW = "below"  # older than the window: can only be a replay (unless already stored)


def check(high_water: int, window: int, counter: int) -> str:
    """Classify counter against the window state without changing it."""
    if counter > high_water:
        return NEW
    age = high_water - counter
    if age >= WINDOW:
        return BELOW
    return SEEN if (window >> age) & 1 else NEW


def mark(high_water: int, window: int, counter: int) -> tuple[int, int]:
    """Return the window state after accepting counter (check() said NEW)."""
    if counter > high_water:
        shift = counter - high_water
        window = ((window << shift) & _MASK) if shift < WINDOW else 0
        return counter, window | 1
    return high_water, window | (1 << (high_water - counter))
