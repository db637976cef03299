"""SPEC §13 revision 3: the points an independent implementation found ambiguous, decided once
and checked on both runtimes (CPython here, the real micropython for the SMS bodies)."""

from __future__ import annotations

import json

import pytest
from auxilio.protocol import FrameError, codec, sms

from tests.conftest import PROTOCOL, run_micropython
from tests.protocol import reference as ref

SECRET = bytes(range(32))
FRAME = bytes.fromhex(
    "01010612345678000000076929d830138c387608f9ba805817d58094d4e55223b03514"
    "8b25bbd8b3ae56ba0bed0a9b1ae4b1cf"
)
BODY = sms.sms_encode(FRAME)


def _ack(**kw: object) -> dict:
    f = {
        "type": "ACK",
        "device": "0938-NKRT",
        "counter": 7,
        "acked_type": "ALERT",
        "disposition": "received",
        "reason": "none",
        "high_water": 7,
    }
    f.update(kw)
    return f


@pytest.mark.parametrize(
    "fields",
    [
        _ack(reason="replay"),  # a reason without a rejection
        _ack(disposition="rejected"),  # a rejection without a reason
        _ack(acked_type="CONFIG"),  # only uplink frames are acknowledged
        _ack(acked_type="ACK"),
    ],
)
def test_ack_rules_refused_on_encode(fields: dict) -> None:
    with pytest.raises(FrameError) as e:
        codec.encode(fields, SECRET)
    assert e.value.reason == "bad_field"


def test_reserved_heartbeat_status_bits_refused_on_encode() -> None:
    hb = {
        "type": "HEARTBEAT",
        "device": "0938-NKRT",
        "counter": 1,
        "battery": 50,
        "rssi": -60,
        "bearer": "wifi",
        "outbox": 0,
        "fw": "0.1.0",
        "status": 0x10,
        "interval_s": 60,
    }
    with pytest.raises(FrameError) as e:
        codec.encode(hb, SECRET)
    assert e.value.reason == "bad_field"
    assert codec.decode(codec.encode(dict(hb, status=0x0F), SECRET), SECRET)["status"] == 0x0F


def test_the_error_message_example_is_a_valid_id() -> None:
    with pytest.raises(FrameError) as e:
        codec.device_int("123")
    example = str(e.value).rsplit(" ", 1)[-1]
    assert codec.device_int(example) == 0x12345678


# SMS bodies (§10.4): (body, accepted?)
SMS_CASES = [
    (BODY, True),
    (BODY + "\r\n", True),  # SMS gateways append CR/LF
    ("  " + BODY + "\n", True),
    (BODY[:20] + "\n" + BODY[20:], False),  # a line break inside
    (BODY[:20] + " " + BODY[20:], False),
    (BODY.rstrip("="), False),  # padding missing (this body ends with no padding? see below)
    (BODY[:-1] + "*", False),  # outside the alphabet
    (BODY + "=", False),
    (sms.sms_encode(b"\x01\x02")[:-2] + "x=", False),  # non-zero bits after the last byte
    ("", False),
    ("====", False),
]


def _strict(body: str) -> bool:
    try:
        sms.sms_decode(body)
    except FrameError as e:
        assert e.reason == "bad_encoding"
        return False
    return True


def test_sms_bodies_decode_strictly_on_cpython() -> None:
    for body, ok in SMS_CASES:
        if body == BODY.rstrip("=") and "=" not in BODY:
            continue  # this body needs no padding: nothing to remove
        assert _strict(body) is ok, repr(body)
    assert sms.sms_decode(BODY + "\r\n") == FRAME


def test_sms_bodies_decode_strictly_on_micropython() -> None:
    cases = [c for c in SMS_CASES if not (c[0] == BODY.rstrip("=") and "=" not in BODY)]
    script = (
        "import json, auxcodec as codec, auxsms as sms\n"
        f"cases = json.loads({json.dumps(json.dumps([b for b, _ in cases]))})\n"
        "out = []\n"
        "for b in cases:\n"
        "    try:\n"
        "        sms.sms_decode(b)\n"
        "        out.append(True)\n"
        "    except codec.FrameError as e:\n"
        "        out.append(e.reason)\n"
        "print(json.dumps(out))\n"
    )
    r = run_micropython(script, path=[PROTOCOL])
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert got == [True if ok else "bad_encoding" for _b, ok in cases]


def test_reference_agrees_on_the_new_invalid_vectors() -> None:
    from tests.protocol.vectors import load_vectors

    names = {
        "invalid_ack_reason_without_rejection",
        "invalid_ack_rejected_without_reason",
        "invalid_ack_acked_type_downlink",
        "invalid_config_repeated_unknown_key",
    }
    seen = set()
    for v in load_vectors():
        if v["name"] in names:
            seen.add(v["name"])
            with pytest.raises(ref.Reject) as e:
                ref.decode(bytes.fromhex(v["frame_hex"]), bytes.fromhex(v["secret_hex"]))
            assert e.value.reason == v["error"]
        if v["name"] == "heartbeat_reserved_status_bits":
            got = ref.decode(bytes.fromhex(v["frame_hex"]), bytes.fromhex(v["secret_hex"]))
            assert got["status"] == v["fields"]["status"] == 0x05
    assert seen == names
