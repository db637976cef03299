"""Issue 8 §10: operations can see what the gateway sees, without a flood.

Repros: at the default log level the gateway printed nothing, malformed frames and unknown
devices logged nothing, while "replay rejected" flooded ~700 lines in 6 s; with wrong
credentials it retried every 0.5 s forever (48 lines in 12 s).
"""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import urllib.request
from typing import Any

import pytest
from auxilio.gateway import obs
from auxilio.testing.mosquitto import free_port

from .conftest import WAIT_S, wait_for
from .test_garbage import _read_lines

pytestmark = pytest.mark.integration


def test_metrics_on_loopback_in_prometheus_text(gateway_factory: Any, fleet: Any) -> None:
    port = free_port()
    gw = gateway_factory(metrics=f"127.0.0.1:{port}")
    sim = fleet.sim()
    assert sim.wait_ack(sim.send("ALERT"))
    sim.publish(b"\x01" * 40)  # garbage: counted by reason
    wait_for(lambda: gw.stats["drop_length_mismatch"] + gw.stats["drop_unknown_type"] >= 1)
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    assert 'auxilio_gateway_acks_total{disposition="received"} 1.0' in text
    assert "auxilio_gateway_dropped_total{reason=" in text
    assert "auxilio_gateway_broker_connected 1.0" in text
    assert "auxilio_gateway_forward_backlog 0.0" in text


def test_replay_flood_is_rate_limited_and_summarised(
    gateway: Any, fleet: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="auxilio.gateway")
    sim = fleet.sim()
    frames = [sim.frame("ALERT") for _ in range(70)]
    for c, f in frames:
        sim.publish(f)
        assert sim.wait_ack(c)
    for _ in range(25):
        sim.publish(b"")  # garbage: rate-limited per reason too
    for i in range(30):  # old counters with other content: each answered, one line
        _c, f = sim.frame("ALERT", counter=1 + i % 3, battery=1)
        sim.publish(f)
    wait_for(lambda: gateway.stats["counter_collision"] >= 30, what="collisions answered")
    lines = [r for r in caplog.records if "counter reused" in r.getMessage()]
    assert len(lines) == 1  # one per device and reason per minute
    garbage = [r for r in caplog.records if "frame dropped (truncated)" in r.getMessage()]
    assert len(garbage) == 1
    gateway.summary.every_s = 0
    gateway.summary.tick()
    summary = [r.getMessage() for r in caplog.records if "gateway: last" in r.getMessage()]
    assert summary and "counter_collision=30" in summary[-1] and "stored=70" in summary[-1]


def test_rate_limited_log_counts_what_it_held_back(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    rl = obs.RateLimitedLog(logging.getLogger("t"), window_s=0.0)
    rl.warning("k", "x %d", 1)
    rl.window_s = 3600
    for i in range(5):
        rl.warning("k", "x %d", i)
    rl.window_s = 0.0
    rl.warning("k", "x %d", 9)
    msgs = [r.getMessage() for r in caplog.records]
    assert msgs == ["x 1", "x 9 (5 more like this in the last 0s)"]


def test_gateway_start_up_line_and_auth_refusal_is_fatal(secure_chain: Any) -> None:
    chain = secure_chain
    bad = chain.dir / "wrong.json"
    creds = json.loads(chain.files.gateway.read_text())
    bad.write_text(json.dumps({**creds, "password": "not-it"}))
    r = subprocess.run(
        chain.gateway_cmd(credentials=bad), capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 5, r.stderr
    errors = [x for x in r.stderr.splitlines() if x.startswith("error:")]
    assert len(errors) == 1 and "credentials" in errors[0]
    assert len(r.stderr.splitlines()) <= 3 and "Traceback" not in r.stderr
    # The right credentials: one start-up line naming broker, registry and sink.
    p = subprocess.Popen(
        chain.gateway_cmd("--forward", "jsonl"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        lines = []
        wait_for(
            lambda: lines.extend(_read_lines(p.stderr, 0.5)) or any("running" in x for x in lines),
            what="start-up line",
        )
    finally:
        p.send_signal(signal.SIGTERM)
        p.wait(WAIT_S)
    start = [x for x in lines if "running" in x][0]
    assert f"127.0.0.1:{chain.port}" in start and "registry" in start and "jsonl" in start
    assert creds["password"] not in "\n".join(lines)
