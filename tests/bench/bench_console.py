"""The operator console's refresh cost against the size of the alert history (SQLite).

The monitor reads one snapshot per second (view.snapshot: the queue, recent
alerts, events, their assignments, attends and outcomes, the summary; with
DEVICES devices in the devices view). It must
not grow with the history: figures at SMALL and LARGE stored frames, with the
same queue. Baseline in the same run: one primary-key SELECT of an alert row.
Also `auxilio report` over the large history (it is a scan by design).
"""

from __future__ import annotations

import datetime as dt
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from auxilio.console import report, view
from auxilio.registry import open_registry
from sqlalchemy import insert, select

# History sizes (stored frames of all types) and what else the registry holds.
SMALL, LARGE = 2_000, 100_000
DEVICES = 500
EVENTS_PER_FRAME = 0.3
PENDING = 12  # unattended alerts in the queue
# Timed repetitions per figure (bounded: a few seconds in all).
RUNS = 30
INSERT_CHUNK = 5_000


def _seed(path: Path, frames: int) -> Any:
    reg = open_registry(path)
    t = reg.tables
    now = dt.datetime.now(dt.timezone.utc)
    t0 = now - dt.timedelta(days=365)
    with reg.engine.begin() as conn:
        conn.execute(
            insert(t.devices),
            [
                {
                    "id": 0x100000 + i,
                    "kind": "bracelet" if i % 5 else "button",
                    "board": "devkit-esp32",
                    "state": "assigned",
                    "key_epoch": 1,
                    "sealed_secret": b"x",
                    "config_seq": 0,
                    "window": 0,
                    "last_seen": now,
                    "created_at": t0,
                    "updated_at": t0,
                }
                for i in range(DEVICES)
            ],
        )
        conn.execute(
            insert(t.assignments),
            [
                {
                    "device_id": 0x100000 + i,
                    "kind": "case",
                    "case_ref": f"PR-2026-{i:05d}",
                    "valid_from": t0,
                    "created_at": t0,
                }
                for i in range(DEVICES)
            ],
        )
        types = ("ALERT", "POWER", "BOOT", "LOW_BATTERY", "TAMPER")
        payload = {"lat_e7": 194326080, "lon_e7": -991332080, "battery": 80, "bearer": "wifi"}
        rows = []
        for i in range(frames):
            at = t0 + dt.timedelta(seconds=i * 365 * 86400 // frames)
            pending = i >= frames - PENDING
            typ = "ALERT" if pending else types[i % len(types)]
            rows.append(
                {
                    "device_id": 0x100000 + i % DEVICES,
                    "key_epoch": 1,
                    "counter": i + 1,
                    "type": typ,
                    "payload": payload,
                    "received_at": at,
                    "attending_at": None if pending or typ != "ALERT" else at,
                    "attending_by": None if pending else "op",
                    "disposition": "received",
                }
            )
            if len(rows) == INSERT_CHUNK:
                conn.execute(insert(t.alerts), rows)
                rows = []
        if rows:
            conn.execute(insert(t.alerts), rows)
        conn.execute(
            insert(t.events),
            [
                {"device_id": 0x100000 + i % DEVICES, "type": "SUPERVISION_LOST", "at": t0}
                for i in range(int(frames * EVENTS_PER_FRAME))
            ],
        )
    return reg


def _p50_ms(fn: Any, runs: int = RUNS) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return round(statistics.median(times), 3)


def _figures(frames: int, tmp: Path) -> dict[str, float]:
    reg = _seed(tmp / f"r{frames}.db", frames)
    ro = open_registry(tmp / f"r{frames}.db", readonly=True)
    try:
        a = ro.tables.alerts
        with ro.reader.connect() as conn:

            def one_row() -> None:
                conn.execute(select(a).where(a.c.id == frames // 2)).first()

            base = _p50_ms(one_row, RUNS * 10)
        # The live console's refresh (events below), and with the devices view (`d`, --once).
        snap = _p50_ms(lambda: view.snapshot(ro, 15, with_devices=False))
        assert view.snapshot(ro, 15)["pending_total"] == PENDING
        out = {
            "pk_select_ms": base,
            "snapshot_ms": snap,
            "snapshot_devices_ms": _p50_ms(lambda: view.snapshot(ro, 15)),
            "snapshot_vs_pk": round(snap / base, 1),
        }
        if frames == LARGE:
            out["report_ms"] = _p50_ms(lambda: report.build(ro), 3)
        return out
    finally:
        ro.close()
        reg.close()


def run() -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as d:
        small = _figures(SMALL, Path(d))
        large = _figures(LARGE, Path(d))
    return {
        "frames_small": SMALL,
        "frames_large": LARGE,
        **{f"{k}_small": v for k, v in small.items()},
        **{f"{k}_large": v for k, v in large.items()},
        # Refresh cost at 50x the history, as a multiple of the small one (1.0: flat).
        "snapshot_growth": round(large["snapshot_ms"] / small["snapshot_ms"], 2),
    }


if __name__ == "__main__":
    import json

    print(json.dumps(run()))
