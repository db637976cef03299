"""Hypothesis strategies for protocol v1 fields, written from SPEC.md §3-§9 (the whole field space)."""

from __future__ import annotations

from hypothesis import strategies as st

from tests.protocol import reference as ref

U32 = st.integers(0, 0xFFFFFFFF)
UPLINK = ["ALERT", "CANCEL", "HEARTBEAT", "TAMPER", "POWER", "LOW_BATTERY", "TEST", "BOOT"]
ALL_TYPES = UPLINK + ["ACK", "CONFIG"]


def _opt(inner: st.SearchStrategy) -> st.SearchStrategy:
    return st.none() | inner


# Value domains per field; None = the §8 "unknown" sentinel.
PAYLOAD_FIELDS: dict[str, st.SearchStrategy] = {
    "lat_e7": _opt(st.integers(-900000000, 900000000)),
    "lon_e7": _opt(st.integers(-1800000000, 1800000000)),
    "accuracy_m": _opt(st.integers(0, 0xFFFE)),
    "fix_age_s": _opt(st.integers(0, 0xFFFE)),
    "battery": _opt(st.integers(0, 100)),
    "rssi": _opt(st.integers(-127, 127)),
    "bearer": st.sampled_from(ref.BEARER),
    "pressed_at": _opt(st.integers(1, 0xFFFFFFFF)),
    "high_water": U32,
    "ref_counter": U32,
    "outbox": st.integers(0, 255),
    "fw": st.tuples(*[st.integers(0, 255)] * 3).map(lambda t: ".".join(map(str, t))),
    "status": st.integers(0, 0x0F),
    "interval_s": st.integers(0, 0xFFFF),
    "open": st.booleans(),
    "mains": st.booleans(),
    "threshold": st.integers(0, 100),
    "reset_cause": st.sampled_from(ref.RESET_CAUSE),
    "acked_type": st.sampled_from(UPLINK),  # §8.9: only uplink frames are acknowledged
    "disposition": st.sampled_from(ref.DISPOSITION),
}
CANCEL_REASON = st.sampled_from(ref.CANCEL_REASON)


@st.composite
def fields(draw: st.DrawFn, ftype: str | None = None) -> dict:
    """A valid fields dict (decode's shape) for ftype, or for any type."""
    t = ftype or draw(st.sampled_from(ALL_TYPES))
    out: dict = {
        "type": t,
        "version": 1,
        "device": ref.device_str(draw(U32)),
        "counter": draw(U32),
        "timestamp": draw(U32),
        "test": draw(st.booleans()),
        "clock_synced": draw(st.booleans()),
        "encrypted": t in ref.ENCRYPTED_TYPES,
        "retransmission": draw(st.booleans()),
    }
    if t == "CONFIG":
        for name, value in (
            ("heartbeat_s", U32),
            ("discreet", st.booleans()),
            ("cancel_window_s", st.integers(0, 0xFFFF)),
            ("hold_ms", st.integers(0, 0xFFFF)),
            ("test_window_s", st.integers(0, 0xFFFF)),
            ("selftest", st.integers(0, 2)),
        ):
            if draw(st.booleans()):
                out[name] = draw(value)
        return out
    for name, *_ in ref.LAYOUTS[t]:
        if name == "reason" and t == "ACK":
            # §8.9: a reason exactly when the disposition is rejected.
            rejected = out["disposition"] == "rejected"
            out[name] = draw(st.sampled_from(ref.REASON[1:])) if rejected else "none"
        elif name == "reason":
            out[name] = draw(CANCEL_REASON)
        elif t == "LOW_BATTERY" and name == "battery":
            out[name] = draw(PAYLOAD_FIELDS["battery"])
        else:
            out[name] = draw(PAYLOAD_FIELDS[name])
    if t == "HEARTBEAT":
        out["modem_fault"] = draw(st.sampled_from(ref.MODEM_FAULT))
    return out


SECRETS = st.binary(min_size=32, max_size=32)
