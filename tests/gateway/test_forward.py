"""Issue 8 §7: forwarding is transactional; an acked alert always reaches dispatch.

Repros (7 lost alerts in 2,560 seeded faults): the gateway killed after the commit with
`--forward jsonl` never printed the record; a dead JSONL consumer made it log "stdout
unavailable", drop records and keep acking; a webhook answering 404 for 10 s got three
alerts parked in `queue/rejected/` for good, with no C4 event.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from auxilio.gateway.forward import WebhookSink
from auxilio.testing.sinks import WebhookReceiver
from sqlalchemy import select

from .conftest import WAIT_S, wait_for

pytestmark = pytest.mark.integration


def _outbox(registry: Any) -> list[dict[str, Any]]:
    f = registry.tables.forward_outbox
    with registry.engine.connect() as conn:
        return [dict(r) for r in conn.execute(select(f).order_by(f.c.id)).mappings()]


def _events(registry: Any, etype: str) -> list[dict[str, Any]]:
    e = registry.tables.events
    with registry.engine.connect() as conn:
        return [dict(r) for r in conn.execute(select(e).where(e.c.type == etype)).mappings()]


def _send_acked(dev: Any) -> int:
    """Send an ALERT the way a device does: again until the C4 acks it."""
    return wait_for(
        lambda: (lambda c: c if dev.wait_ack(c, timeout=1.0) else None)(dev.send("ALERT")),
        timeout=30,
        what="an acked alert",
    )


def test_killed_after_commit_the_record_is_printed_after_restart(secure_chain: Any) -> None:
    chain = secure_chain
    dev = chain.device(0)
    env = {**os.environ, "AUXILIO_GATEWAY_CRASH_AT": "after_commit"}
    p = subprocess.Popen(
        chain.gateway_cmd("--forward", "jsonl"),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    c, frame = dev.frame("ALERT")
    # Until the gateway has subscribed the frame may not reach it: re-send, as a device does.
    wait_for(
        lambda: dev.publish(frame) or (p.poll() is not None),
        timeout=WAIT_S,
        what="the gateway to die at the commit",
        poll=0.3,
    )
    assert p.wait(WAIT_S) == -signal.SIGKILL
    assert p.stdout.read() == b""  # nothing was printed by the dead gateway
    rows = _outbox(chain.registry)
    assert [r["key"] for r in rows] == [f"alert:{dev.label}:1:{c}"]  # committed with the alert
    assert rows[0]["forwarded_at"] is None
    p = subprocess.Popen(
        chain.gateway_cmd("--forward", "jsonl"), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    try:
        line = p.stdout.readline()  # resent from the outbox, no device action needed
        rec = json.loads(line)
        assert rec["key"] == f"alert:{dev.label}:1:{c}" and rec["counter"] == c
        # A pipe's records are kept, marked, for the resend window (JSONL_RESEND_S).
        wait_for(lambda: _outbox(chain.registry)[0]["forwarded_at"] is not None, what="marked")
    finally:
        p.send_signal(signal.SIGTERM)
        p.wait(WAIT_S)
    a = chain.registry.tables.alerts
    with chain.registry.engine.connect() as conn:
        assert conn.execute(select(a.c.forwarded_at).where(a.c.counter == c)).scalar() is not None


def test_dead_jsonl_consumer_stops_the_gateway_and_nothing_is_lost(secure_chain: Any) -> None:
    chain = secure_chain
    dev = chain.device(0)
    r_fd, w_fd = os.pipe()
    p = subprocess.Popen(
        chain.gateway_cmd("--forward", "jsonl"), stdout=w_fd, stderr=subprocess.PIPE, text=True
    )
    os.close(w_fd)
    consumer = os.fdopen(r_fd, "rb")
    first = _send_acked(dev)
    assert json.loads(consumer.readline())["counter"] == first
    consumer.close()  # the consumer dies
    # The gateway notices at once (the pipe reports the closed reader), without waiting for
    # a write to fail, and ends with its own exit code: one line, no traceback.
    assert p.wait(WAIT_S) == 6
    err = p.stderr.read()
    assert "went away" in err and "Traceback" not in err
    # Alerts pressed meanwhile wait in the gateway's persistent session; the supervisor
    # restarts it with a new consumer, and everything unconfirmed reaches it.
    later = [dev.send("ALERT") for _ in range(3)]
    p = subprocess.Popen(
        chain.gateway_cmd("--forward", "jsonl"), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    keys: set[str] = set()
    want = {f"alert:{dev.label}:1:{c}" for c in [first, *later]}
    try:
        assert p.stdout is not None
        while not want <= keys:
            line = p.stdout.readline()
            assert line, "gateway exited"
            keys.add(json.loads(line)["key"])
        for c in later:
            assert dev.wait_ack(c, timeout=10)["disposition"] == "received"
    finally:
        p.send_signal(signal.SIGTERM)
        p.wait(WAIT_S)


def test_webhook_404_during_a_deploy_raises_forward_failing_and_loses_nothing(
    secure_chain: Any,
) -> None:
    chain = secure_chain
    down = threading.Event()
    down.set()
    hook = WebhookReceiver(lambda n, rec: 404 if down.is_set() else 204)
    try:
        gw = chain.start_gateway(
            sink=WebhookSink(hook.url), forward_options={"failing_after_s": 0.5}
        )
        dev = chain.device(0)
        sent = [_send_acked(dev) for _ in range(3)]  # acked while dispatch is down
        wait_for(lambda: _events(chain.registry, "FORWARD_FAILING"), what="FORWARD_FAILING")
        ev = _events(chain.registry, "FORWARD_FAILING")[0]
        assert ev["detail"]["backlog"] >= 3
        status = subprocess.run(
            [
                sys.executable,
                "-m",
                "auxilio.cli",
                "gateway",
                "status",
                "--registry",
                str(chain.registry_path),
                "--json",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert status.returncode == 0, status.stderr
        st = json.loads(status.stdout)
        assert st["forward_backlog"] >= 3 and st["forward_failing"] is True
        assert not any(Path(chain.dir).rglob("rejected"))  # nothing parked anywhere
        down.clear()  # the deploy is over
        keys = {f"alert:{dev.label}:1:{c}" for c in sent}
        assert hook.wait_keys(keys, timeout=30)
        wait_for(lambda: _events(chain.registry, "FORWARD_RESTORED"), what="FORWARD_RESTORED")
        wait_for(lambda: gw.forwarder.backlog == 0, what="backlog drained")
        # Confirmed records are gone (they carried locations) once their marks commit.
        wait_for(lambda: _outbox(chain.registry) == [], what="confirmed records deleted")
    finally:
        chain.stop_gateways()
        hook.close()


def test_a_refused_record_is_retried_never_parked_and_blocks_no_other(secure_chain: Any) -> None:
    chain = secure_chain
    refused = {"key": None}

    def faults(n: int, rec: dict[str, Any]) -> int:
        if refused["key"] is None:
            refused["key"] = rec["key"]
        return 422 if rec["key"] == refused["key"] and n < 6 else 204

    hook = WebhookReceiver(faults)
    try:
        gw = chain.start_gateway(sink=WebhookSink(hook.url))
        dev = chain.device(0)
        sent = [_send_acked(dev) for _ in range(3)]
        keys = {f"alert:{dev.label}:1:{c}" for c in sent}
        assert hook.wait_keys(keys, timeout=30)  # the refused one too, once accepted
        assert hook.refused >= 1
        assert gw.stats["forward_failed"] >= 1
    finally:
        chain.stop_gateways()
        hook.close()
