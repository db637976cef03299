"""Independent protocol v1 reference, written from SPEC.md alone (hmac + cryptography AES-CTR).

Shares no code with protocol/auxcodec.py: tests compare the two. Only what the
spec says is here; fields dicts have the same shape as codec.decode returns.
"""

from __future__ import annotations

import hashlib
import hmac
import struct

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"  # §2

TYPE_NAMES = {
    0x01: "ALERT",
    0x02: "CANCEL",
    0x03: "HEARTBEAT",
    0x04: "TAMPER",
    0x05: "POWER",
    0x06: "LOW_BATTERY",
    0x07: "TEST",
    0x08: "BOOT",
    0x81: "ACK",
    0x82: "CONFIG",
}
TYPE_CODES = {v: k for k, v in TYPE_NAMES.items()}
ENCRYPTED_TYPES = {"ALERT", "TEST"}  # §4, §6.2

FLAGS = (("test", 0x01), ("clock_synced", 0x02), ("encrypted", 0x04), ("retransmission", 0x08))

BEARER = ["none", "wifi", "lte", "sms"]  # §9
RESET_CAUSE = [
    "unknown",
    "power_on",
    "hard_reset",
    "watchdog",
    "deep_sleep",
    "soft_reset",
    "brownout",
    "panic",
]
DISPOSITION = ["received", "attending", "time_nak", "rejected"]
REASON = ["none", "revoked", "retired", "replay", "policy", "malformed", "collision"]
CANCEL_REASON = ["gesture", "remote"]
MODEM_FAULT = [
    "none",
    "sim_missing",
    "sim_locked",
    "denied",
    "no_service",
    "not_responding",
    "data_down",
    "other",
]  # §9

# §8 payload layouts: (field, struct code, decoder kind, unknown sentinel or None)
_LOC = [
    ("lat_e7", "i", "num", -0x80000000),
    ("lon_e7", "i", "num", -0x80000000),
    ("accuracy_m", "H", "num", 0xFFFF),
    ("fix_age_s", "H", "num", 0xFFFF),
    ("battery", "B", "num", 0xFF),
    ("rssi", "b", "num", -128),
    ("bearer", "B", BEARER, None),
    ("pressed_at", "I", "num", 0),  # §8.1: 0 = unknown
]
LAYOUTS: dict[str, list[tuple[str, str, object, int | None]]] = {
    "ALERT": _LOC,
    "TEST": _LOC,
    "CANCEL": [("ref_counter", "I", "num", None), ("reason", "B", CANCEL_REASON, None)],
    "HEARTBEAT": [
        ("battery", "B", "num", 0xFF),
        ("rssi", "b", "num", -128),
        ("bearer", "B", BEARER, None),
        ("outbox", "B", "num", None),
        ("fw", "3s", "fw", None),
        ("status", "B", "num", None),
        ("interval_s", "H", "num", None),
    ],
    "TAMPER": [("open", "B", "bool", None)],
    "POWER": [("mains", "B", "bool", None), ("battery", "B", "num", 0xFF)],
    "LOW_BATTERY": [("battery", "B", "num", 0xFF), ("threshold", "B", "num", None)],
    "BOOT": [
        ("reset_cause", "B", RESET_CAUSE, None),
        ("fw", "3s", "fw", None),
        ("outbox", "B", "num", None),
    ],
    "ACK": [
        ("acked_type", "B", "type", None),
        ("disposition", "B", DISPOSITION, None),
        ("reason", "B", REASON, None),
        ("high_water", "I", "num", None),  # §8.9
    ],
}
# §9 domains checked on decode
DOMAIN = {
    "lat_e7": (-900000000, 900000000),
    "lon_e7": (-1800000000, 1800000000),
    "battery": (0, 100),
}
# §8.10 CONFIG TLVs
CONFIG_TLV = {
    0x01: ("heartbeat_s", ">I"),
    0x02: ("discreet", ">B"),
    0x03: ("cancel_window_s", ">H"),
    0x04: ("hold_ms", ">H"),
    0x05: ("test_window_s", ">H"),
    0x06: ("selftest", ">B"),
}


class Reject(Exception):
    """The reference refuses a frame; .reason is the §11 code."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def derive(secret: bytes) -> tuple[bytes, bytes, bytes]:
    """§6.1: (K_up, K_dn, K_enc)."""

    def expand(label: bytes) -> bytes:
        return hmac.new(secret, label + b"\x01", hashlib.sha256).digest()

    return (
        expand(b"auxilio v1 uplink mac"),
        expand(b"auxilio v1 downlink mac"),
        expand(b"auxilio v1 payload enc")[:16],
    )


def ctr_block(ftype: int, device: int, counter: int) -> bytes:
    """§6.2 initial counter block: direction | device | counter | 000000 | block 0."""
    return bytes([ftype & 0x80]) + struct.pack(">II", device, counter) + b"\x00" * 3 + b"\x00" * 4


def keystream(k_enc: bytes, ftype: int, device: int, counter: int, n: int) -> bytes:
    """The real AES-CTR mode (cryptography) over zeros = the keystream."""
    enc = Cipher(algorithms.AES(k_enc), modes.CTR(ctr_block(ftype, device, counter))).encryptor()
    return enc.update(b"\x00" * n) + enc.finalize()


def aes_ctr(k_enc: bytes, ftype: int, device: int, counter: int, data: bytes) -> bytes:
    enc = Cipher(algorithms.AES(k_enc), modes.CTR(ctr_block(ftype, device, counter))).encryptor()
    return enc.update(data) + enc.finalize()


def tag(key: bytes, body: bytes) -> bytes:
    """§7: HMAC-SHA256 truncated to 16 bytes."""
    return hmac.new(key, body, hashlib.sha256).digest()[:16]


def device_str(device: int) -> str:
    """§2 printed form with its Luhn mod 32 check character."""
    digits = [(device >> (5 * i)) & 31 for i in range(6, -1, -1)]
    total = 0
    factor = 2
    for v in reversed(digits):
        p = factor * v
        total += p // 32 + p % 32
        factor = 1 if factor == 2 else 2
    check = (32 - total % 32) % 32
    s = "".join(CROCKFORD[d] for d in digits) + CROCKFORD[check]
    return s[:4] + "-" + s[4:]


def device_int(text: str) -> int:
    s = text.replace("-", "")
    v = 0
    for c in s[:7]:
        v = v * 32 + CROCKFORD.index(c)
    return v


def _payload(ftype: str, fields: dict) -> bytes:
    if ftype == "CONFIG":
        out = b""
        for key in sorted(CONFIG_TLV):
            name, fmt = CONFIG_TLV[key]
            if fields.get(name) is not None:
                v = fields[name]
                value = struct.pack(fmt, int(v))
                out += bytes([key, len(value)]) + value
        return out
    out = b""
    for name, fmt, kind, sentinel in LAYOUTS[ftype]:
        v = fields[name]
        if kind == "fw":
            out += bytes(int(p) for p in v.split("."))
        elif kind == "bool":
            out += struct.pack(">B", 1 if v else 0)
        elif kind == "type":
            out += struct.pack(">B", TYPE_CODES[v])
        elif isinstance(kind, list):
            out += struct.pack(">B", kind.index(v))
        elif name == "status" and ftype == "HEARTBEAT":  # §8.3: with the modem fault
            fault = MODEM_FAULT.index(fields.get("modem_fault", "none"))
            out += struct.pack(">B", v | fault << 4)
        else:
            out += struct.pack(">" + fmt, sentinel if v is None else v)
    return out


def encode(fields: dict, secret: bytes) -> bytes:
    """Build a frame from a fields dict (the codec's JSON shape)."""
    k_up, k_dn, k_enc = derive(secret)
    ftype = fields["type"]
    code = TYPE_CODES[ftype]
    flags = 0
    for name, bit in FLAGS:
        if fields.get(name):
            flags |= bit
    if ftype in ENCRYPTED_TYPES:
        flags |= 0x04
    device = device_int(fields["device"])
    counter = fields["counter"]
    payload = _payload(ftype, fields)
    if ftype in ENCRYPTED_TYPES:
        payload = aes_ctr(k_enc, code, device, counter, payload)
    header = struct.pack(
        ">BBBIIIB", 1, code, flags, device, counter, fields.get("timestamp", 0), len(payload)
    )
    body = header + payload
    return body + tag(k_dn if code & 0x80 else k_up, body)


def _decode_config(p: bytes) -> dict:
    out: dict = {}
    seen: set[int] = set()
    i = 0
    while i < len(p):
        if i + 2 > len(p):
            raise Reject("bad_payload")
        key, size = p[i], p[i + 1]
        i += 2
        if i + size > len(p):
            raise Reject("bad_payload")
        if key in seen:  # §8.10: no key twice, known or not
            raise Reject("bad_payload")
        seen.add(key)
        if key in CONFIG_TLV:
            name, fmt = CONFIG_TLV[key]
            if size != struct.calcsize(fmt):
                raise Reject("bad_payload")
            (v,) = struct.unpack(fmt, p[i : i + size])
            if name == "selftest" and v > 2:  # §8.10: 0, 1 or 2
                raise Reject("bad_payload")
            if name == "discreet":
                if v > 1:
                    raise Reject("bad_payload")
                v = bool(v)
            out[name] = v
        i += size
    return out


def decode(frame: bytes, secret: bytes) -> dict:
    """Verify and decode in the §11 order; raise Reject(reason)."""
    k_up, k_dn, k_enc = derive(secret)
    if len(frame) < 32:
        raise Reject("truncated")
    version, code, flags, device, counter, ts, n = struct.unpack(">BBBIIIB", frame[:16])
    if version != 1:
        raise Reject("bad_version")
    if code not in TYPE_NAMES:
        raise Reject("unknown_type")
    ftype = TYPE_NAMES[code]
    if ftype == "CONFIG":
        if n > 64:
            raise Reject("length_mismatch")
    elif n != struct.calcsize(">" + "".join(f[1] for f in LAYOUTS[ftype])):
        raise Reject("length_mismatch")
    if len(frame) < 32 + n:
        raise Reject("truncated")
    if len(frame) > 32 + n:
        raise Reject("trailing_bytes")
    body = frame[: 16 + n]
    if not hmac.compare_digest(tag(k_dn if code & 0x80 else k_up, body), frame[16 + n :]):
        raise Reject("bad_tag")
    if flags & 0xF0 or bool(flags & 0x04) != (ftype in ENCRYPTED_TYPES):
        raise Reject("bad_flags")
    payload = frame[16 : 16 + n]
    if ftype in ENCRYPTED_TYPES:
        payload = aes_ctr(k_enc, code, device, counter, payload)
    fields: dict = {
        "type": ftype,
        "version": 1,
        "device": device_str(device),
        "counter": counter,
        "timestamp": ts,
    }
    for name, bit in FLAGS:
        fields[name] = bool(flags & bit)
    if ftype == "CONFIG":
        fields.update(_decode_config(payload))
        return fields
    values = struct.unpack(">" + "".join(f[1] for f in LAYOUTS[ftype]), payload)
    for (name, _fmt, kind, sentinel), v in zip(LAYOUTS[ftype], values, strict=True):
        if kind == "fw":
            v = ".".join(str(b) for b in v)
        elif kind == "bool":
            if v > 1:
                raise Reject("bad_payload")
            v = v == 1
        elif kind == "type":
            if v not in TYPE_NAMES or v & 0x80:  # §8.9: an uplink type
                raise Reject("bad_payload")
            v = TYPE_NAMES[v]
        elif isinstance(kind, list):
            if v >= len(kind):
                raise Reject("bad_payload")
            v = kind[v]
        elif sentinel is not None and v == sentinel:
            v = None
        elif name in DOMAIN and not DOMAIN[name][0] <= v <= DOMAIN[name][1]:
            raise Reject("bad_payload")
        fields[name] = v
    if ftype == "HEARTBEAT":  # §8.3: flags, modem fault in bits 4-6, bit 7 dropped
        fields["modem_fault"] = MODEM_FAULT[(fields["status"] >> 4) & 7]
        fields["status"] &= 0x0F
    if ftype == "ACK" and (fields["disposition"] == "rejected") != (fields["reason"] != "none"):
        raise Reject("bad_payload")  # §8.9: a reason exactly when rejected
    return fields
