"""Firmware figures: press->first PUBLISH byte latency, .mpy size, heap, RAM per extra Device.

Everything runs the mpy-cross build under the real micropython against a real
mosquitto, with a CPython C4 peer acking every frame. Baseline in the same
run: the cost of codec.encode_into alone under micropython (the crypto floor
of the alert path), so the latency figure can be read against this machine.
"""

from __future__ import annotations

import json
import statistics
import tempfile
from pathlib import Path

from auxilio.testing.peer import C4Peer

from tests.conftest import run_micropython
from tests.firmware.fwkit import broker, build_mpy, make_root

N_ALERTS = 30  # alerts timed for the latency figure
EXTRA_DEVICES = 10  # devices added to measure RAM per extra Device
HOLD_MS = 100  # short hold: the figure starts when the gesture fires, not at the press

_SCRIPT = """
import sys, json, gc
import asyncio
import app, device, supervision, session, mqtt, config, outbox, counter_store, gesture
import feedback, power, hal, hal.host, hal.control
from hal.host import HostHal
from time import ticks_us, ticks_diff
import auxcodec as codec

ROOTS = %(roots)r
N = %(n)d

async def settle(slots):
    for _ in range(1200):
        if all(s.dev.session.connected() and s.dev.outbox.depth() == 0 for s in slots):
            return True
        await asyncio.sleep_ms(25)
    return False

async def main():
    gc.collect()
    code = gc.mem_alloc()
    slots = []
    for i in range(len(ROOTS)):
        r = ROOTS[i]
        with open(r + "/board.json") as f:
            b = json.loads(f.read())
        h = HostHal(b, i)
        s = app.Slot(r, h, i)
        h.on_reset = s.reset
        s.start()
        slots.append(s)
        b = None
    ok = await settle(slots)
    gc.collect()
    steady = gc.mem_alloc()
    out = {"settled": ok, "code": code, "steady": steady, "devices": len(slots)}
    if N:
        d = slots[0].dev
        h = slots[0].hal
        lat = []
        during = 0
        for i in range(N):
            d.last_latency_us = -1
            h.press()
            for _ in range(1000):
                await asyncio.sleep_ms(2)
                if d.last_latency_us >= 0:
                    break
            lat.append(d.last_latency_us)
            if i == 0:
                gc.collect()
                during = gc.mem_alloc()
            h.release()
            for _ in range(1000):
                if d.outbox.depth() == 0:
                    break
                await asyncio.sleep_ms(5)
            await asyncio.sleep_ms(60)
        out["latency_us"] = lat
        out["during"] = during
        # baseline: encode_into alone (HMAC + AES-CTR of one ALERT), same interpreter
        k = codec.Keys(bytes(32))
        buf = bytearray(codec.MAX_FRAME)
        pl = bytearray(codec.payload_len(codec.ALERT))
        t0 = ticks_us()
        for c in range(200):
            codec.encode_into(buf, k, codec.ALERT, codec.FLAG_ENCRYPTED, 1, c + 1, 0, pl)
        out["encode_us"] = ticks_diff(ticks_us(), t0) / 200
    print("J " + json.dumps(out))
    for s in slots:
        s.stop()

asyncio.run(main())
"""


def _run(mpy: Path, roots: list[Path], n: int, heapsize: str | None = None) -> dict:
    script = _SCRIPT % {"roots": [str(r) for r in roots], "n": n}
    r = run_micropython(script, path=[mpy], timeout=300, heapsize=heapsize)
    for line in r.stdout.splitlines():
        if line.startswith("J "):
            return json.loads(line[2:])
    raise RuntimeError("firmware bench script failed: " + (r.stderr + r.stdout)[-1500:])


def _min_heap_kb(mpy: Path, root: Path) -> int:
    """Smallest -X heapsize (KB, 8 KB steps) that runs boot + one acked alert."""
    lo, hi = 64, 256  # lo is known to fail on the 64-bit port (bytecode alone ~96 KB)
    while hi - lo > 8:
        mid = (lo + hi) // 16 * 8
        try:
            ok = _run(mpy, [root], 1, heapsize=f"{mid}K")["settled"]
        except RuntimeError:
            ok = False
        if ok:
            hi = mid
        else:
            lo = mid
    return hi


def _pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


def run() -> dict:
    with tempfile.TemporaryDirectory(prefix="auxilio-fwbench-") as td:
        tmp = Path(td)
        mpy = build_mpy(tmp / "mpy")
        mpy_bytes = sum(p.stat().st_size for p in mpy.rglob("*.mpy"))
        mq = broker()
        try:
            roots = [tmp / f"dev{i}" for i in range(EXTRA_DEVICES + 1)]
            secrets = {}
            for i, r in enumerate(roots):
                cfg = make_root(r, mq.url, n=i + 1, hold_ms=HOLD_MS, heartbeat_s=3600)
                secrets[cfg["device"]] = cfg["secret"]
            peer = C4Peer(mq, secrets)
            try:
                one = _run(mpy, roots[:1], N_ALERTS)
                many = _run(mpy, roots, 0)
                min_heap = _min_heap_kb(mpy, roots[0])
            finally:
                peer.close()
        finally:
            mq.close()
    lat_ms = [u / 1000 for u in one["latency_us"] if u >= 0]
    return {
        "press_to_first_publish_byte_ms_p50": round(statistics.median(lat_ms), 3),
        "press_to_first_publish_byte_ms_p99": round(_pct(lat_ms, 0.99), 3),
        "press_to_first_publish_byte_ms_max": round(max(lat_ms), 3),
        "alerts_timed": len(lat_ms),
        "baseline_encode_into_ms": round(one["encode_us"] / 1000, 4),
        "mpy_total_bytes": mpy_bytes,
        "heap_code_bytes": one["code"],
        "heap_steady_total_bytes": one["steady"],
        "heap_steady_state_bytes": one["steady"] - one["code"],
        "heap_during_alert_total_bytes": one["during"],
        "ram_per_extra_device_bytes": (many["steady"] - one["steady"]) // EXTRA_DEVICES,
        "min_heapsize_kb_alert_scenario": min_heap,
        "settled": one["settled"] and many["settled"],
        "targets": {"latency_ms": 20, "mpy_bytes": 65536, "steady_heap_bytes": 24576},
    }


if __name__ == "__main__":
    print(json.dumps(run(), indent=1))
