"""The emulated cellular network: timing presets (with sources), scenarios, GNSS tracks.

Figures the emulator uses for LTE-M, NB-IoT and Cat-1. Where a standard or
an industry guide gives a number it is cited; where only field experience
does, the value is marked as an assumption. Tests use FAST (same sequence of
events, shorter waits); benches use the real presets and say which.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from typing import Any

from auxilio.errors import UsageError

# Network scenarios a test or `auxilio vboard lte STATE` can set.
SCENARIOS = (
    "registered",  # home network, data works
    "roaming",  # registered on a visited network (CEREG stat 5), data works
    "searching",  # cell search in progress (stat 2), no service yet
    "no-signal",  # nothing heard: CSQ 99, stat 2
    "denied",  # registration rejected (stat 3)
    "data-down",  # registered, SMS works, PDP activation and TCP fail
)
# Modem-side faults (the SIM and the module itself), set the same way.
FAULTS = ("sim-missing", "sim-inserted", "mute", "unmute", "reboot")


@dataclass(frozen=True)
class Timing:
    """Seconds unless the name says ms. `source` says where the numbers come from."""

    name: str
    boot_s: float  # PWRKEY released -> AT answered and the ready URC
    attach_s: float  # SIM ready -> registered (cell search + attach)
    pdp_s: float  # PDP context activation
    uplink_ms: float  # one-way latency device -> internet once RRC-connected
    downlink_ms: float  # one-way latency internet -> device once RRC-connected
    rrc_setup_ms: float  # first packet after RRC idle (random access + RRC setup)
    rrc_inactivity_s: float  # network releases the RRC connection after this idle time
    psm_wake_s: float  # PWRKEY wake from PSM -> AT answered (no re-attach: PSM keeps it)
    sms_submit_s: float  # AT+CMGS -> +CMGS (MO SMS over NAS to the SMSC)
    sms_deliver_s: float  # SMSC store-and-forward -> the C4's SMS inbox
    gnss_ttff_s: float  # GNSS on -> first fix (hot start, open sky)
    cmd_ms: float = 3.0  # a plain AT command's answer time (UART + module firmware)
    source: str = ""


# LTE-M (Cat-M1), good coverage, CE mode A.
LTE_M = Timing(
    name="lte-m",
    boot_s=3.0,
    attach_s=6.0,
    pdp_s=0.8,
    uplink_ms=60.0,
    downlink_ms=60.0,
    rrc_setup_ms=150.0,
    rrc_inactivity_s=10.0,
    psm_wake_s=0.3,
    sms_submit_s=1.5,
    sms_deliver_s=3.0,
    gnss_ttff_s=2.0,
    source=(
        "3GPP's LTE-M user-plane latency target is 10-15 ms (GSMA, 'LTE-M Deployment Guide "
        "to Basic Feature Set Requirements' v3, 2019); commercial networks show ~100-200 ms "
        "round trips after scheduling and HARQ, so 60 ms each way is an assumption from "
        "field reports. Attach 6 s: an assumption for a known band (a first-ever band scan "
        "can take minutes). RRC inactivity 10 s: operator-configured (3GPP TS 36.331 leaves "
        "it to the network), 10 s is a common value. SMS submit/delivery: assumptions "
        "(store-and-forward at the SMSC, 3GPP TS 23.040)."
    ),
)

# NB-IoT (Cat-NB1/NB2).
NB_IOT = Timing(
    name="nb-iot",
    boot_s=3.0,
    attach_s=12.0,
    pdp_s=1.5,
    uplink_ms=800.0,
    downlink_ms=800.0,
    rrc_setup_ms=1000.0,
    rrc_inactivity_s=20.0,
    psm_wake_s=0.3,
    sms_submit_s=4.0,
    sms_deliver_s=3.0,
    gnss_ttff_s=2.0,
    source=(
        "NB-IoT latency 1.6-10 s (GSMA, 'NB-IoT Deployment Guide to Basic Feature Set "
        "Requirements' v3, 2019; 3GPP TR 45.820 targets < 10 s for exception reports): the "
        "low end, 0.8 s each way. Attach 12 s and RRC inactivity 20 s: assumptions."
    ),
)

# LTE Cat-1 (SIM7600 on mains-powered buttons).
CAT1 = Timing(
    name="lte-cat1",
    boot_s=12.0,
    attach_s=4.0,
    pdp_s=0.5,
    uplink_ms=25.0,
    downlink_ms=25.0,
    rrc_setup_ms=80.0,
    rrc_inactivity_s=10.0,
    psm_wake_s=0.0,
    sms_submit_s=1.5,
    sms_deliver_s=3.0,
    gnss_ttff_s=2.0,
    source=(
        "LTE Cat-1: ~50 ms round trips (3GPP TR 36.913 targets < 10 ms user plane; 25 ms "
        "each way is an assumption for a loaded commercial cell). Boot 12 s: the SIM7600 "
        "Hardware Design's UART-ready time is of that order."
    ),
)

# Tests: the same events in the same order, waits shortened (latencies kept small, not 0).
FAST = Timing(
    name="fast",
    boot_s=0.3,
    attach_s=0.4,
    pdp_s=0.1,
    uplink_ms=5.0,
    downlink_ms=5.0,
    rrc_setup_ms=10.0,
    rrc_inactivity_s=0.5,
    psm_wake_s=0.05,
    sms_submit_s=0.2,
    sms_deliver_s=0.2,
    gnss_ttff_s=0.2,
    cmd_ms=1.0,
    source="test preset: the LTE-M sequence with every wait shortened",
)

PRESETS = {t.name: t for t in (LTE_M, NB_IOT, CAT1, FAST)}


def preset(name: str | Timing, **changes: Any) -> Timing:
    """A preset by name (or a Timing), with some fields changed."""
    t = name if isinstance(name, Timing) else PRESETS.get(name)
    if t is None:
        raise UsageError(f"unknown network timing {name!r} (one of {', '.join(PRESETS)})")
    return replace(t, **changes) if changes else t


@dataclass
class Fix:
    lat: float
    lon: float
    hdop: float = 1.2


# Plaza de la Constitución, Mexico City: a public place, never a person's location.
DEFAULT_FIX = Fix(19.432608, -99.133209, 1.2)


@dataclass
class GnssTrack:
    """Fixes over time: (t_s from start, Fix or None for no fix), linearly interpolated."""

    points: list[tuple[float, Fix | None]] = field(default_factory=lambda: [(0.0, DEFAULT_FIX)])
    t0: float = field(default_factory=time.monotonic)

    def at(self, now: float | None = None) -> Fix | None:
        t = (time.monotonic() if now is None else now) - self.t0
        pts = self.points
        if not pts:
            return None
        prev = pts[0]
        for p in pts[1:]:
            if p[0] > t:
                if prev[1] is None or p[1] is None or p[0] <= prev[0]:
                    return prev[1]
                a = (t - prev[0]) / (p[0] - prev[0])
                f0, f1 = prev[1], p[1]
                return Fix(
                    f0.lat + a * (f1.lat - f0.lat),
                    f0.lon + a * (f1.lon - f0.lon),
                    f0.hdop + a * (f1.hdop - f0.hdop),
                )
            prev = p
        return prev[1]

    @classmethod
    def fixed(cls, lat: float, lon: float, hdop: float = 1.2) -> GnssTrack:
        return cls([(0.0, Fix(lat, lon, hdop))])

    @classmethod
    def none(cls) -> GnssTrack:
        return cls([(0.0, None)])

    @classmethod
    def walk(cls, start: Fix, bearing_deg: float, speed_mps: float, seconds: float) -> GnssTrack:
        """A straight walk: start, then the point speed x seconds away on a bearing."""
        d = speed_mps * seconds
        dlat = d * math.cos(math.radians(bearing_deg)) / 111_320.0
        dlon = (
            d
            * math.sin(math.radians(bearing_deg))
            / (111_320.0 * math.cos(math.radians(start.lat)))
        )
        return cls([(0.0, start), (seconds, Fix(start.lat + dlat, start.lon + dlon, start.hdop))])
