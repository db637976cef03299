# Auxilio protocol v1 codec: one source for MicroPython devices and the CPython host.
#
# Normative text: protocol/SPEC.md. Section numbers below (§n) refer to it.
# Runs unchanged on both runtimes: on MicroPython it uses struct, hashlib
# and cryptolib (ECB only; CTR is built on top, §6); on CPython the
# same code falls back to `cryptography` for the AES block and to `hmac` for
# a faster but identical HMAC-SHA256.
#
# RAM budget (device): a Keys object is ~0.5 KB (pads, AES context, scratch
# blocks); encode_into/verify_into allocate nothing but the hash objects.

import struct

try:
    from micropython import const
except ImportError:  # CPython

    def const(x):
        return x


from hashlib import sha256

try:  # CPython: OpenSSL one-shot HMAC, same output as the pad path below
    from hmac import compare_digest as _cmp
    from hmac import digest as _hmac_digest
except ImportError:  # MicroPython has no hmac module
    _hmac_digest = None
    _cmp = None

try:
    from cryptolib import aes as _aes_mp  # MicroPython

    _AES_BACKEND = "cryptolib"
except ImportError:
    _aes_mp = None
    _AES_BACKEND = "cryptography"

VERSION = 1
HEADER_LEN = 16  # §3: version, type, flags, device, counter, timestamp, length
TAG_LEN = 16  # §7: HMAC-SHA256 truncated to 128 bits
OVERHEAD = HEADER_LEN + TAG_LEN
MAX_PAYLOAD = 64  # §3: no v1 frame carries more (CONFIG is the only variable one)
MAX_FRAME = OVERHEAD + MAX_PAYLOAD
_HDR = ">BBBIIIB"  # §3 header layout, 16 bytes

# §4 frame types. Bit 7 set = downlink (C4 -> device).
ALERT = const(0x01)
CANCEL = const(0x02)
HEARTBEAT = const(0x03)
TAMPER = const(0x04)
POWER = const(0x05)
LOW_BATTERY = const(0x06)
TEST = const(0x07)
BOOT = const(0x08)
ACK = const(0x81)
CONFIG = const(0x82)
DOWNLINK = const(0x80)

# §5 flags
FLAG_TEST = const(0x01)
FLAG_CLOCK_SYNCED = const(0x02)
FLAG_ENCRYPTED = const(0x04)
FLAG_RETRANSMISSION = const(0x08)
FLAGS_RESERVED = const(0xF0)
_FLAG_NAMES = (
    ("test", FLAG_TEST),
    ("clock_synced", FLAG_CLOCK_SYNCED),
    ("encrypted", FLAG_ENCRYPTED),
    ("retransmission", FLAG_RETRANSMISSION),
)

# §9 enumerations carried in payloads, index = wire value.
BEARERS = ("none", "wifi", "lte", "sms")
RESET_CAUSES = (
    "unknown",
    "power_on",
    "hard_reset",
    "watchdog",
    "deep_sleep",
    "soft_reset",
    "brownout",
    "panic",
)
DISPOSITIONS = ("received", "attending", "time_nak", "rejected")
REJECT_REASONS = ("none", "revoked", "retired", "replay", "policy", "malformed", "collision")
CANCEL_REASONS = ("gesture", "remote")
# §8.3: the modem's latest fault, HEARTBEAT status bits 4-6.
MODEM_FAULTS = (
    "none",
    "sim_missing",
    "sim_locked",
    "denied",
    "no_service",
    "not_responding",
    "data_down",
    "other",
)

# Field kinds. A field is (name, struct char, kind, sentinel): the sentinel is
# the wire value that means "unknown" and decodes to None (§9).
_NUM = const(0)
_ENUM = const(1)
_BOOL = const(2)
_FW = const(3)  # three bytes major.minor.patch -> "1.2.3"
_TYPE = const(4)  # a frame type code -> its name

_LOCATION = (
    ("lat_e7", "i", _NUM, -2147483648),
    ("lon_e7", "i", _NUM, -2147483648),
    ("accuracy_m", "H", _NUM, 0xFFFF),
    ("fix_age_s", "H", _NUM, 0xFFFF),
    ("battery", "B", _NUM, 0xFF),
    ("rssi", "b", _NUM, -128),
    ("bearer", "B", _ENUM, BEARERS),
    # §8.1: the device clock at the press; fixed when the frame is made, unlike
    # the header timestamp (freshness), which every retransmission restamps.
    ("pressed_at", "I", _NUM, 0),
)

# code -> (name, fields, encrypted). fields None = TLV payload (CONFIG, §8.10).
TYPES = {
    ALERT: ("ALERT", _LOCATION, True),
    CANCEL: (
        "CANCEL",
        (("ref_counter", "I", _NUM, None), ("reason", "B", _ENUM, CANCEL_REASONS)),
        False,
    ),
    HEARTBEAT: (
        "HEARTBEAT",
        (
            ("battery", "B", _NUM, 0xFF),
            ("rssi", "b", _NUM, -128),
            ("bearer", "B", _ENUM, BEARERS),
            ("outbox", "B", _NUM, None),
            ("fw", "BBB", _FW, None),
            ("status", "B", _NUM, None),
            ("interval_s", "H", _NUM, None),
        ),
        False,
    ),
    TAMPER: ("TAMPER", (("open", "B", _BOOL, None),), False),
    POWER: ("POWER", (("mains", "B", _BOOL, None), ("battery", "B", _NUM, 0xFF)), False),
    LOW_BATTERY: (
        "LOW_BATTERY",
        (("battery", "B", _NUM, 0xFF), ("threshold", "B", _NUM, None)),
        False,
    ),
    TEST: ("TEST", _LOCATION, True),
    BOOT: (
        "BOOT",
        (
            ("reset_cause", "B", _ENUM, RESET_CAUSES),
            ("fw", "BBB", _FW, None),
            ("outbox", "B", _NUM, None),
        ),
        False,
    ),
    ACK: (
        "ACK",
        (
            ("acked_type", "B", _TYPE, None),
            ("disposition", "B", _ENUM, DISPOSITIONS),
            ("reason", "B", _ENUM, REJECT_REASONS),
            # §8.9: the C4's counter high-water mark for the device; on a
            # replay/collision rejection the device moves its counters above it.
            ("high_water", "I", _NUM, None),
        ),
        False,
    ),
    CONFIG: ("CONFIG", None, False),
}

# §8.10 CONFIG TLVs: key -> (name, struct char, kind)
CONFIG_KEYS = {
    0x01: ("heartbeat_s", "I", _NUM),
    0x02: ("discreet", "B", _BOOL),
    0x03: ("cancel_window_s", "H", _NUM),
    0x04: ("hold_ms", "H", _NUM),
    0x05: ("test_window_s", "H", _NUM),  # presses send TEST for this long (0 closes)
    0x06: ("selftest", "B", _NUM),  # 1: one TEST frame now, 2: the same, silently
}

# Heartbeat status byte (§8.3): flags in bits 0-3, the modem fault code in bits
# 4-6 (MODEM_FAULTS, decoded as its own field), bit 7 reserved (dropped on decode).
STATUS_MAINS = const(0x01)
STATUS_TAMPER_OPEN = const(0x02)
STATUS_CHARGING = const(0x04)
STATUS_DISCREET = const(0x08)
STATUS_DEFINED = const(0x0F)
STATUS_FAULT_SHIFT = const(4)


# §6 key derivation labels (HKDF-Expand, one block, PRK = the device secret)
_LABEL_UP_MAC = b"auxilio v1 uplink mac\x01"
_LABEL_DOWN_MAC = b"auxilio v1 downlink mac\x01"
_LABEL_ENC = b"auxilio v1 payload enc\x01"

# Crockford base32 alphabet for printed device ids (§2)
_B32 = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


class FrameError(ValueError):
    """A frame, field or key the codec refuses; .reason is a stable code (§11)."""

    def __init__(self, reason, detail=None):
        super().__init__(reason if detail is None else reason + ": " + detail)
        self.reason = reason


# ---------------------------------------------------------------- crypto ----


def _hmac_pads(key):
    # Two buffers and nothing else: a Keys object derives five pad pairs, and on a
    # small heap every short-lived copy is a hole the next allocation may not fit.
    ipad = bytearray(64)
    ipad[: len(key)] = key
    opad = bytearray(ipad)
    for i in range(64):
        ipad[i] ^= 0x36
        opad[i] ^= 0x5C
    return ipad, opad


def hmac_sha256(key, data):
    """RFC 2104 HMAC-SHA256; keys longer than 64 bytes are not used in v1."""
    if _hmac_digest is not None:
        return _hmac_digest(key, data, "sha256")
    ipad, opad = _hmac_pads(key)
    h = sha256(ipad)
    h.update(data)
    o = sha256(opad)
    o.update(h.digest())
    return o.digest()


class _Mac:
    """HMAC-SHA256 with the pads computed once per key (§7)."""

    def __init__(self, key):
        self.key = key
        self.ipad, self.opad = _hmac_pads(key)

    def tag(self, data):
        if _hmac_digest is not None:
            return _hmac_digest(self.key, data, "sha256")[:TAG_LEN]
        h = sha256(self.ipad)
        h.update(data)
        o = sha256(self.opad)
        o.update(h.digest())
        return o.digest()[:TAG_LEN]


class _Ecb:
    """One AES-128 block encryption, the primitive CTR is built on (§6)."""

    def __init__(self, key):
        if _aes_mp is not None:
            self._mp = _aes_mp(key, 1)  # 1 = MODE_ECB
            self._enc = None
        else:
            from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

            self._mp = None
            self._enc = Cipher(algorithms.AES(key), modes.ECB()).encryptor()

    def block(self, src, dst):
        if self._mp is not None:
            self._mp.encrypt(src, dst)
        else:
            dst[:] = self._enc.update(src)


def _equal(a, b):
    if _cmp is not None:
        return _cmp(a, b)
    if len(a) != len(b):
        return False
    d = 0
    for i in range(len(a)):
        d |= a[i] ^ b[i]
    return d == 0


class Keys:
    """The three keys derived from one device's 32-byte secret (§6), plus scratch space."""

    def __init__(self, secret):
        if not isinstance(secret, (bytes, bytearray)) or len(secret) != 32:
            raise FrameError("bad_key", "device secret must be 32 bytes")
        self.up = _Mac(hmac_sha256(secret, _LABEL_UP_MAC))
        self.down = _Mac(hmac_sha256(secret, _LABEL_DOWN_MAC))
        self.enc_key = hmac_sha256(secret, _LABEL_ENC)[:16]
        self._ecb = _Ecb(self.enc_key)
        self._ctr = bytearray(16)
        self._ks = bytearray(16)

    def mac(self, ftype):
        return self.down if ftype & DOWNLINK else self.up

    def crypt(self, buf, start, length, ftype, device, counter):
        """XOR buf[start:start+length] in place with the AES-CTR keystream (§6.2)."""
        ctr = self._ctr
        ks = self._ks
        # Counter block: direction(1) device(4) counter(4) zero(3) block index(4)
        struct.pack_into(">BIIBHI", ctr, 0, ftype & DOWNLINK, device, counter, 0, 0, 0)
        block = 0
        off = 0
        while off < length:
            struct.pack_into(">I", ctr, 12, block)
            self._ecb.block(ctr, ks)
            n = length - off
            if n > 16:
                n = 16
            for i in range(n):
                buf[start + off + i] ^= ks[i]
            off += n
            block += 1


def keys(secret_or_keys):
    """Accept a Keys object or a 32-byte secret."""
    if isinstance(secret_or_keys, Keys):
        return secret_or_keys
    return Keys(secret_or_keys)


# ------------------------------------------------------------ device ids ----


def _luhn32(chars):
    # Luhn mod N (N = 32) over Crockford digits: catches every single-character
    # error and every transposition of adjacent characters (§2).
    factor = 2
    total = 0
    for i in range(len(chars) - 1, -1, -1):
        code = factor * _B32.index(chars[i])
        factor = 1 if factor == 2 else 2
        total += code // 32 + code % 32
    return _B32[(32 - total % 32) % 32]


def device_str(device):
    """32-bit device id -> printed label form 'XXXX-XXXX' (7 base32 digits + check)."""
    if not isinstance(device, int) or device < 0 or device > 0xFFFFFFFF:
        raise FrameError("bad_device_id")
    digits = ""
    v = device
    for _ in range(7):
        digits = _B32[v & 31] + digits
        v >>= 5
    s = digits + _luhn32(digits)
    return s[:4] + "-" + s[4:]


def device_int(text):
    """Printed form -> 32-bit id. Accepts lower case, I/L for 1, O for 0, no hyphen."""
    if isinstance(text, int):
        device_str(text)  # range check
        return text
    if not isinstance(text, str):
        raise FrameError("bad_device_id")
    s = text.strip().upper().replace("-", "").replace(" ", "")
    s = s.replace("I", "1").replace("L", "1").replace("O", "0")
    if len(s) != 8:
        raise FrameError("bad_device_id", "expected 8 characters like 0938-NKRT")
    for c in s:
        if c not in _B32:
            raise FrameError("bad_device_id", "invalid character " + c)
    if _luhn32(s[:7]) != s[7]:
        raise FrameError("bad_device_id", "check character does not match (typo?)")
    v = 0
    for c in s[:7]:
        v = (v << 5) | _B32.index(c)
    if v > 0xFFFFFFFF:
        raise FrameError("bad_device_id")
    return v


# ---------------------------------------------------------------- topics ----

DEFAULT_PREFIX = "auxilio"


def topic(prefix, device, leaf):
    """§10: '<prefix>/v1/<device printed>/<up|down|status>'."""
    return prefix + "/v1/" + device_str(device) + "/" + leaf


# -------------------------------------------------------------- encoding ----


def type_code(name_or_code):
    # Only str names and int codes: anything else (a list from JSON, a bool) is
    # unknown_type, never a TypeError (the codec raises nothing but FrameError).
    if isinstance(name_or_code, int) and not isinstance(name_or_code, bool):
        if name_or_code in TYPES:
            return name_or_code
    elif isinstance(name_or_code, str) and name_or_code in _TYPE_CODES:
        return _TYPE_CODES[name_or_code]
    raise FrameError("unknown_type")


def _field_to_wire(field, value):
    name, fmt, kind, extra = field
    if kind == _FW:
        try:
            parts = [int(p) for p in value.split(".")]
        except (AttributeError, ValueError):
            raise FrameError("bad_field", name)
        if len(parts) != 3:
            raise FrameError("bad_field", name)
        for p in parts:
            if p < 0 or p > 255:
                raise FrameError("bad_field", name)
        return parts
    if kind == _ENUM:
        try:
            return [extra.index(value)]
        except ValueError:
            raise FrameError("bad_field", name)
    if kind == _TYPE:
        code = type_code(value)
        if code & DOWNLINK:  # §8.9: only uplink frames are acknowledged
            raise FrameError("bad_field", name)
        return [code]
    if kind == _BOOL:
        if value is True or value is False:
            return [1 if value else 0]
        raise FrameError("bad_field", name)
    # _NUM
    if value is None:
        if extra is None:
            raise FrameError("bad_field", name)  # null where no sentinel exists
        v = extra
    else:
        if not isinstance(value, int) or isinstance(value, bool):
            raise FrameError("bad_field", name)
        v = value
        if v == extra:  # the sentinel itself must be spelled null
            raise FrameError("bad_field", name)
    lo, hi = _RANGES[fmt]
    if v < lo or v > hi:
        raise FrameError("bad_field", name)
    if value is not None and name in _LIMITS:
        lo, hi = _LIMITS[name]
        if v < lo or v > hi:
            raise FrameError("bad_field", name)
    if name == "status" and v & ~STATUS_DEFINED:  # §8.3: senders set reserved bits to 0
        raise FrameError("bad_field", name)
    return [v]


# Domain limits beyond the wire type (§9): checked on encode and decode.
_LIMITS = {
    "lat_e7": (-900000000, 900000000),
    "lon_e7": (-1800000000, 1800000000),
    "battery": (0, 100),
    "threshold": (0, 100),
    "selftest": (0, 2),  # §8.10: 0 nothing, 1 TEST now, 2 TEST now without feedback
}

_RANGES = {
    "B": (0, 0xFF),
    "b": (-128, 127),
    "H": (0, 0xFFFF),
    "h": (-32768, 32767),
    "I": (0, 0xFFFFFFFF),
    "i": (-2147483648, 2147483647),
}


def _values_from_fields(code, fields):
    spec = TYPES[code][1]
    out = []
    for f in spec:
        if f[0] not in fields:
            raise FrameError("bad_field", f[0])  # missing
        out.extend(_field_to_wire(f, fields[f[0]]))
    # §8.9: a reason exactly when the disposition is rejected (3), 0 otherwise.
    if code == ACK and (out[1] == 3) != (out[2] != 0):
        raise FrameError("bad_field", "reason")
    if code == HEARTBEAT:  # §8.3: the modem fault shares the status byte (index 7)
        f = fields.get("modem_fault", "none")
        if f not in MODEM_FAULTS:
            raise FrameError("bad_field", "modem_fault")
        out[7] |= MODEM_FAULTS.index(f) << STATUS_FAULT_SHIFT
    return out


def _config_payload(fields):
    # Keys ascending (§8.10), packed in place: the v1 keys total 24 bytes, far
    # inside MAX_PAYLOAD.
    out = bytearray(MAX_PAYLOAD)
    i = 0
    for key in sorted(CONFIG_KEYS):
        name, fmt, kind = CONFIG_KEYS[key]
        if fields.get(name) is not None:
            v = _field_to_wire((name, fmt, kind, None), fields[name])[0]
            fmt = ">BB" + fmt
            struct.pack_into(fmt, out, i, key, struct.calcsize(fmt) - 2, v)
            i += struct.calcsize(fmt)
    return bytes(out[:i])


def flags_from_fields(code, fields):
    flags = 0
    for name, bit in _FLAG_NAMES:
        if name == "encrypted":
            continue
        v = fields.get(name, False)
        if v is True:
            flags |= bit
        elif v is not False:
            raise FrameError("bad_field", name)
    enc = TYPES[code][2]
    if "encrypted" in fields and fields["encrypted"] is not enc:
        raise FrameError("bad_flags", "encryption is fixed by the frame type")
    if enc:
        flags |= FLAG_ENCRYPTED
    return flags


def encode_into(buf, k, code, flags, device, counter, timestamp, payload):
    """Write a signed (and, per type, encrypted) frame into buf; return its length.

    payload: the plaintext payload bytes (see pack_payload). Allocates nothing
    on the device beyond the hash objects.
    """
    n = len(payload)
    if n > MAX_PAYLOAD:
        raise FrameError("length_mismatch")
    if counter < 0 or counter > 0xFFFFFFFF or timestamp < 0 or timestamp > 0xFFFFFFFF:
        raise FrameError("bad_field", "counter")  # or timestamp: u32
    struct.pack_into(_HDR, buf, 0, VERSION, code, flags, device, counter, timestamp, n)
    buf[HEADER_LEN : HEADER_LEN + n] = payload
    if flags & FLAG_ENCRYPTED:
        k.crypt(buf, HEADER_LEN, n, code, device, counter)
    end = HEADER_LEN + n
    buf[end : end + TAG_LEN] = k.mac(code).tag(memoryview(buf)[:end])
    return end + TAG_LEN


def pack_payload(code, values):
    """Plaintext payload bytes for a fixed-layout type from its wire values."""
    return struct.pack(_LAYOUTS[code][0], *values)


def pack_payload_into(buf, offset, code, values):
    """Allocation-free variant of pack_payload for the device alert path."""
    struct.pack_into(_LAYOUTS[code][0], buf, offset, *values)
    return _LAYOUTS[code][1]


def payload_len(code):
    return _LAYOUTS[code][1]


def encode(fields, key):
    """Encode a frame from a fields dict (as decode returns it) and a secret or Keys."""
    k = keys(key)
    if not isinstance(fields, dict):
        raise FrameError("bad_field", "fields")  # not a dict
    code = type_code(fields.get("type"))
    flags = flags_from_fields(code, fields)
    try:
        device = device_int(fields["device"])
        counter = fields["counter"]
        timestamp = fields.get("timestamp", 0)
    except KeyError:
        raise FrameError("bad_field", "device")  # device and counter required
    for v in (counter, timestamp):
        if not isinstance(v, int) or isinstance(v, bool):
            raise FrameError("bad_field", "counter")  # not integers
    if code == CONFIG:
        payload = _config_payload(fields)
    else:
        payload = pack_payload(code, _values_from_fields(code, fields))
    buf = bytearray(OVERHEAD + len(payload))
    n = encode_into(buf, k, code, flags, device, counter, timestamp, payload)
    return bytes(buf[:n])


def restamp(buf, length, k, timestamp, set_flags=0, clear_flags=0):
    """Rewrite the header timestamp/flags of an encoded frame and re-sign it (§12.3).

    Used for retransmissions: the payload, and so the ciphertext, never changes.
    """
    buf[2] = (buf[2] | set_flags) & ~clear_flags & 0xFF
    struct.pack_into(">I", buf, 11, timestamp)
    end = length - TAG_LEN
    buf[end:length] = k.mac(buf[1]).tag(memoryview(buf)[:end])


# -------------------------------------------------------------- decoding ----


def check_frame(frame):
    """Structural checks (§11 order); return (code, flags, device, counter, ts, n)."""
    total = len(frame)
    if total < OVERHEAD:
        raise FrameError("truncated")
    version, code, flags, device, counter, ts, n = struct.unpack_from(_HDR, frame, 0)
    if version != VERSION:
        raise FrameError("bad_version")
    if code not in TYPES:
        raise FrameError("unknown_type")
    layout = _LAYOUTS.get(code)
    if layout is not None:
        if n != layout[1]:
            raise FrameError("length_mismatch")
    elif n > MAX_PAYLOAD:
        raise FrameError("length_mismatch")
    need = OVERHEAD + n
    if total < need:
        raise FrameError("truncated")
    if total > need:
        raise FrameError("trailing_bytes")
    return code, flags, device, counter, ts, n


def verify_into(frame, k, out):
    """Verify and decrypt into the bytearray out (len >= MAX_PAYLOAD).

    Returns (code, flags, device, counter, timestamp, payload_length). The
    plaintext payload is out[:payload_length].
    """
    code, flags, device, counter, ts, n = check_frame(frame)
    end = HEADER_LEN + n
    mv = memoryview(frame)
    tag = k.mac(code).tag(mv[:end])
    if not _equal(tag, mv[end : end + TAG_LEN]):
        raise FrameError("bad_tag")
    if flags & FLAGS_RESERVED:
        raise FrameError("bad_flags", "reserved bits set")
    enc = TYPES[code][2]
    if bool(flags & FLAG_ENCRYPTED) != enc:
        raise FrameError("bad_flags", "encryption flag does not match the type")
    out[:n] = mv[HEADER_LEN:end]
    if enc:
        k.crypt(out, 0, n, code, device, counter)
    return code, flags, device, counter, ts, n


def _decode_config(payload, n, fields):
    seen = []  # keys met so far, known or not: any repeat is refused (§8.10)
    i = 0
    while i < n:
        if i + 2 > n:
            raise FrameError("bad_payload", "truncated TLV")
        key = payload[i]
        size = payload[i + 1]
        i += 2
        if i + size > n:
            raise FrameError("bad_payload", "truncated TLV")
        if key in seen:
            raise FrameError("bad_payload", "repeated TLV")
        seen.append(key)
        spec = CONFIG_KEYS.get(key)
        if spec is not None:  # unknown keys are skipped (§13 versioning)
            name, fmt, kind = spec
            if size != struct.calcsize(">" + fmt):
                raise FrameError("bad_payload", "bad TLV " + name)
            v = struct.unpack_from(">" + fmt, payload, i)[0]
            if kind == _BOOL:
                if v > 1:
                    raise FrameError("bad_payload", name)
                v = v == 1
            elif name in _LIMITS:
                lo, hi = _LIMITS[name]
                if v < lo or v > hi:
                    raise FrameError("bad_payload", name)
            fields[name] = v
        i += size
    return fields


def unpack_payload(code, payload, n, fields=None):
    """Plaintext payload -> dict of named fields (sentinels become None).

    fields: a dict to add them to (decode's own, so no second dict is made).
    """
    if fields is None:
        fields = {}
    if code == CONFIG:
        return _decode_config(payload, n, fields)
    values = struct.unpack_from(_LAYOUTS[code][0], payload, 0)
    i = 0
    for name, fmt, kind, extra in TYPES[code][1]:
        if kind == _FW:
            fields[name] = "%d.%d.%d" % (values[i], values[i + 1], values[i + 2])
            i += 3
            continue
        v = values[i]
        i += 1
        if kind == _ENUM:
            if v >= len(extra):
                raise FrameError("bad_payload", name)
            v = extra[v]
        elif kind == _TYPE:
            if v not in TYPES or v & DOWNLINK:  # §8.9: an uplink type
                raise FrameError("bad_payload", name)
            v = TYPES[v][0]
        elif kind == _BOOL:
            if v > 1:
                raise FrameError("bad_payload", name)
            v = v == 1
        elif extra is not None and v == extra:
            v = None
        elif name in _LIMITS:
            lo, hi = _LIMITS[name]
            if v < lo or v > hi:
                raise FrameError("bad_payload", name + " out of range")
        fields[name] = v
    if code == HEARTBEAT:  # §8.3: flags, the modem fault; the reserved bit 7 dropped
        st = fields["status"]
        fields["status"] = st & STATUS_DEFINED
        fields["modem_fault"] = MODEM_FAULTS[(st >> STATUS_FAULT_SHIFT) & 7]
    elif code == ACK and (values[1] == 3) != (values[2] != 0):  # §8.9, as in encode
        raise FrameError("bad_payload", "reason")
    return fields


def decode(frame, key):
    """Verify, decrypt and decode one frame to a fields dict, or raise FrameError."""
    if not isinstance(frame, (bytes, bytearray, memoryview)):
        raise FrameError("truncated", "frame must be bytes")
    k = keys(key)
    out = bytearray(MAX_PAYLOAD)
    code, flags, device, counter, ts, n = verify_into(frame, k, out)
    fields = {
        "type": TYPES[code][0],
        "version": VERSION,
        "device": device_str(device),
        "counter": counter,
        "timestamp": ts,
    }
    for name, bit in _FLAG_NAMES:
        fields[name] = bool(flags & bit)
    return unpack_payload(code, out, n, fields)


# ------------------------------------------------------- derived tables ----
# Built last on purpose: the temporaries of this loop are garbage once the
# import finishes, so they leave no holes between the long-lived objects
# above. Built mid-module they fragmented the heap enough that importing the
# .mpy needed ~35 KB on the unix port; here it needs ~31 KB (issue 2 asks the
# codec to run in a 32 KB heap).
_TYPE_CODES = {}
_LAYOUTS = {}  # code -> (struct format, payload length)
for _code in TYPES:
    _name, _fields, _enc = TYPES[_code]
    _TYPE_CODES[_name] = _code
    if _fields is not None:
        _fmt = ">" + "".join(f[1] for f in _fields)
        _LAYOUTS[_code] = (_fmt, struct.calcsize(_fmt))
del _code, _name, _fields, _enc, _fmt
