"""ACK promptness (issue 8 §8): commit -> ACK on the device's topic in a 1,000-frame burst, and after a restart.

Setup: BURST_DEVICES device sessions (tests/bench/fleet.py: real paho
clients, each subscribed at QoS 1 to its own ``auxilio/v1/<dev>/down``, all
on one epoll thread so arrival times are taken when the bytes are read), a
mosquitto with its deployed per-client in-flight window (20), and the real
gateway in its own process (tests/bench/gateway_proc.py), SQLite with
synchronous=FULL, clock synchronised, which reports when each group commit
became durable. The devices publish BURST_FRAMES ALERTs at once.

Figures:
- ``burst_commit_to_ack_ms_*``: per frame, from the moment its batch
  committed to its signed ACK arriving at the device (the issue's figure),
  without a forwarder and with the transactional forwarder to a JSONL
  stream that discards (``burst_fwd_*``). ``*_max_ack_backlog``: the most
  frames committed but not yet acked at the device at any commit (the
  issue's repro: 1,039 ACKs logged, 325 received, a backlog of 714).
- ``burst_publish_to_ack_ms_*``: the device's view (publish -> ACK) of the
  same burst; its baseline ``bare_burst_echo_ms_*`` is the same burst
  answered by a bare paho echo on the same broker, same run. ``bare_rtt_*``:
  one paho QoS 1 echo round trip (the unloaded broker).
- ``restart_*``: the stored frames of the last burst are marked as never
  confirmed by the broker (alerts.acked_at = NULL, exactly what a kill -9
  left behind before the fix), the gateway is started again, and no device
  sends anything: restart (process start) -> ACK at the device, and
  subscribed -> ACK, for every frame; ``restart_gateway_up_ms`` (process
  start -> subscribed) is the floor, measured in the same restart.
- ``crash_*``: a real kill -9 (``AUXILIO_GATEWAY_CRASH_AT=after_commit``)
  at the first commit of a fresh burst; then the restart -> ACK of every
  frame of that burst, none re-sent by a device (the stored ones are
  re-acked at start-up; the rest are the broker's redeliveries).
"""

from __future__ import annotations

import json
import os
import queue
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from auxilio.gateway.simulator import SIM_LOCATION
from auxilio.protocol import codec
from auxilio.registry import open_registry
from auxilio.testing.mosquitto import Mosquitto
from sqlalchemy import func, select, tuple_, update

from tests.bench.bench_gateway import (
    BROKER_INFLIGHT,
    _drop_session,
    _pct,
    bare_rtt,
    bench_chain,
    start_echo,
    stop_echo,
)
from tests.bench.fleet import Fleet

BURST_DEVICES = 250
BURST_FRAMES = 1000  # BURST_FRAMES / BURST_DEVICES frames per device, published at once
RTT_SAMPLES = 300  # bare paho echo round trips for the unloaded baseline
BURST_TIMEOUT_S = 60.0  # every wait for a burst's answers is bounded by this
START_TIMEOUT_S = 60.0  # gateway process start -> subscribed
STOP_TIMEOUT_S = 20.0
GATEWAY_CLIENT_ID = "auxilio-gateway"
LOOKUP_CHUNK = 200  # keys per registry query


class GatewayProc:
    """tests/bench/gateway_proc.py in its own process; its subscription time and commit log."""

    def __init__(self, broker: Mosquitto, registry: str, keys: Path, tmp: Path, **kw: Any) -> None:
        self.commits_file = tmp / f"commits-{time.time_ns()}.json"
        forward: list[str] = kw.get("forward", [])
        env = {**os.environ, **kw.get("env", {})}
        self.started = time.perf_counter()
        self.p = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.bench.gateway_proc",
                broker.url,
                registry,
                str(keys),
                str(self.commits_file),
                *forward,
            ],
            stdout=subprocess.PIPE,
            stderr=open(tmp / "gateway.log", "ab"),  # noqa: SIM115 - the child owns it
            text=True,
            env=env,
        )
        self._lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self._subscribed: float | None = None

    def _read(self) -> None:
        assert self.p.stdout is not None
        for line in self.p.stdout:
            self._lines.put(line)

    def subscribed(self, timeout: float = START_TIMEOUT_S) -> float:
        """perf_counter time at which the gateway was subscribed (waits for it)."""
        if self._subscribed is None:
            try:
                line = self._lines.get(timeout=timeout)
            except queue.Empty:
                raise RuntimeError("bench gateway did not subscribe") from None
            self._subscribed = float(json.loads(line)["subscribed"])
        return self._subscribed

    def stop(self) -> list[tuple[float, list[list[int]]]]:
        """SIGTERM (a clean stop: acked_at is flushed) and the commit log."""
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        if not self.commits_file.exists():
            return []
        return json.loads(self.commits_file.read_text())


class Counters:
    """Next unused counter per device (a frame name is never reused, SPEC §12.1)."""

    def __init__(self, devices: list[int]) -> None:
        self.next = dict.fromkeys(devices, 1)

    def frames(
        self, secrets: dict[int, bytes], n: int, ftype: str = "ALERT"
    ) -> list[tuple[int, int, bytes]]:
        """n frames round-robin over the devices, timestamped now (the gateway's clock is synced)."""
        devs = sorted(self.next)
        now = int(time.time())
        out = []
        for i in range(n):
            d = devs[i % len(devs)]
            c = self.next[d]
            self.next[d] = c + 1
            f = {"type": ftype, "device": d, "counter": c, "timestamp": now, **SIM_LOCATION}
            out.append((d, c, codec.encode(f, codec.Keys(secrets[d]))))
        return out


def _ms(xs: list[float]) -> dict[str, float]:
    return {"p50": round(statistics.median(xs) * 1000, 3), "p99": round(_pct(xs, 99) * 1000, 3)}


def _put(res: dict[str, Any], name: str, xs: list[float]) -> None:
    for k, v in _ms(xs).items():
        res[f"{name}_ms_{k}"] = v


def _answered(fleet: Fleet, keys: set[tuple[int, int]], since: int, ftype: str = "ACK") -> Any:
    return lambda: keys <= fleet.received(since, ftype).keys()


def _wait_all(
    fleet: Fleet, keys: set[tuple[int, int]], since: int, ftype: str = "ACK"
) -> dict[tuple[int, int], tuple[float, dict[str, Any]]]:
    """Pump until every key has its answer (bounded); the answers that came."""
    # Decoding every arrival on each pump turn is quadratic: check only once the
    # count could be complete, then decode once.
    fleet.pump(lambda: len(fleet.arrivals) - since >= len(keys), BURST_TIMEOUT_S)
    fleet.pump(_answered(fleet, keys, since, ftype), BURST_TIMEOUT_S)
    got = fleet.received(since, ftype)
    return {k: got[k] for k in keys if k in got}


def _commit_times(commits: list[tuple[float, list[list[int]]]]) -> dict[tuple[int, int], float]:
    out: dict[tuple[int, int], float] = {}
    for t, keys in commits:
        for d, c in keys:
            out.setdefault((d, c), t)
    return out


def _max_backlog(committed: dict[tuple[int, int], float], acked: dict[Any, Any]) -> int:
    """The most frames committed but not yet acked at the device, at any commit."""
    ack_times = sorted(acked[k][0] for k in committed if k in acked)
    worst = 0
    for t in sorted(set(committed.values())):
        n_committed = sum(1 for v in committed.values() if v <= t)
        n_acked = sum(1 for a in ack_times if a <= t)
        worst = max(worst, n_committed - n_acked)
    return worst


def bare_burst(
    fleet: Fleet, broker: Mosquitto, frames: list[tuple[int, int, bytes]]
) -> list[float]:
    """The same burst answered by the bare echo: publish -> echo at the device (s)."""
    echo = start_echo(broker)
    try:
        mark = len(fleet.arrivals)
        fleet.burst(frames)
        keys = {(d, c) for d, c, _f in frames}
        got = _wait_all(fleet, keys, mark, "ALERT")
    finally:
        stop_echo(echo)
    if len(got) != len(keys):
        raise RuntimeError(f"bare echo answered {len(got)}/{len(keys)}")
    return [got[k][0] - fleet.sent[k] for k in keys]


def gateway_burst(
    fleet: Fleet,
    counters: Counters,
    secrets: dict[int, bytes],
    gw: GatewayProc,
) -> dict[str, Any]:
    """A warm-up frame per device, then one measured burst; the gateway is stopped after it."""
    try:
        gw.subscribed()
        warm = counters.frames(secrets, len(secrets))
        mark = len(fleet.arrivals)
        fleet.burst(warm)
        if len(_wait_all(fleet, {(d, c) for d, c, _f in warm}, mark)) != len(warm):
            raise RuntimeError("warm-up frames were not all acked")
        frames = counters.frames(secrets, BURST_FRAMES)
        keys = {(d, c) for d, c, _f in frames}
        mark = len(fleet.arrivals)
        t0 = fleet.burst(frames)
        acked = _wait_all(fleet, keys, mark)
    finally:
        commits = gw.stop()
    committed = {k: t for k, t in _commit_times(commits).items() if k in keys}
    if len(acked) != len(keys) or len(committed) != len(keys):
        raise RuntimeError(
            f"burst: {len(committed)}/{len(keys)} committed, {len(acked)}/{len(keys)} acked"
        )
    received = sum(1 for _t, f in acked.values() if f["disposition"] == "received")
    batches = [ks for t, ks in commits if any(tuple(k) in keys for k in ks)]
    return {
        "keys": keys,
        "commit_to_ack": [acked[k][0] - committed[k] for k in keys],
        "publish_to_ack": [acked[k][0] - fleet.sent[k] for k in keys],
        "wall_s": max(a[0] for a in acked.values()) - t0,
        "acks": len(acked),
        "received": received,
        "batches": len(batches),
        "max_backlog": _max_backlog(committed, acked),
    }


def _unacked(registry_url: str, keys: set[tuple[int, int]], clear: bool) -> int:
    """How many of `keys` are stored with acked_at NULL (the broker never confirmed their ACK).

    clear=True first makes them so, which is what a kill -9 between commit and
    ACK left behind before the fix (ACKs waiting in paho's window died with it).
    """
    reg = open_registry(registry_url)
    a = reg.tables.alerts
    pairs = sorted(keys)
    n = 0
    try:
        with reg.engine.begin() as conn:
            for i in range(0, len(pairs), LOOKUP_CHUNK):
                chunk = tuple_(a.c.device_id, a.c.counter).in_(pairs[i : i + LOOKUP_CHUNK])
                if clear:
                    conn.execute(update(a).where(chunk).values(acked_at=None))
                n += conn.execute(
                    select(func.count()).where(chunk, a.c.acked_at.is_(None))
                ).scalar_one()
    finally:
        reg.close()
    return int(n)


def restart_round(fleet: Fleet, keys: set[tuple[int, int]], gw_factory: Any) -> dict[str, Any]:
    """Start the gateway; no device sends anything; every key's ACK, timed from the start."""
    mark = len(fleet.arrivals)
    gw = gw_factory()
    try:
        acked = _wait_all(fleet, keys, mark)
        up = gw.subscribed()
    finally:
        gw.stop()
    return {
        "acks": len(acked),
        "restart_to_ack": [acked[k][0] - gw.started for k in acked],
        "subscribed_to_ack": [acked[k][0] - up for k in acked],
        "up_s": up - gw.started,
    }


def run() -> dict[str, Any]:
    res: dict[str, Any] = {}
    with bench_chain("acks", BURST_DEVICES) as (tmp, broker, (url, key_file, secrets)):
        counters = Counters(sorted(secrets))

        def gateway(**kw: Any) -> GatewayProc:
            return GatewayProc(broker, url, key_file, tmp, **kw)

        rtt = bare_rtt(broker, RTT_SAMPLES)
        with Fleet(broker, secrets, extra=lambda d: [f"bench/echo/{codec.device_str(d)}"]) as fleet:
            echo = bare_burst(fleet, broker, counters.frames(secrets, BURST_FRAMES))
            plain = gateway_burst(fleet, counters, secrets, gateway())
            fwd = gateway_burst(fleet, counters, secrets, gateway(forward=["jsonl"]))

            # Restart with fwd's burst stored but never confirmed by the broker.
            stored_unacked = _unacked(url, fwd["keys"], clear=True)
            restart = restart_round(fleet, fwd["keys"], lambda: gateway(forward=["jsonl"]))

            # A real kill -9 right after the first commit of a fresh burst, then a restart.
            crashing = gateway(forward=["jsonl"], env={"AUXILIO_GATEWAY_CRASH_AT": "after_commit"})
            crashing.subscribed()
            frames = counters.frames(secrets, BURST_FRAMES)
            crash_keys = {(d, c) for d, c, _f in frames}
            mark = len(fleet.arrivals)
            fleet.burst(frames)
            fleet.pump(lambda: crashing.p.poll() is not None, BURST_TIMEOUT_S)
            crashing.stop()
            crash_rc = crashing.p.returncode
            before = len([k for k in fleet.received(mark) if k in crash_keys])
            crash_unacked = _unacked(url, crash_keys, clear=False)
            crash = restart_round(fleet, crash_keys, lambda: gateway(forward=["jsonl"]))

            _drop_session(broker, GATEWAY_CLIENT_ID)
            echo += bare_burst(fleet, broker, counters.frames(secrets, BURST_FRAMES))
        rtt += bare_rtt(broker, RTT_SAMPLES)

    res["burst_devices"] = BURST_DEVICES
    res["burst_frames"] = BURST_FRAMES
    res["broker_max_inflight_messages"] = BROKER_INFLIGHT
    res["bare_rtt_ms_p50"] = round(statistics.median(rtt), 3)
    res["bare_rtt_ms_p99"] = round(_pct(rtt, 99), 3)
    _put(res, "bare_burst_echo", echo)
    for name, r in (("burst", plain), ("burst_fwd", fwd)):
        _put(res, f"{name}_commit_to_ack", r["commit_to_ack"])
        _put(res, f"{name}_publish_to_ack", r["publish_to_ack"])
        res[f"{name}_acks_received"] = r["acks"]
        res[f"{name}_disposition_received"] = r["received"]
        res[f"{name}_wall_ms"] = round(r["wall_s"] * 1000, 1)
        res[f"{name}_batches"] = r["batches"]
        res[f"{name}_max_ack_backlog"] = r["max_backlog"]
    res["burst_publish_to_ack_p50_over_bare_echo_p50"] = round(
        statistics.median(plain["publish_to_ack"]) / statistics.median(echo), 2
    )
    res["burst_fwd_commit_to_ack_p99_over_nofwd_p99"] = round(
        _pct(fwd["commit_to_ack"], 99) / _pct(plain["commit_to_ack"], 99), 2
    )
    res["restart_stored_unacked"] = stored_unacked
    res["restart_acks_received"] = restart["acks"]
    _put(res, "restart_to_ack", restart["restart_to_ack"])
    _put(res, "restart_subscribed_to_ack", restart["subscribed_to_ack"])
    res["restart_gateway_up_ms"] = round(restart["up_s"] * 1000, 1)
    res["crash_exit"] = crash_rc
    res["crash_acks_before_restart"] = before
    res["crash_stored_unacked"] = crash_unacked
    res["crash_acks_received"] = crash["acks"]
    _put(res, "crash_restart_to_ack", crash["restart_to_ack"])
    _put(res, "crash_subscribed_to_ack", crash["subscribed_to_ack"])
    res["crash_gateway_up_ms"] = round(crash["up_s"] * 1000, 1)
    res["target_all_acked_after_restart"] = (
        restart["acks"] == BURST_FRAMES and crash["acks"] == BURST_FRAMES
    )
    return res


if __name__ == "__main__":
    print(json.dumps(run()))
