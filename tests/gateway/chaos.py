"""Seeded fault runs of the whole C4 path: crashes at every step, dying consumers, failing webhooks.

One run (one seed) is: simulated devices press alerts and retry like the
firmware until acked; the gateway forwards through a webhook or a JSONL pipe;
the seed picks a crash point (crash.POINTS, or none) and on which occurrence
it fires, and a sink fault (404/503 windows, dropped connections, a consumer
that dies after some lines). A crashed gateway is abandoned as kill -9 would
leave it (no DISCONNECT, no flush) and a fresh one is started on the same
registry; a dead consumer is replaced. The run passes when every pressed
alert was acked and every acked alert reached dispatch at least once.

`pytest tests/gateway/test_chaos.py` runs CHAOS_RUNS seeds (200 in CI);
`make chaos` runs many more.
"""

from __future__ import annotations

import random
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from auxilio.gateway import Gateway
from auxilio.gateway.clock import ClockState
from auxilio.gateway.crash import POINTS, SimulatedCrash
from auxilio.gateway.forward import JsonlSink, WebhookSink
from auxilio.gateway.simulator import SimDevice
from auxilio.keys import new_device_secret, seal
from auxilio.registry import open_registry
from auxilio.testing.sinks import PipeConsumer, WebhookReceiver
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

# A run must settle within this (it normally takes well under a second).
RUN_TIMEOUT_S = 30.0
# How often a simulated device re-sends an unacked alert (the firmware backs off
# from 2 s; faster here keeps 200 runs short).
RESEND_S = 0.15
FORWARD_OPTIONS = {"retry_min_s": 0.02, "failing_after_s": 0.5}


@dataclass
class Plan:
    seed: int
    devices: int
    alerts: int
    sink: str  # webhook | jsonl
    crash: str | None
    crash_on: int  # which occurrence of the crash point fires
    fault: str  # none | 404 | 503 | drop | consumer_dies
    fault_count: int

    @classmethod
    def from_seed(cls, seed: int) -> Plan:
        rng = random.Random(seed)
        sink = rng.choice(["webhook", "jsonl"])
        faults = ["none", "404", "503", "drop"] if sink == "webhook" else ["none", "consumer_dies"]
        return cls(
            seed=seed,
            devices=rng.randint(1, 2),
            alerts=rng.randint(1, 3),
            sink=sink,
            crash=rng.choice([None, *POINTS]),
            crash_on=rng.randint(1, 2),
            fault=rng.choice(faults),
            fault_count=rng.randint(1, 4),
        )


@dataclass
class Outcome:
    plan: Plan
    pressed: set[str] = field(default_factory=set)
    acked: set[str] = field(default_factory=set)
    delivered: set[str] = field(default_factory=set)
    crashes: int = 0
    restarts: int = 0

    @property
    def lost(self) -> set[str]:
        return self.acked - self.delivered

    @property
    def ok(self) -> bool:
        return self.pressed == self.acked and not self.lost


class _Crasher:
    """The crash hook: kills the gateway at the plan's point and occurrence, once."""

    def __init__(self, point: str | None, on: int) -> None:
        self.point, self.on = point, on
        self.seen = 0
        self.fired = threading.Event()
        self.victim: Gateway | None = None

    def __call__(self, at: str) -> None:
        if at != self.point or self.fired.is_set():
            return
        self.seen += 1
        if self.seen == self.on:
            self.fired.set()
            if self.victim is not None:
                self.victim.kill()  # every thread of the "process" stops here
            raise SimulatedCrash(at)


def _quiet_crash_threads() -> None:
    """A simulated crash ends its thread; that is the point, not an error to print."""
    previous = threading.excepthook
    if getattr(previous, "quiet_crashes", False):
        return

    def hook(args: Any) -> None:
        if not isinstance(args.exc_value, SimulatedCrash):
            previous(args)

    hook.quiet_crashes = True  # type: ignore[attr-defined]
    threading.excepthook = hook


def _faults(plan: Plan) -> Any:
    left = {"n": plan.fault_count if plan.fault in ("404", "503", "drop") else 0}

    def decide(n: int, record: dict[str, Any]) -> int:
        if left["n"] > 0:
            left["n"] -= 1
            return {"404": 404, "503": 503, "drop": 0}[plan.fault]
        return 204

    return decide


def run(plan: Plan, broker_url: str, workdir: Path | None = None) -> Outcome:
    """One seeded run against a broker (any anonymous one; topics are per seed)."""
    out = Outcome(plan)
    prefix = f"chaos{plan.seed}"
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        registry = open_registry(Path(tmp) / "registry.db")
        key = X25519PrivateKey.generate()
        hook: WebhookReceiver | None = None
        consumers: list[PipeConsumer] = []
        gateways: list[Gateway] = []
        sims: list[SimDevice] = []
        try:
            host, port = broker_url.rsplit("//", 1)[1].split(":")
            for i in range(plan.devices):
                device = 0x00C4A000 + i
                secret = new_device_secret()
                registry.add_device(
                    device, "bracelet", "bracelet-c3", seal(secret, key.public_key(), device)
                )
                sims.append(SimDevice(device, secret, host, int(port), prefix=prefix))
            if plan.sink == "webhook":
                hook = WebhookReceiver(_faults(plan))
            crasher = _Crasher(plan.crash, plan.crash_on)

            def start(crash: Any) -> Gateway:
                if plan.sink == "webhook":
                    sink: Any = WebhookSink(hook.url)  # type: ignore[union-attr]
                else:
                    dies = (
                        plan.fault_count
                        if plan.fault == "consumer_dies" and not consumers
                        else None
                    )
                    consumers.append(PipeConsumer(die_after_lines=dies))
                    sink = JsonlSink(consumers[-1])
                gw = Gateway(
                    registry,
                    key,
                    broker_url,
                    prefix=prefix,
                    client_id=f"{prefix}-gw",
                    sink=sink,
                    clock_state=ClockState(True),
                    crash=crash,
                    forward_options=FORWARD_OPTIONS,
                )
                gw.start(connect_attempts=50)
                if not gw.connected.wait(10):
                    raise AssertionError("gateway did not subscribe")
                gateways.append(gw)
                return gw

            _quiet_crash_threads()
            gw = start(crasher)
            crasher.victim = gw
            frames: dict[str, tuple[SimDevice, int, bytes]] = {}
            for sim in sims:
                for _ in range(plan.alerts):
                    c, frame = sim.frame("ALERT")
                    name = f"alert:{sim.label}:1:{c}"
                    frames[name] = (sim, c, frame)
                    out.pressed.add(name)
                    sim.publish(frame)
            deadline = time.monotonic() + RUN_TIMEOUT_S
            next_resend = time.monotonic() + RESEND_S
            while time.monotonic() < deadline:
                for c in consumers:
                    c.consume()
                if crasher.fired.is_set() and not out.crashes:
                    gw.abort()
                    gw._aborted = True  # type: ignore[attr-defined]
                    out.crashes += 1
                    registry.engine.dispose()  # a dead process's connections are gone
                    gw = start(None)
                    out.restarts += 1
                elif gw.fatal is not None:  # the JSONL consumer died: the supervisor restarts
                    gw.stop()
                    gw = start(None)
                    out.restarts += 1
                out.acked = {
                    n
                    for n, (sim, c, _f) in frames.items()
                    if (sim.acks.get(c) or [{}])[0].get("disposition") == "received"
                }
                out.delivered = (
                    hook.accepted_keys() if hook else set().union(*(x.keys() for x in consumers))
                )
                if out.acked == out.pressed and out.acked <= out.delivered:
                    break
                if time.monotonic() >= next_resend:
                    next_resend = time.monotonic() + RESEND_S
                    for name, (sim, _c, frame) in frames.items():
                        if name not in out.acked:
                            sim.publish(frame)  # retry until acked, as the firmware does
                time.sleep(0.01)
        finally:
            for sim in sims:
                sim.close()
            for g in gateways:
                if getattr(g, "_aborted", False):
                    continue
                g.stop()
            if hook is not None:
                hook.close()
            registry.close()
    return out
