"""Codec throughput on CPython and the real micropython, plus bytes per frame type (raw and base64).

Figures (frames/s): ``encode`` = encode+sign+encrypt, ``verify`` =
verify+decrypt+decode. Two paths each: the dict API (``codec.encode`` /
``codec.decode`` with a cached Keys object, as the gateway uses it) and the
allocation-free device path (``encode_into`` / ``verify_into``). Baselines in
the same run: one bare SHA-256 of a 31-byte message per runtime, so the
codec's cost can be read against the machine's speed. Targets (issue 2):
>= 100k verified/s on CPython, >= 20k encoded/s under micropython.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

from auxilio.protocol import codec, sms

REPO = Path(__file__).resolve().parents[2]
PROTOCOL = REPO / "protocol"
# Each measurement runs for about this long (best of ROUNDS), bounding the bench.
SECONDS_PER_FIGURE = 0.2
ROUNDS = 2
# The unix port's default 2 MB heap makes MicroPython's first-fit allocator
# scan far once garbage accumulates (3-5x slower on allocation-light loops);
# 128 KB is about the GC heap of an ESP32 without PSRAM, so it is the headline.
DEVICE_HEAP = "128K"
MICROPYTHON_TIMEOUT_S = 120
TARGET_CPYTHON_VERIFY = 100_000
TARGET_MICROPYTHON_ENCODE = 20_000

SECRET = bytes(range(32))
ALERT = {
    "type": "ALERT",
    "device": "0938-NKRT",
    "counter": 7,
    "timestamp": 1764350000,
    "clock_synced": True,
    "lat_e7": 194326000,
    "lon_e7": -991332000,
    "accuracy_m": 12,
    "fix_age_s": 3,
    "pressed_at": 1764350000,
    "battery": 87,
    "rssi": -67,
    "bearer": "lte",
}


def _rate(fn, seconds: float = SECONDS_PER_FIGURE) -> float:
    """Best-of-ROUNDS calls per second of fn(), each round bounded by time."""
    best = 0.0
    for _ in range(ROUNDS):
        n = 0
        batch = 64
        t0 = time.perf_counter()
        deadline = t0 + seconds
        while True:
            for _ in range(batch):
                fn()
            n += batch
            now = time.perf_counter()
            if now >= deadline:
                break
        best = max(best, n / (now - t0))
    return round(best)


def _cpython() -> dict[str, float]:
    import hashlib

    k = codec.Keys(SECRET)
    frame = codec.encode(ALERT, k)
    buf = bytearray(codec.MAX_FRAME)
    out = bytearray(codec.MAX_PAYLOAD)
    payload = bytearray(codec.payload_len(codec.ALERT))
    values = (194326000, -991332000, 12, 3, 87, -67, 2, 1764350000)
    flags = codec.FLAG_CLOCK_SYNCED | codec.FLAG_ENCRYPTED
    body = frame[:31]

    def encode_into() -> None:
        codec.pack_payload_into(payload, 0, codec.ALERT, values)
        codec.encode_into(buf, k, codec.ALERT, flags, 0x12345678, 7, 1764350000, payload)

    def verify_into() -> None:
        code, _f, _d, _c, _t, n = codec.verify_into(frame, k, out)
        codec.unpack_payload(code, out, n)

    return {
        "baseline_sha256_per_s": _rate(lambda: hashlib.sha256(body).digest()),
        "encode_per_s": _rate(lambda: codec.encode(ALERT, k)),
        "verify_per_s": _rate(lambda: codec.decode(frame, k)),
        "encode_into_per_s": _rate(encode_into),
        "verify_into_per_s": _rate(verify_into),
    }


# Runs under micropython: bounded by time (ticks_ms), prints one JSON line.
_MP_SCRIPT = """
import json, time, hashlib
import auxcodec as codec

SECONDS_MS = %(ms)d
ROUNDS = %(rounds)d
k = codec.Keys(bytes(range(32)))
fields = %(fields)s
frame = codec.encode(fields, k)
buf = bytearray(codec.MAX_FRAME)
out = bytearray(codec.MAX_PAYLOAD)
payload = bytearray(codec.payload_len(codec.ALERT))
values = (194326000, -991332000, 12, 3, 87, -67, 2, 1764350000)
flags = codec.FLAG_CLOCK_SYNCED | codec.FLAG_ENCRYPTED
body = frame[:31]

def rate(fn):
    best = 0
    for _ in range(ROUNDS):
        n = 0
        t0 = time.ticks_us()
        while True:
            for _ in range(16):
                fn()
            n += 16
            dt = time.ticks_diff(time.ticks_us(), t0)
            if dt >= SECONDS_MS * 1000:
                break
        best = max(best, n * 1000000 // dt)
    return best

def baseline():
    hashlib.sha256(body).digest()

def encode_into():
    codec.pack_payload_into(payload, 0, codec.ALERT, values)
    codec.encode_into(buf, k, codec.ALERT, flags, 0x12345678, 7, 1764350000, payload)

def verify_into():
    code, f, d, c, t, n = codec.verify_into(frame, k, out)
    codec.unpack_payload(code, out, n)

ONLY = %(only)s
figures = {}
for name, fn in (
    ("encode_per_s", lambda: codec.encode(fields, k)),
    ("verify_per_s", lambda: codec.decode(frame, k)),
    ("encode_into_per_s", encode_into),
    ("verify_into_per_s", verify_into),
    ("baseline_sha256_per_s", baseline),
):
    if not ONLY or name in ONLY:
        figures[name] = rate(fn)
print(json.dumps(figures))
"""


def _micropython(heap: str | None, tmp: Path, only: tuple[str, ...] = ()) -> dict[str, float]:
    """Run _MP_SCRIPT on the codec compiled to .mpy (as deployed) under the given heap."""
    from auxilio.build import mpy_cross_binary

    from tests.conftest import micropython_binary

    mpy = tmp / "auxcodec.mpy"
    if not mpy.exists():
        cmd = [mpy_cross_binary(), "-o", str(mpy), str(PROTOCOL / "auxcodec.py")]
        subprocess.run(cmd, check=True, timeout=MICROPYTHON_TIMEOUT_S)
    script = f"import sys\nsys.path.insert(0, {str(tmp)!r})\n" + _MP_SCRIPT % {
        "ms": int(SECONDS_PER_FIGURE * 1000),
        "rounds": ROUNDS,
        "fields": repr(ALERT),
        "only": repr(only),
    }
    cmd = [micropython_binary()]
    if heap:
        cmd += ["-X", f"heapsize={heap}"]
    r = subprocess.run(
        [*cmd, "-c", script], capture_output=True, text=True, timeout=MICROPYTHON_TIMEOUT_S
    )
    if r.returncode != 0:
        raise RuntimeError("micropython bench failed: " + r.stderr.strip().splitlines()[-1])
    return json.loads(r.stdout.strip().splitlines()[-1])


def _sizes() -> dict[str, dict[str, int]]:
    """Bytes per frame type, raw and as an SMS body, from the golden vectors."""
    sizes: dict[str, dict[str, int]] = {}
    for path in sorted((PROTOCOL / "vectors").glob("*.json")):
        v = json.loads(path.read_text())
        if not v["valid"]:
            continue
        frame = bytes.fromhex(v["frame_hex"])
        t = v["fields"]["type"]
        if t == "CONFIG":
            t = f"CONFIG_{len(frame) - codec.OVERHEAD}B_payload"
        sizes[t] = {"raw": len(frame), "base64": len(sms.sms_encode(frame))}
    return dict(sorted(sizes.items()))


def run() -> dict:
    import tempfile

    cpy = _cpython()
    with tempfile.TemporaryDirectory() as tmp:
        mp = _micropython(DEVICE_HEAP, Path(tmp))
        mp_default = _micropython(None, Path(tmp), only=("encode_per_s", "verify_per_s"))
    return {
        "cpython": cpy,
        "micropython": dict(mp, heap=DEVICE_HEAP, code="auxcodec.mpy"),
        "micropython_default_heap": mp_default,
        "targets": {
            "cpython_verify_per_s": TARGET_CPYTHON_VERIFY,
            "cpython_verify_met": cpy["verify_per_s"] >= TARGET_CPYTHON_VERIFY,
            "micropython_encode_per_s": TARGET_MICROPYTHON_ENCODE,
            "micropython_encode_met": mp["encode_per_s"] >= TARGET_MICROPYTHON_ENCODE,
        },
        "bytes": _sizes(),
    }


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
