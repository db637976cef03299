"""Generate the protocol v1 golden vectors (protocol/vectors/*.json), deterministically.

Run ``python protocol/vectors/generate.py`` to rewrite the files and
``python protocol/vectors/generate.py --check`` to verify the committed files
match (exit 1 on drift). One vector per file, named after the vector, so the
MicroPython runner can load them one at a time under a small heap.

Secrets are synthetic: sha256 of a fixed label, never a real device's key.
Invalid frames are built so that exactly one check of SPEC.md §11 fails
(malformed frames are re-signed when the failing check comes after the tag).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import struct
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import auxcodec as codec  # noqa: E402  (the one codec, protocol/auxcodec.py)

# SPEC.md §14 worked-example secret: bytes 0x00..0x1f (test only).
SPEC_SECRET = bytes(range(32))


def _secret(label: str) -> bytes:
    return hashlib.sha256(b"auxilio test vector secret: " + label.encode()).digest()


S_BRACELET = _secret("bracelet")
S_BUTTON = _secret("street button")
S_OTHER = _secret("another device")

DEV_SPEC = 0x12345678  # prints as 0938-NKRT (SPEC.md §2)
DEV_BRACELET = 0x0000A1B2
DEV_BUTTON = 0x00C4B070
TS = 1764350000  # 2025-11-28T17:13:20Z


def _fields(ftype: str, device: int, counter: int, ts: int, **kw: object) -> dict:
    f = {
        "type": ftype,
        "device": codec.device_str(device),
        "counter": counter,
        "timestamp": ts,
        "test": False,
        "clock_synced": False,
        "retransmission": False,
    }
    f.update(kw)
    return f


def _loc(
    lat=194326000, lon=-991332000, acc=12, age=3, batt=87, rssi=-67, bearer="lte", pressed=None
):
    return {
        "lat_e7": lat,
        "lon_e7": lon,
        "accuracy_m": acc,
        "fix_age_s": age,
        "battery": batt,
        "rssi": rssi,
        "bearer": bearer,
        "pressed_at": pressed,
    }


NO_FIX = _loc(None, None, None, None, 64, -91, "wifi")


def _hb(**kw: object) -> dict:
    d = {
        "battery": 72,
        "rssi": -80,
        "bearer": "wifi",
        "outbox": 0,
        "fw": "0.1.0",
        "status": 0,
        "interval_s": 900,
        "modem_fault": "none",
    }
    d.update(kw)
    return d


# (name, description, secret, fields)
VALID: list[tuple[str, str, bytes, dict]] = [
    (
        "spec_example_alert",
        "SPEC.md §14 worked example: ALERT, clock synced, Mexico City, over LTE",
        SPEC_SECRET,
        _fields("ALERT", DEV_SPEC, 7, TS, clock_synced=True, **_loc(pressed=TS - 2)),
    ),
    (
        "spec_example_ack",
        "SPEC.md §14 worked example: the gateway's ACK (received) for counter 7",
        SPEC_SECRET,
        _fields(
            "ACK",
            DEV_SPEC,
            7,
            TS + 1,
            clock_synced=True,
            acked_type="ALERT",
            disposition="received",
            reason="none",
            high_water=7,
        ),
    ),
    (
        "alert_no_fix",
        "ALERT without a GNSS fix: location, accuracy and fix age are null; clock unknown",
        S_BRACELET,
        _fields("ALERT", DEV_BRACELET, 1, 0, **NO_FIX),
    ),
    (
        "alert_north_east_extreme",
        "ALERT at +90° latitude, +180° longitude, accuracy 0, fresh fix, full battery",
        S_BRACELET,
        _fields(
            "ALERT",
            DEV_BRACELET,
            2,
            TS,
            clock_synced=True,
            **_loc(900000000, 1800000000, 0, 0, 100, 127, "wifi", pressed=TS),
        ),
    ),
    (
        "alert_south_west_extreme",
        "ALERT at -90° latitude, -180° longitude, largest accuracy/age, empty battery",
        S_BRACELET,
        _fields(
            "ALERT",
            DEV_BRACELET,
            3,
            TS,
            clock_synced=True,
            **_loc(-900000000, -1800000000, 0xFFFE, 0xFFFE, 0, -127, "sms", pressed=1),
        ),
    ),
    (
        "alert_unknown_battery_rssi",
        "ALERT with battery, RSSI and bearer unknown (0xFF, -128, none) but a valid fix",
        S_BRACELET,
        _fields("ALERT", DEV_BRACELET, 4, TS, **_loc(batt=None, rssi=None, bearer="none")),
    ),
    (
        "alert_counter_zero_time_zero",
        "ALERT with counter 0 and timestamp 0 (clock unknown), device id 0",
        S_BRACELET,
        _fields("ALERT", 0, 0, 0, **_loc()),
    ),
    (
        "alert_counter_max_time_max",
        "ALERT with counter 0xFFFFFFFF, timestamp 0xFFFFFFFF, device id 0xFFFFFFFF",
        S_BRACELET,
        _fields(
            "ALERT",
            0xFFFFFFFF,
            0xFFFFFFFF,
            0xFFFFFFFF,
            clock_synced=True,
            **_loc(pressed=0xFFFFFFFF),
        ),
    ),
    (
        "alert_retransmission",
        "ALERT retransmitted (§12.3): same counter, ciphertext and press time, new timestamp",
        S_BRACELET,
        _fields(
            "ALERT",
            DEV_BRACELET,
            5,
            TS + 30,
            clock_synced=True,
            retransmission=True,
            **_loc(pressed=TS - 1),
        ),
    ),
    (
        "alert_test_flag",
        "ALERT during a drill: test flag set, must be recorded but never dispatched",
        S_BUTTON,
        _fields("ALERT", DEV_BUTTON, 10, TS, test=True, clock_synced=True, **_loc()),
    ),
    (
        "cancel_gesture",
        "CANCEL by the wearer's gesture, referring to ALERT counter 5",
        S_BRACELET,
        _fields(
            "CANCEL", DEV_BRACELET, 6, TS + 40, clock_synced=True, ref_counter=5, reason="gesture"
        ),
    ),
    (
        "cancel_remote_max_ref",
        "CANCEL from the C4 side (remote) referring to counter 0xFFFFFFFF",
        S_BRACELET,
        _fields("CANCEL", DEV_BRACELET, 7, 0, ref_counter=0xFFFFFFFF, reason="remote"),
    ),
    (
        "heartbeat_typical",
        "HEARTBEAT from a bracelet: battery 72 %, Wi-Fi, empty outbox, 900 s interval",
        S_BRACELET,
        _fields("HEARTBEAT", DEV_BRACELET, 8, TS, clock_synced=True, **_hb()),
    ),
    (
        "heartbeat_all_flags_unknowns",
        "HEARTBEAT with test+clock_synced+retransmission, unknown battery/RSSI, all status bits",
        S_BUTTON,
        _fields(
            "HEARTBEAT",
            DEV_BUTTON,
            11,
            TS,
            test=True,
            clock_synced=True,
            retransmission=True,
            **_hb(
                battery=None,
                rssi=None,
                bearer="none",
                outbox=255,
                fw="255.255.255",
                status=0x0F,
                modem_fault="other",
                interval_s=65535,
            ),
        ),
    ),
    (
        "heartbeat_modem_sim_missing",
        "HEARTBEAT from an LTE bracelet whose SIM is gone: modem_fault sim_missing (§8.3)",
        S_BRACELET,
        _fields(
            "HEARTBEAT",
            DEV_BRACELET,
            31,
            TS,
            clock_synced=True,
            **_hb(bearer="none", rssi=None, modem_fault="sim_missing"),
        ),
    ),
    (
        "tamper_open",
        "TAMPER: street button enclosure opened",
        S_BUTTON,
        _fields("TAMPER", DEV_BUTTON, 12, TS, clock_synced=True, open=True),
    ),
    (
        "tamper_closed",
        "TAMPER: enclosure closed again",
        S_BUTTON,
        _fields("TAMPER", DEV_BUTTON, 13, TS + 60, clock_synced=True, open=False),
    ),
    (
        "power_mains_lost",
        "POWER: street button lost mains, running on battery at 99 %",
        S_BUTTON,
        _fields("POWER", DEV_BUTTON, 14, TS, clock_synced=True, mains=False, battery=99),
    ),
    (
        "power_mains_restored",
        "POWER: mains restored, battery unknown",
        S_BUTTON,
        _fields("POWER", DEV_BUTTON, 15, TS + 3600, clock_synced=True, mains=True, battery=None),
    ),
    (
        "low_battery",
        "LOW_BATTERY: battery 19 % crossed the 20 % threshold",
        S_BRACELET,
        _fields("LOW_BATTERY", DEV_BRACELET, 9, TS, clock_synced=True, battery=19, threshold=20),
    ),
    (
        "test_frame_provisioning",
        "TEST frame during provisioning: encrypted like ALERT, test flag set, no fix yet",
        S_BRACELET,
        _fields("TEST", DEV_BRACELET, 0, 0, test=True, **NO_FIX),
    ),
    (
        "test_frame_with_fix",
        "TEST frame in a self-test with a fix",
        S_BUTTON,
        _fields("TEST", DEV_BUTTON, 16, TS, clock_synced=True, **_loc(bearer="wifi", pressed=TS)),
    ),
    (
        "boot_power_on",
        "BOOT after power-on, firmware 0.1.0, two frames recovered from flash",
        S_BRACELET,
        _fields("BOOT", DEV_BRACELET, 10, 0, reset_cause="power_on", fw="0.1.0", outbox=2),
    ),
    (
        "boot_watchdog",
        "BOOT after a watchdog reset, firmware 1.12.3, empty outbox",
        S_BUTTON,
        _fields("BOOT", DEV_BUTTON, 17, 0, reset_cause="watchdog", fw="1.12.3", outbox=0),
    ),
    (
        "ack_attending",
        "ACK attending: an operator has taken the alert (one long pulse)",
        S_BRACELET,
        _fields(
            "ACK",
            DEV_BRACELET,
            5,
            TS + 45,
            clock_synced=True,
            acked_type="ALERT",
            disposition="attending",
            reason="none",
            high_water=9,
        ),
    ),
    (
        "ack_time_nak",
        "ACK time_nak: device clock outside the window; header timestamp = server time",
        S_BRACELET,
        _fields(
            "ACK",
            DEV_BRACELET,
            4,
            TS + 2,
            clock_synced=True,
            acked_type="ALERT",
            disposition="time_nak",
            reason="none",
            high_water=9,
        ),
    ),
    (
        "ack_rejected_replay",
        "ACK rejected/replay for a CANCEL below the anti-replay window",
        S_BRACELET,
        _fields(
            "ACK",
            DEV_BRACELET,
            1,
            TS,
            clock_synced=True,
            acked_type="CANCEL",
            disposition="rejected",
            reason="replay",
            high_water=1000,
        ),
    ),
    (
        "ack_rejected_collision",
        "ACK rejected/collision: counter 2 names another stored frame; the C4 has seen up to "
        "counter 0x00100040, so the device moves its counters above that and re-sends (§12.2)",
        S_BRACELET,
        _fields(
            "ACK",
            DEV_BRACELET,
            2,
            TS,
            clock_synced=True,
            acked_type="ALERT",
            disposition="rejected",
            reason="collision",
            high_water=0x00100040,
        ),
    ),
    (
        "ack_rejected_revoked",
        "ACK rejected/revoked for a TEST frame from a revoked device",
        S_BUTTON,
        _fields(
            "ACK",
            DEV_BUTTON,
            16,
            TS,
            clock_synced=True,
            acked_type="TEST",
            disposition="rejected",
            reason="revoked",
            high_water=0,
        ),
    ),
    (
        "config_all_keys",
        "CONFIG sequence 3 with every key: heartbeat 60 s, discreet, 30 s cancel window, 1500 ms "
        "hold, 300 s test window, one self-test now",
        S_BRACELET,
        _fields(
            "CONFIG",
            DEV_BRACELET,
            3,
            TS,
            clock_synced=True,
            heartbeat_s=60,
            discreet=True,
            cancel_window_s=30,
            hold_ms=1500,
            test_window_s=300,
            selftest=1,
        ),
    ),
    (
        "config_partial",
        "CONFIG sequence 0xFFFFFFFF with only heartbeat_s = 0xFFFFFFFF and discreet off",
        S_BUTTON,
        _fields("CONFIG", DEV_BUTTON, 0xFFFFFFFF, TS, heartbeat_s=0xFFFFFFFF, discreet=False),
    ),
    (
        "config_selftest_now",
        "CONFIG sequence 9 asking for one TEST frame now (selftest = 1, SPEC §8.10.1)",
        S_BRACELET,
        _fields("CONFIG", DEV_BRACELET, 9, TS, clock_synced=True, selftest=1),
    ),
    (
        "config_selftest_silent",
        "CONFIG sequence 13 asking for one TEST frame now, silently (selftest = 2: a scheduled "
        "self-test gives the wearer no feedback, SPEC §8.10.1)",
        S_BUTTON,
        _fields("CONFIG", DEV_BUTTON, 13, TS, selftest=2),
    ),
    (
        "config_test_window",
        "CONFIG sequence 10 opening a 120 s test window (test_window_s = 120, SPEC §8.10.1)",
        S_BRACELET,
        _fields("CONFIG", DEV_BRACELET, 10, TS, clock_synced=True, test_window_s=120),
    ),
    (
        "config_test_window_closed",
        "CONFIG sequence 11 closing the test window (test_window_s = 0) with the hold kept",
        S_BUTTON,
        _fields("CONFIG", DEV_BUTTON, 11, TS, hold_ms=1500, test_window_s=0),
    ),
    (
        "config_empty",
        "CONFIG with an empty payload (nothing to change), sequence 1",
        S_BUTTON,
        _fields("CONFIG", DEV_BUTTON, 1, 0),
    ),
]


def _valid_fields(name: str) -> dict:
    return next(v[3] for v in VALID if v[0] == name)


def _sign(secret: bytes, body: bytes) -> bytes:
    """Append the §7 tag for body (header + payload), choosing the key by direction."""
    k = codec.Keys(secret)
    return body + k.mac(body[1]).tag(body)


def _header(ftype: int, flags: int, device: int, counter: int, ts: int, length: int) -> bytes:
    return struct.pack(">BBBIIIB", 1, ftype, flags, device, counter, ts, length)


def _flip(frame: bytes, byte: int, bit: int = 0) -> bytes:
    b = bytearray(frame)
    b[byte] ^= 1 << bit
    return bytes(b)


def _invalid() -> list[tuple[str, str, bytes, bytes, str]]:
    """(name, description, secret, frame, reason): exactly one §11 check fails in each."""
    alert = codec.encode(_valid_fields("alert_no_fix"), S_BRACELET)
    hb = codec.encode(_valid_fields("heartbeat_typical"), S_BRACELET)
    ack = codec.encode(_valid_fields("spec_example_ack"), SPEC_SECRET)
    plain_hb = hb[16:-16]
    up = codec.FLAG_CLOCK_SYNCED
    out = [
        (
            "invalid_bad_tag",
            "HEARTBEAT whose last tag byte was altered",
            S_BRACELET,
            hb[:-1] + bytes([hb[-1] ^ 0xFF]),
            "bad_tag",
        ),
        (
            "invalid_flipped_ciphertext_bit",
            "ALERT with one bit of the encrypted latitude flipped (tag checked before decrypt)",
            S_BRACELET,
            _flip(alert, 16, 3),
            "bad_tag",
        ),
        (
            "invalid_flipped_header_bit",
            "ALERT with one bit of the counter flipped",
            S_BRACELET,
            _flip(alert, 10, 0),
            "bad_tag",
        ),
        (
            "invalid_wrong_key",
            "a genuine ALERT checked with another device's secret",
            S_OTHER,
            alert,
            "bad_tag",
        ),
        (
            "invalid_uplink_as_downlink",
            "ACK body signed with the uplink MAC key instead of the downlink key (§6.1)",
            SPEC_SECRET,
            ack[:-16] + codec.Keys(SPEC_SECRET).up.tag(ack[:-16]),
            "bad_tag",
        ),
        ("invalid_empty", "zero bytes", S_BRACELET, b"", "truncated"),
        (
            "invalid_truncated_header",
            "only the first 20 bytes of an ALERT (shorter than header + tag)",
            S_BRACELET,
            alert[:20],
            "truncated",
        ),
        (
            "invalid_truncated_tag",
            "ALERT missing the last byte of its tag",
            S_BRACELET,
            alert[:-1],
            "truncated",
        ),
        (
            "invalid_trailing_bytes",
            "HEARTBEAT followed by one extra byte",
            S_BRACELET,
            hb + b"\x00",
            "trailing_bytes",
        ),
        (
            "invalid_bad_version",
            "HEARTBEAT with version byte 2, correctly signed",
            S_BRACELET,
            _sign(S_BRACELET, b"\x02" + hb[1:-16]),
            "bad_version",
        ),
        (
            "invalid_unknown_type",
            "frame type 0x09 (not in v1), correctly signed",
            S_BRACELET,
            _sign(S_BRACELET, _header(0x09, up, DEV_BRACELET, 20, TS, 1) + b"\x00"),
            "unknown_type",
        ),
        (
            "invalid_unknown_downlink_type",
            "downlink frame type 0x83 (not in v1), correctly signed",
            S_BRACELET,
            _sign(S_BRACELET, _header(0x83, up, DEV_BRACELET, 20, TS, 0)),
            "unknown_type",
        ),
        (
            "invalid_length_mismatch",
            "HEARTBEAT whose length byte says 11 with 11 payload bytes present (fixed length 10)",
            S_BRACELET,
            _sign(S_BRACELET, _header(0x03, up, DEV_BRACELET, 8, TS, 11) + plain_hb + b"\x00"),
            "length_mismatch",
        ),
        (
            "invalid_config_too_long",
            "CONFIG whose length byte says 65 (maximum 64)",
            S_BUTTON,
            _sign(S_BUTTON, _header(0x82, 0, DEV_BUTTON, 2, TS, 65) + b"\x00" * 65),
            "length_mismatch",
        ),
        (
            "invalid_reserved_flag",
            "HEARTBEAT with reserved flag bit 0x10 set, correctly signed",
            S_BRACELET,
            _sign(S_BRACELET, _header(0x03, up | 0x10, DEV_BRACELET, 8, TS, 10) + plain_hb),
            "bad_flags",
        ),
        (
            "invalid_alert_not_encrypted",
            "ALERT sent in clear (encrypted flag clear), correctly signed: location must never travel in clear",
            S_BRACELET,
            _sign(
                S_BRACELET,
                _header(0x01, up, DEV_BRACELET, 21, TS, 19)
                + struct.pack(">iiHHBbBI", 194326000, -991332000, 12, 3, 87, -67, 2, TS),
            ),
            "bad_flags",
        ),
        (
            "invalid_heartbeat_encrypted_flag",
            "HEARTBEAT with the encrypted flag set, correctly signed",
            S_BRACELET,
            _sign(
                S_BRACELET,
                _header(0x03, up | codec.FLAG_ENCRYPTED, DEV_BRACELET, 8, TS, 10) + plain_hb,
            ),
            "bad_flags",
        ),
        (
            "invalid_bad_bearer",
            "HEARTBEAT with bearer value 9 (outside the enumeration), correctly signed",
            S_BRACELET,
            _sign(
                S_BRACELET,
                _header(0x03, up, DEV_BRACELET, 8, TS, 10) + plain_hb[:2] + b"\x09" + plain_hb[3:],
            ),
            "bad_payload",
        ),
        (
            "invalid_battery_over_100",
            "POWER with battery 101 %, correctly signed",
            S_BUTTON,
            _sign(S_BUTTON, _header(0x05, up, DEV_BUTTON, 14, TS, 2) + b"\x00\x65"),
            "bad_payload",
        ),
        (
            "invalid_latitude_out_of_range",
            "ALERT with latitude 90.0000001° (encrypted, correctly signed)",
            S_BRACELET,
            _encrypted_alert(S_BRACELET, DEV_BRACELET, 22, 900000001, 0),
            "bad_payload",
        ),
        (
            "invalid_tamper_value",
            "TAMPER with open = 2 (boolean byte must be 0 or 1), correctly signed",
            S_BUTTON,
            _sign(S_BUTTON, _header(0x04, up, DEV_BUTTON, 12, TS, 1) + b"\x02"),
            "bad_payload",
        ),
        (
            "invalid_config_truncated_tlv",
            "CONFIG whose TLV says 4 bytes but only 2 follow, correctly signed",
            S_BUTTON,
            _sign(S_BUTTON, _header(0x82, 0, DEV_BUTTON, 2, TS, 4) + b"\x01\x04\x00\x3c"),
            "bad_payload",
        ),
        (
            "invalid_ack_reason_without_rejection",
            "ACK received that carries reason replay (§8.9: a reason only when rejected)",
            SPEC_SECRET,
            _sign(
                SPEC_SECRET,
                _header(0x81, up, DEV_SPEC, 7, TS, 7) + b"\x01\x00\x03" + struct.pack(">I", 7),
            ),
            "bad_payload",
        ),
        (
            "invalid_ack_rejected_without_reason",
            "ACK rejected with reason none (§8.9: a rejection always says why)",
            SPEC_SECRET,
            _sign(
                SPEC_SECRET,
                _header(0x81, up, DEV_SPEC, 7, TS, 7) + b"\x01\x03\x00" + struct.pack(">I", 7),
            ),
            "bad_payload",
        ),
        (
            "invalid_ack_acked_type_downlink",
            "ACK whose acked_type is CONFIG (§8.9: only uplink frames are acknowledged)",
            SPEC_SECRET,
            _sign(
                SPEC_SECRET,
                _header(0x81, up, DEV_SPEC, 7, TS, 7) + b"\x82\x00\x00" + struct.pack(">I", 7),
            ),
            "bad_payload",
        ),
        (
            "invalid_config_repeated_unknown_key",
            "CONFIG with the unknown key 0x7f twice (§8.10: no key twice, known or not)",
            S_BUTTON,
            _sign(S_BUTTON, _header(0x82, 0, DEV_BUTTON, 2, TS, 6) + b"\x7f\x01a\x7f\x01b"),
            "bad_payload",
        ),
        (
            "invalid_config_selftest_value",
            "CONFIG with selftest = 3 (§8.10: 0, 1 or 2), correctly signed",
            S_BRACELET,
            _sign(S_BRACELET, _header(0x82, 0, DEV_BRACELET, 12, TS, 3) + b"\x06\x01\x03"),
            "bad_payload",
        ),
        (
            "invalid_config_test_window_length",
            "CONFIG whose test_window_s TLV is 1 byte instead of 2, correctly signed",
            S_BRACELET,
            _sign(S_BRACELET, _header(0x82, 0, DEV_BRACELET, 12, TS, 3) + b"\x05\x01\x3c"),
            "bad_payload",
        ),
        (
            "invalid_config_repeated_key",
            "CONFIG with hold_ms twice, correctly signed",
            S_BUTTON,
            _sign(
                S_BUTTON,
                _header(0x82, 0, DEV_BUTTON, 2, TS, 8) + b"\x04\x02\x05\xdc\x04\x02\x05\xdc",
            ),
            "bad_payload",
        ),
    ]
    return out


def _encrypted_alert(secret: bytes, device: int, counter: int, lat: int, lon: int) -> bytes:
    k = codec.Keys(secret)
    payload = bytearray(struct.pack(">iiHHBbBI", lat, lon, 5, 1, 50, -70, 1, TS))
    k.crypt(payload, 0, len(payload), 0x01, device, counter)
    flags = codec.FLAG_CLOCK_SYNCED | codec.FLAG_ENCRYPTED
    return _sign(secret, _header(0x01, flags, device, counter, TS, 19) + bytes(payload))


# Forward compatibility (§8.10, §13): unknown CONFIG keys are skipped.
def _config_unknown_key() -> tuple[str, str, bytes, bytes, dict]:
    body = _header(0x82, 0, DEV_BUTTON, 4, TS, 9) + b"\x7f\x03abc" + b"\x04\x02\x03\xe8"
    frame = _sign(S_BUTTON, body)
    fields = codec.decode(frame, S_BUTTON)
    return (
        "config_unknown_key_skipped",
        "CONFIG with an unknown key 0x7f (skipped, §13) and hold_ms 1000",
        S_BUTTON,
        frame,
        fields,
    )


# §8.3: reserved HEARTBEAT status bits are ignored on receipt (dropped from the field).
def _heartbeat_reserved_bits() -> tuple[str, str, bytes, bytes, dict]:
    hb = codec.encode(_valid_fields("heartbeat_typical"), S_BRACELET)
    body = bytearray(hb[:-16])
    body[23] = 0xB5  # status: reserved bit 7, fault 3 (denied), mains + charging
    frame = _sign(S_BRACELET, bytes(body))
    fields = codec.decode(frame, S_BRACELET)
    assert (fields["status"], fields["modem_fault"]) == (0x05, "denied")
    return (
        "heartbeat_reserved_status_bits",
        "HEARTBEAT with status 0xB5 from a future sender: status 0x05, modem_fault denied, "
        "the reserved bit 7 dropped (§8.3)",
        S_BRACELET,
        frame,
        fields,
    )


def build() -> dict[str, dict]:
    """All vectors, name -> vector object, in a stable order."""
    vectors: dict[str, dict] = {}
    for name, desc, secret, fields in VALID:
        frame = codec.encode(fields, secret)
        decoded = codec.decode(frame, secret)
        vectors[name] = {
            "name": name,
            "description": desc,
            "secret_hex": secret.hex(),
            "frame_hex": frame.hex(),
            "valid": True,
            "fields": decoded,
        }
    # A retransmission is the original frame restamped (§12.3): same ciphertext.
    retx = _valid_fields("alert_retransmission")
    first = dict(retx, timestamp=TS, retransmission=False)
    buf = bytearray(codec.encode(first, S_BRACELET))
    codec.restamp(
        buf, len(buf), codec.Keys(S_BRACELET), retx["timestamp"], codec.FLAG_RETRANSMISSION
    )
    assert buf.hex() == vectors["alert_retransmission"]["frame_hex"], "restamp drift"
    for name, desc, secret, frame, fields in (_config_unknown_key(), _heartbeat_reserved_bits()):
        vectors[name] = {
            "name": name,
            "description": desc,
            "secret_hex": secret.hex(),
            "frame_hex": frame.hex(),
            "valid": True,
            "fields": fields,
            # decode is not injective here: encode() drops what decode ignored
            "encode_roundtrip": False,
        }
    for name, desc, secret, frame, reason in _invalid():
        try:
            codec.decode(frame, secret)
        except codec.FrameError as exc:
            if exc.reason != reason:
                raise AssertionError(f"{name}: codec says {exc.reason}, vector says {reason}")
        else:
            raise AssertionError(f"{name}: codec accepted an invalid vector")
        vectors[name] = {
            "name": name,
            "description": desc,
            "secret_hex": secret.hex(),
            "frame_hex": frame.hex(),
            "valid": False,
            "error": reason,
        }
    return vectors


def render(vector: dict) -> str:
    return json.dumps(vector, indent=2, sort_keys=False) + "\n"


def main(argv: list[str]) -> int:
    check = "--check" in argv
    vectors = build()
    # Guard the spec's worked example against silent drift (SPEC.md §14).
    assert hmac.compare_digest(
        vectors["spec_example_alert"]["frame_hex"],
        "01010612345678000000076929d830138c387608f9ba805817d58094d4e55223b03514"
        "8b25bbd8b3ae56ba0bed0a9b1ae4b1cf",
    ), "SPEC.md §14 example no longer matches the codec"
    assert vectors["spec_example_ack"]["frame_hex"] == (
        "01810212345678000000076929d8310701000000000007d9a7eb374b765e0a3c614342e608a0a0"
    ), "SPEC.md §14 ACK example no longer matches the codec"
    drift = []
    wanted = {f"{name}.json" for name in vectors}
    for name, vector in vectors.items():
        path = HERE / f"{name}.json"
        text = render(vector)
        if check:
            if not path.exists() or path.read_text() != text:
                drift.append(path.name)
        else:
            path.write_text(text)
    stale = sorted(p.name for p in HERE.glob("*.json") if p.name not in wanted)
    if check:
        drift += stale
        if drift:
            print("vectors drifted from generate.py: " + ", ".join(drift), file=sys.stderr)
            return 1
        print(f"{len(vectors)} vectors up to date")
        return 0
    for name in stale:
        (HERE / name).unlink()
    print(f"wrote {len(vectors)} vectors to {HERE}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
