"""The gateway's per-turn lifecycle read (issue 11: a revoke decides the next frame) against the turn's own commit.

Since issue 11 the gateway reads the state and key epoch of the devices a turn
touches on every turn (gateway/pipeline.py STATE_REFRESH_S = 0), instead of
trusting a cached row for up to a second. Figures (microseconds, median of
ROUNDS x CALLS): ``read_1_us`` and ``read_32_us``: Store.device_rows for one
device and for a turn of 32 devices, on a SQLite registry of FLEET devices;
baseline in the same run, ``commit_1_us``: the group commit one accepted frame
costs anyway (its replay state and last_seen, synchronous=FULL). The ratios say
what the read adds to a turn.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

from auxilio.gateway.store import Batch, Store
from auxilio.keys import new_device_secret, seal
from auxilio.registry import open_registry
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

FLEET = 1000  # devices in the registry
CALLS = 200  # per round
ROUNDS = 3
FIRST_ID = 0x100000


def _median_us(fn: object, calls: int = CALLS) -> float:
    rounds = []
    for _ in range(ROUNDS):
        t0 = time.perf_counter()
        for i in range(calls):
            fn(i)  # type: ignore[operator]
        rounds.append((time.perf_counter() - t0) / calls * 1e6)
    return statistics.median(rounds)


def run() -> dict[str, float | int]:
    pub = X25519PrivateKey.generate().public_key()
    sealed = seal(new_device_secret(), pub, FIRST_ID)  # content is never opened here
    with tempfile.TemporaryDirectory(prefix="auxilio-bench-") as tmp:
        registry = open_registry(Path(tmp) / "registry.db")
        try:
            for i in range(FLEET):
                registry.add_device(FIRST_ID + i, "bracelet", "bracelet-c3", sealed)
            store = Store(registry)
            ids = [FIRST_ID + i for i in range(32)]
            read_1 = _median_us(lambda i: store.device_rows([FIRST_ID + i % FLEET]))
            read_32 = _median_us(lambda i: store.device_rows(ids))

            def commit(i: int) -> None:
                store.commit(
                    Batch(
                        devices={
                            FIRST_ID: {
                                "high_water": i + 1,
                                "window": 1,
                                "last_seen": time.time(),
                                "epoch": 1,
                            }
                        }
                    )
                )

            commit_1 = _median_us(commit)
        finally:
            registry.close()
    return {
        "fleet": FLEET,
        "read_1_us": round(read_1, 1),
        "read_32_us": round(read_32, 1),
        "commit_1_us": round(commit_1, 1),
        "read_1_over_commit": round(read_1 / commit_1, 3),
        "read_32_over_commit": round(read_32 / commit_1, 3),
    }


if __name__ == "__main__":
    import json

    print(json.dumps(run()))
