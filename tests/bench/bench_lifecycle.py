"""The gateway's per-turn lifecycle read (issue 11: a revoke decides the next frame) against the turn's own commit.

Since issue 11 the gateway reads the state and key epoch of the devices a turn
touches on every turn (gateway/pipeline.py STATE_REFRESH_S = 0), instead of
trusting a cached row for up to a second. Figures (microseconds, median of
ROUNDS x CALLS): ``read_1_us`` and ``read_32_us``: Store.device_rows for one
device and for a turn of 32 devices, on a SQLite registry of FLEET devices;
baseline in the same run, ``commit_1_us``: the group commit one accepted frame
costs anyway (its replay state and last_seen, synchronous=FULL). The ratios say
what the read adds to a turn.

Revoke, end to end (issue 11: within 1 s of the command), on a real mosquitto with
the dynamic-security plugin and the gateway in process, over REVOKES devices:
``revoke_cmd_ms`` (`auxilio devices revoke --broker-admin` run in process, registry
commit and broker change), ``revoke_login_refused_ms`` (a new login with the device's
password refused) and ``revoke_alert_rejected_ms`` (the device's next alert answered
rejected/revoked by the gateway), medians from the command's start; baseline in the
same run, ``cli_show_ms``: `auxilio devices show` in process (the CLI's own cost).
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


REVOKES = 5


def revoke_figures() -> dict[str, float]:
    from auxilio.gateway.simulator import SimDevice
    from auxilio.testing.livebroker import LiveBroker

    with tempfile.TemporaryDirectory(prefix="auxilio-bench-") as tmp:
        live = LiveBroker(
            Path(tmp), authority="dynsec", devices=[("bracelet", "bracelet-c3")] * REVOKES
        )
        try:
            live.start_gateway()
            show, cmd, refused, rejected = [], [], [], []
            for i in range(REVOKES):
                cred = live.creds[i]
                user, pw = live.side_door(cred["device"])
                side = SimDevice(
                    live.device_id(i),
                    live.secret(i),
                    "127.0.0.1",
                    live.port,
                    password=pw,
                    username=user,
                )
                try:
                    t0 = time.perf_counter()
                    assert live.cli("devices", "show", cred["device"], admin=False)[0] == 0
                    show.append(time.perf_counter() - t0)
                    t0 = time.perf_counter()
                    assert live.cli("devices", "revoke", cred["device"])[0] == 0
                    cmd.append(time.perf_counter() - t0)
                    assert live.session(cred["device"], cred["password"]).refused
                    refused.append(time.perf_counter() - t0)
                    ack = side.wait_ack(side.send("ALERT"), timeout=15)
                    assert ack is not None and ack["reason"] == "revoked"
                    rejected.append(time.perf_counter() - t0)
                finally:
                    side.close()
        finally:
            live.close()

    def ms(xs: list[float]) -> float:
        return round(statistics.median(xs) * 1e3, 1)

    return {
        "revokes": REVOKES,
        "cli_show_ms": ms(show),
        "revoke_cmd_ms": ms(cmd),
        "revoke_login_refused_ms": ms(refused),
        "revoke_alert_rejected_ms": ms(rejected),
    }


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
        **revoke_figures(),
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
