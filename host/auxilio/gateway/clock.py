"""Is this host's clock synchronised? The kernel knows (adjtimex), and the ACK says so (SPEC §8.9).

An ACK's clock_synced flag lets a device trust the server time for its own
timestamps, and the gateway applies the −40/+20 s window (SPEC §12.2) only
when its own clock is right. Linux's adjtimex(2) with modes = 0 reads the
NTP state without changing it: it returns TIME_ERROR, or sets STA_UNSYNC,
while no time daemon (chrony, ntpd, systemd-timesyncd, ptp4l) disciplines the
clock. A host kept right by other means (a hypervisor clock) can say so with
`--assume-clock-synced`.
"""

from __future__ import annotations

import ctypes
import logging
import time

log = logging.getLogger(__name__)

_TIME_ERROR = 5  # adjtimex return value: clock not synchronised
_STA_UNSYNC = 0x0040  # timex.status bit (include/uapi/linux/timex.h)
# How long one answer is trusted (a syscall is cheap, but the ACK path is hot).
CACHE_S = 10.0


class _Timex(ctypes.Structure):
    # struct timex (include/uapi/linux/timex.h) on 64-bit Linux: only modes and
    # status are read; the trailing padding makes the size right.
    _fields_ = [
        ("modes", ctypes.c_uint),
        ("offset", ctypes.c_long),
        ("freq", ctypes.c_long),
        ("maxerror", ctypes.c_long),
        ("esterror", ctypes.c_long),
        ("status", ctypes.c_int),
        ("constant", ctypes.c_long),
        ("precision", ctypes.c_long),
        ("tolerance", ctypes.c_long),
        ("time_sec", ctypes.c_long),
        ("time_usec", ctypes.c_long),
        ("tick", ctypes.c_long),
        ("ppsfreq", ctypes.c_long),
        ("jitter", ctypes.c_long),
        ("shift", ctypes.c_int),
        ("stabil", ctypes.c_long),
        ("jitcnt", ctypes.c_long),
        ("calcnt", ctypes.c_long),
        ("errcnt", ctypes.c_long),
        ("stbcnt", ctypes.c_long),
        ("tai", ctypes.c_int),
        ("_pad", ctypes.c_int * 11),
    ]


def kernel_clock_synced() -> bool | None:
    """True/False from adjtimex(2); None where the call is not available."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.adjtimex
    except (OSError, AttributeError):
        return None
    t = _Timex()
    rc = fn(ctypes.byref(t))
    if rc < 0:
        return None
    return rc != _TIME_ERROR and not t.status & _STA_UNSYNC


class ClockState:
    """The host clock's sync state, cached; `assume` overrides the kernel's answer."""

    def __init__(self, assume: bool | None = None) -> None:
        self.assume = assume
        self._value = False
        self._at = -CACHE_S

    def synced(self) -> bool:
        if self.assume is not None:
            return self.assume
        now = time.monotonic()
        if now - self._at >= CACHE_S:
            self._at = now
            self._value = bool(kernel_clock_synced())
        return self._value

    def describe(self) -> str:
        if self.assume is not None:
            return "assumed synchronised" if self.assume else "assumed unsynchronised"
        state = kernel_clock_synced()
        if state is None:
            return "unknown (no adjtimex): not synchronised, timestamp window off"
        return "synchronised" if state else "NOT synchronised: timestamp window off"
