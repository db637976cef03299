"""Hypothesis properties of the codec: round trip, tamper evidence, total decoding, keystream uniqueness, sizes."""

from __future__ import annotations

import struct

import pytest
from auxilio.protocol import FrameError, codec, sms
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.protocol.strategies import ALL_TYPES, SECRETS, U32, UPLINK, fields

# SPEC §11's rejection reasons: a decoder that rejects says one of these, nothing else.
REASONS = {
    "truncated",
    "bad_version",
    "unknown_type",
    "length_mismatch",
    "trailing_bytes",
    "bad_tag",
    "bad_flags",
    "bad_payload",
    "bad_device_id",
    "bad_field",
    "bad_key",
}

# Modest counts: the machine is small and shared, but every type gets its own run.
PER_TYPE = settings(max_examples=120, deadline=None)
ANY = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.parametrize("ftype", ALL_TYPES)
def test_encode_decode_identity(ftype: str) -> None:
    @PER_TYPE
    @given(f=fields(ftype), secret=SECRETS)
    def check(f: dict, secret: bytes) -> None:
        frame = codec.encode(f, secret)
        assert codec.decode(frame, secret) == f
        assert codec.encode(codec.decode(frame, secret), secret) == frame

    check()


@ANY
@given(f=fields(), secret=SECRETS, data=st.data())
def test_any_single_bit_flip_fails(f: dict, secret: bytes, data: st.DataObject) -> None:
    frame = bytearray(codec.encode(f, secret))
    bit = data.draw(st.integers(0, len(frame) * 8 - 1))
    frame[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(FrameError):
        codec.decode(bytes(frame), secret)


@pytest.mark.parametrize("ftype", ALL_TYPES)
def test_every_single_bit_flip_fails_exhaustively(ftype: str) -> None:
    """Every bit position of one frame per type (not sampled)."""
    secret = bytes(range(32))
    f = _fixed_fields(ftype)
    frame = codec.encode(f, secret)
    for bit in range(len(frame) * 8):
        b = bytearray(frame)
        b[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(FrameError):
            codec.decode(bytes(b), secret)


def _fixed_fields(ftype: str) -> dict:
    from tests.protocol.vectors import VALID

    return next(v["fields"] for v in VALID if v["fields"]["type"] == ftype)


@ANY
@given(blob=st.binary(max_size=160), secret=SECRETS)
def test_arbitrary_bytes_are_rejected_with_a_reason(blob: bytes, secret: bytes) -> None:
    """Random bytes never carry a valid 128-bit tag: every one is rejected, with a §11 reason."""
    with pytest.raises(FrameError) as info:
        codec.decode(blob, secret)
    assert info.value.reason in REASONS


@ANY
@given(
    code=st.sampled_from(sorted(codec.TYPES)) | st.integers(0, 255),
    flags=st.integers(0, 255),
    length=st.integers(0, 255),
    tail=st.binary(max_size=120),
    secret=SECRETS,
)
def test_plausible_headers_are_rejected_with_a_reason(
    code: int, flags: int, length: int, tail: bytes, secret: bytes
) -> None:
    """Arbitrary bytes behind a well-formed-looking header reach the later checks, and are
    rejected there: without the key nobody makes a tag that verifies (a forgery accepted
    here would be an alert nobody sent)."""
    frame = struct.pack(">BBBIIIB", 1, code, flags, 7, 9, 0, length) + tail
    with pytest.raises(FrameError) as info:
        codec.decode(frame, secret)
    assert info.value.reason in REASONS


@settings(max_examples=100, deadline=None)
@given(secret=st.binary(max_size=80), kind=st.sampled_from(["bytes", "str", "none", "int"]))
def test_bad_keys_and_inputs_are_rejected(secret: bytes, kind: str) -> None:
    frame = {"bytes": b"\x01" * 40, "str": "01" * 20, "none": None, "int": 5}[kind]
    with pytest.raises(FrameError) as info:
        codec.decode(frame, secret)
    assert info.value.reason in REASONS
    if len(secret) != 32:
        with pytest.raises(FrameError) as info:
            codec.Keys(secret)
        assert info.value.reason == "bad_key"


@ANY
@given(
    f=fields("ALERT") | fields("TEST"),
    secret=SECRETS,
    other=U32,
    flip_device=st.booleans(),
)
def test_different_counters_never_share_a_keystream(
    f: dict, secret: bytes, other: int, flip_device: bool
) -> None:
    """Same plaintext under two counters (or two devices): the keystreams differ (§6.2)."""
    g = dict(f)
    if flip_device:
        g["device"] = codec.device_str(other)
    else:
        g["counter"] = other
    if g == f:
        return
    plain = codec.pack_payload(
        codec.type_code(f["type"]),
        codec._values_from_fields(codec.type_code(f["type"]), f),
    )
    ks = []
    for h in (f, g):
        ct = codec.encode(h, secret)[16:-16]
        ks.append(bytes(a ^ b for a, b in zip(ct, plain, strict=True)))
    assert ks[0] != ks[1]
    # And over a whole 64-byte span (four CTR blocks), not just the payload.
    k = codec.Keys(secret)
    spans = []
    for h in (f, g):
        buf = bytearray(64)
        k.crypt(buf, 0, 64, 0x01, codec.device_int(h["device"]), h["counter"])
        spans.append(bytes(buf))
    blocks = {spans[i][j : j + 16] for i in range(2) for j in range(0, 64, 16)}
    assert len(blocks) == 8


@settings(max_examples=100, deadline=None)
@given(f=fields(), secret=SECRETS, ts=U32)
def test_restamp_keeps_payload_changes_only_header(f: dict, secret: bytes, ts: int) -> None:
    """§12.3: a retransmission differs only in timestamp, flags and tag."""
    frame = codec.encode(f, secret)
    buf = bytearray(frame)
    codec.restamp(buf, len(buf), codec.Keys(secret), ts, set_flags=codec.FLAG_RETRANSMISSION)
    assert buf[16:-16] == frame[16:-16]
    got = codec.decode(bytes(buf), secret)
    assert got == dict(f, timestamp=ts, retransmission=True)


# ---------------------------------------------------------------- sizes ----

MAX_LOCATION = {
    "lat_e7": -900000000,
    "lon_e7": -1800000000,
    "accuracy_m": 0xFFFE,
    "fix_age_s": 0xFFFE,
    "pressed_at": 1764350000,
    "battery": 100,
    "rssi": -127,
    "bearer": "lte",
}


def test_alert_with_location_battery_rssi_fits_64_bytes() -> None:
    f = {"type": "ALERT", "device": codec.device_str(0xFFFFFFFF), "counter": 1, **MAX_LOCATION}
    assert len(codec.encode(f, bytes(32))) <= 64


def test_heartbeat_fits_48_bytes() -> None:
    assert len(codec.encode(_fixed_fields("HEARTBEAT"), bytes(32))) <= 48


@pytest.mark.parametrize("ftype", UPLINK)
def test_every_uplink_fits_one_sms(ftype: str) -> None:
    @settings(max_examples=20, deadline=None)
    @given(f=fields(ftype), secret=SECRETS)
    def check(f: dict, secret: bytes) -> None:
        frame = codec.encode(f, secret)
        body = sms.sms_encode(frame)
        assert len(body) <= 160 and body.isascii() and "\n" not in body
        assert sms.sms_decode(body) == frame
        if ftype in ("ALERT", "TEST"):
            assert len(frame) <= 64
        if ftype == "HEARTBEAT":
            assert len(frame) <= 48

    check()


def test_sms_decode_rejects_garbage_with_frame_error() -> None:
    with pytest.raises(FrameError) as info:
        sms.sms_decode("not base64 at all!")
    assert info.value.reason == "bad_encoding"


JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**40), 2**40)
    | st.floats(allow_nan=False)
    | st.text(max_size=6),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3)
    ),
    max_leaves=5,
)


@ANY
@given(f=fields(), value=JSON_VALUES, extra_key=st.text(max_size=12), data=st.data())
def test_encode_of_bad_fields_raises_only_frame_error(
    f: dict, value: object, extra_key: str, data: st.DataObject
) -> None:
    """Any JSON value in any field (as an operator tool might send) -> FrameError or a frame."""
    key = data.draw(st.sampled_from([*sorted(f), extra_key]))
    g = dict(f)
    g[key] = value
    try:
        frame = codec.encode(g, bytes(32))
    except FrameError as exc:
        assert exc.reason in REASONS
        return
    # Whatever was accepted is a frame the codec itself accepts, and means one thing.
    assert codec.encode(codec.decode(frame, bytes(32)), bytes(32)) == frame
