"""QoS 1 publish -> PUBACK round trip of the firmware session under micropython, vs paho in CPython.

Figures (ms): p50/p99 for the micropython session (TCP_NODELAY on, as shipped), for a paho-mqtt
CPython client on the same broker in the same run (the baseline), and the same micropython
session with TCP_NODELAY off on the client (`client_nagle`) and on the broker
(`broker_nagle`), which is what the NODELAY setting buys. Payload: 64 bytes, an ALERT's
maximum (DESIGN.md 3); `*_split` uses a 300-byte payload, which the client writes as header
and payload separately (two segments), the case where client-side Nagle bites.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import paho.mqtt.client as paho
from auxilio.testing.mosquitto import Mosquitto

from tests.conftest import micropython_binary
from tests.firmware.mqtt_harness import MpDevice, build_mpy

N = 300  # round trips per configuration (after WARMUP)
N_NAGLE = 40  # Nagle configurations cost up to ~90 ms each: fewer samples
WARMUP = 20
TOPIC = "bench/v1/0938-NKRT/up"


def _pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def _summary(us: list[float]) -> dict[str, float]:
    ms = [u / 1000 for u in us]
    return {
        "p50_ms": round(statistics.median(ms), 3),
        "p99_ms": round(_pct(ms, 99), 3),
        "n": len(ms),
    }


def _micropython(b: Mosquitto, n: int, size: int = 64, nodelay: bool = True) -> list[float]:
    dev = MpDevice(
        {"client_id": "bench-mp", "host": b.host, "port": b.port, "tcp_nodelay": nodelay}
    )
    try:
        dev.wait_state(True, timeout=30)
        start = len(dev.snapshot())
        dev.send(f"bench {n + WARMUP} {TOPIC} {size}")
        line = dev.wait_line(lambda s: s.startswith("BENCH "), timeout=300, start=start)
        return json.loads(line[6:])[WARMUP:]
    finally:
        dev.close()


def _paho(b: Mosquitto, n: int, size: int = 64) -> list[float]:
    c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="bench-paho")
    acked = threading.Event()
    c.on_publish = lambda *a: acked.set()
    c.connect(b.host, b.port)
    c.loop_start()
    try:
        payload = bytes(size)
        out = []
        for i in range(n + WARMUP):
            acked.clear()
            t0 = time.perf_counter()
            c.publish(TOPIC, payload, 1)
            if not acked.wait(10):
                raise RuntimeError("paho: no PUBACK within 10 s")
            if i >= WARMUP:
                out.append((time.perf_counter() - t0) * 1e6)
        return out
    finally:
        c.loop_stop()
        c.disconnect()


_HEAP_SCRIPT = """
import sys, gc
sys.path.insert(0, %r)
import asyncio, socket, select, struct, errno
gc.collect(); a = gc.mem_alloc()
import session
gc.collect(); b = gc.mem_alloc()
s = session.Session("0938-NKRT", "127.0.0.1", 1883, subscriptions=("a/v1/0938-NKRT/down",))
gc.collect(); c = gc.mem_alloc()
print(b - a, c - b)
"""


def _heap(mpy: Path) -> dict[str, int]:
    """Heap cost of the .mpy build: loaded modules (bytecode lives in RAM) and one Session."""
    out = subprocess.run(
        [micropython_binary(), "-X", "heapsize=64K", "-c", _HEAP_SCRIPT % str(mpy)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.split()
    return {"modules_bytes": int(out[0]), "session_object_bytes": int(out[1])}


def _connected_heap(b: Mosquitto, mpy: Path) -> int:
    """Whole test-runner process (.mpy build, 64K heap) at steady state while connected."""
    dev = MpDevice(
        {"client_id": "bench-heap", "host": b.host, "port": b.port}, heapsize="64K", path=mpy
    )
    try:
        dev.wait_state(True, timeout=30)
        return dev.mem()
    finally:
        dev.close()


def run() -> dict:
    figures: dict[str, object] = {}
    with tempfile.TemporaryDirectory() as d:
        mpy = build_mpy(Path(d))
        figures["heap"] = _heap(mpy)
        figures["mpy_bytes"] = sum(f.stat().st_size for f in mpy.glob("*.mpy"))
        with Mosquitto() as b:
            figures["heap"]["runner_connected_bytes"] = _connected_heap(b, mpy)
    with Mosquitto() as b:  # its config sets set_tcp_nodelay true
        figures["micropython"] = _summary(_micropython(b, N))
        figures["paho_baseline"] = _summary(_paho(b, N))
        figures["micropython_split"] = _summary(_micropython(b, N_NAGLE, size=300))
        figures["client_nagle_split"] = _summary(_micropython(b, N_NAGLE, size=300, nodelay=False))
        figures["client_nagle"] = _summary(_micropython(b, N_NAGLE, nodelay=False))
    b2 = Mosquitto()
    b2.config_path.write_text(
        b2.config_path.read_text().replace("set_tcp_nodelay true", "set_tcp_nodelay false")
    )
    with b2:
        figures["broker_nagle"] = _summary(_micropython(b2, N_NAGLE))
    # Nagle bites as soon as a packet leaves in two writes: NODELAY is what keeps it sub-ms.
    figures["nodelay_matters"] = (
        figures["client_nagle_split"]["p50_ms"] > 10 * figures["micropython_split"]["p50_ms"]
    )
    return figures


if __name__ == "__main__":
    print(json.dumps(run(), indent=1))
