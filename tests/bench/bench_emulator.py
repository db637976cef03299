"""Virtual board figures: boot-to-REPL, mpremote fs cp throughput, RAM per device, max fleet size.

Baselines measured in the same run: a bare `micropython -c pass` start, and
`mpremote exec pass` (connection + raw REPL + soft reset overhead) on the same board.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
from auxilio.emulator import FlashImage, State, VirtualBoard, load_board
from auxilio.emulator.fleet import VirtualFleet
from auxilio.emulator.image import micropython_binary
from auxilio.testing.mosquitto import Mosquitto

MPREMOTE = str(Path(sys.executable).parent / "mpremote")
BOOT_RUNS = 7
CP_RUNS = 3
CP_SIZE = 64 * 1024
RAM_FLEET = 50  # devices in one interpreter for the RAM-per-device figure
HEARTBEAT_S = 2  # shortened heartbeat for the cadence search
CADENCE_SLACK = 1.5  # a beat later than 1.5 intervals breaks the cadence
SEARCH_SIZES = (100, 200, 400, 800, 1600, 3200)  # bounded doubling search
SEARCH_WINDOW_S = 5 * HEARTBEAT_S
PER_INTERPRETER = 100


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


def bench_boot(tmp: Path) -> dict[str, float]:
    board = load_board("bracelet-c3")
    img = FlashImage(tmp / "boot.img", board).create()
    img.deploy({"boot.py": b"pass\n"})
    times = []
    for _ in range(BOOT_RUNS):
        vb = VirtualBoard(board, img.path, rfc2217_port=None)
        t0 = time.perf_counter()
        vb.start(wait=False)
        while vb.state is not State.RUNNING:
            time.sleep(0.0005)
        times.append(time.perf_counter() - t0)
        vb.close()
    base = []
    for _ in range(BOOT_RUNS):
        t0 = time.perf_counter()
        subprocess.run([micropython_binary(), "-c", "pass"], check=True)
        base.append(time.perf_counter() - t0)
    return {
        "boot_to_repl_ms_p50": _ms(statistics.median(times)),
        "baseline_micropython_start_ms_p50": _ms(statistics.median(base)),
    }


def bench_cp(tmp: Path) -> dict[str, float]:
    board = load_board("bracelet-c3")
    img = FlashImage(tmp / "cp.img", board).create()
    src = tmp / "blob.bin"
    src.write_bytes(os.urandom(CP_SIZE))
    out: dict[str, float] = {}
    with VirtualBoard(board, img.path) as vb:
        for label, port in (("pty", vb.port), ("rfc2217", vb.rfc2217_url)):
            cp, base = [], []
            for i in range(CP_RUNS):
                t0 = time.perf_counter()
                subprocess.run(
                    [MPREMOTE, "connect", port, "fs", "cp", str(src), f":{label}{i}.bin"],
                    check=True,
                    capture_output=True,
                    timeout=300,
                )
                cp.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                subprocess.run(
                    [MPREMOTE, "connect", port, "exec", "pass"],
                    check=True,
                    capture_output=True,
                    timeout=300,
                )
                base.append(time.perf_counter() - t0)
            t_cp, t_base = statistics.median(cp), statistics.median(base)
            out[f"fs_cp_64k_{label}_s"] = round(t_cp, 2)
            out[f"fs_cp_64k_{label}_kib_s"] = round(64 / t_cp, 1)
            out[f"fs_cp_64k_{label}_kib_s_net_of_baseline"] = round(
                64 / max(t_cp - t_base, 1e-3), 1
            )
            out[f"baseline_mpremote_exec_{label}_s"] = round(t_base, 2)
    return out


def _rss_one(broker: Mosquitto, count: int, tmp: Path) -> tuple[int, VirtualFleet]:
    fleet = VirtualFleet(count, broker.url, workdir=tmp / f"ram{count}", per_interpreter=count)
    fleet.start(timeout=120)
    time.sleep(2)  # settle after connect
    return fleet.rss_bytes(), fleet


def bench_ram(broker: Mosquitto, tmp: Path) -> dict[str, float]:
    rss1, f1 = _rss_one(broker, 1, tmp)
    f1.close()
    rssn, fn = _rss_one(broker, RAM_FLEET, tmp)
    heap = []
    try:
        control = fn.controls[0]
        mark = control.mark()
        control.send("gc", 0)
        ev = control.wait_event(ev="mem", since=mark, timeout=10)
        heap.append(ev.get("alloc", 0))
    except (TimeoutError, OSError):
        pass
    finally:
        fn.close()
    out = {
        "devices_per_interpreter": RAM_FLEET,
        "interpreter_rss_1_device_kb": round(rss1 / 1024),
        f"interpreter_rss_{RAM_FLEET}_devices_kb": round(rssn / 1024),
        "rss_per_extra_device_kb": round((rssn - rss1) / (RAM_FLEET - 1) / 1024, 1),
    }
    if heap:
        out[f"heap_alloc_{RAM_FLEET}_devices_kb"] = round(heap[0] / 1024, 1)
        out["heap_per_device_kb"] = round(heap[0] / RAM_FLEET / 1024, 1)
    return out


class _Beats:
    """Arrival times of HEARTBEAT frames per device topic (type byte only: no secrets needed)."""

    def __init__(self, broker: Mosquitto) -> None:
        self.times: dict[str, list[float]] = {}
        self.lock = threading.Lock()
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-{os.getpid()}")
        self.c.on_message = self._on
        self.c.connect(broker.host, broker.port)
        self.c.subscribe("auxilio/v1/+/up", qos=1)
        self.c.loop_start()

    def _on(self, _c: object, _u: object, m: mqtt.MQTTMessage) -> None:
        if len(m.payload) > 1 and m.payload[1] == 0x03:  # 0x03: HEARTBEAT
            with self.lock:
                self.times.setdefault(m.topic, []).append(time.monotonic())

    def reset(self) -> None:
        with self.lock:
            self.times.clear()

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


def _holds_cadence(broker: Mosquitto, n: int, tmp: Path, beats: _Beats) -> dict[str, float]:
    fleet = VirtualFleet(
        n,
        broker.url,
        workdir=tmp / f"fleet{n}",
        heartbeat_s=HEARTBEAT_S,
        per_interpreter=PER_INTERPRETER,
    )
    try:
        fleet.start(timeout=max(60.0, n * 0.3))
        time.sleep(2 * HEARTBEAT_S)  # let the boot burst pass
        beats.reset()
        c0, t0 = fleet.cpu_seconds(), time.monotonic()
        time.sleep(SEARCH_WINDOW_S)
        cpu = (fleet.cpu_seconds() - c0) / (time.monotonic() - t0)
        with beats.lock:
            series = [list(v) for v in beats.times.values()]
        gaps = sorted(b - a for s in series for a, b in zip(s, s[1:], strict=False))
        p99 = gaps[int(len(gaps) * 0.99) - 1] if gaps else float("inf")
        beating = sum(1 for s in series if len(s) >= 2)
        return {
            "devices": n,
            "beating": beating,
            "gap_p99_s": round(p99, 2),
            "cpu_fraction": round(cpu, 3),
            "rss_mb": round(fleet.rss_bytes() / 1e6, 1),
            "held": float(beating == n and p99 <= CADENCE_SLACK * HEARTBEAT_S),
        }
    except Exception as exc:  # a fleet that cannot even start does not hold its cadence
        return {"devices": n, "held": 0.0, "error": str(exc)[:200]}  # type: ignore[dict-item]
    finally:
        fleet.close()


def bench_max_fleet(broker: Mosquitto, tmp: Path) -> dict[str, object]:
    beats = _Beats(broker)
    steps = []
    best = 0
    try:
        for n in SEARCH_SIZES:
            r = _holds_cadence(broker, n, tmp, beats)
            steps.append(r)
            if not r["held"]:
                break
            best = n
    finally:
        beats.close()
    return {
        "fleet_heartbeat_s": HEARTBEAT_S,
        "max_fleet_holding_cadence": best,
        "max_fleet_search_capped": best == SEARCH_SIZES[-1],
        "fleet_steps": steps,
    }


def run() -> dict[str, object]:
    out: dict[str, object] = {}
    with tempfile.TemporaryDirectory(prefix="bench-emu-") as d:
        tmp = Path(d)
        out.update(bench_boot(tmp))
        out.update(bench_cp(tmp))
        with Mosquitto() as broker:
            out.update(bench_ram(broker, tmp))
            out.update(bench_max_fleet(broker, tmp))
    return out


if __name__ == "__main__":
    import json

    print(json.dumps(run(), indent=1))
