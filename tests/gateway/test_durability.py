"""Durability: kill -9 around the commit and the ACK (redelivery, exactly once, prompt re-ACK),
registry and broker outages, poison frames, the JSONL forwarder on stdout."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from auxilio.gateway import Gateway
from sqlalchemy import select

from .conftest import WAIT_S, wait_for

pytestmark = pytest.mark.integration


def _gateway_proc(
    broker: Any, registry_url: str, key_file: Path, env_extra: dict[str, str], log: Path
) -> subprocess.Popen[bytes]:
    env = {**os.environ, **env_extra}
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "auxilio.cli",
            "-vv",
            "gateway",
            "--broker",
            broker.url,
            "--registry",
            registry_url,
            "--keys",
            str(key_file),
        ],
        stdout=subprocess.DEVNULL,
        stderr=open(log, "ab"),
        env=env,
    )


def _stored(registry: Any, device: int) -> list[tuple[int, str]]:
    a = registry.tables.alerts
    with registry.engine.connect() as conn:
        return [
            tuple(r)
            for r in conn.execute(
                select(a.c.counter, a.c.disposition).where(a.c.device_id == device)
            )
        ]


@pytest.mark.slow
@pytest.mark.parametrize("point", ["before_commit", "after_commit", "during_ack"])
def test_kill_9_between_receive_and_ack_redelivered_stored_once(
    point: str,
    fleet: Any,
    registry: Any,
    registry_url: str,
    gw_key_file: Path,
    mqtt_broker: Any,
    tmp_path: Path,
) -> None:
    sim = fleet.sim()
    log = tmp_path / "gateway.log"
    # First run only subscribes (creates the persistent session), then is stopped cleanly.
    p = _gateway_proc(mqtt_broker, registry_url, gw_key_file, {}, log)
    try:
        # Retry like a device until the gateway has subscribed and answers.
        wait_for(
            lambda: sim.wait_ack(sim.send("TAMPER", open=False), timeout=0.5), what="first ack"
        )
    finally:
        p.send_signal(signal.SIGTERM)
        p.wait(WAIT_S)
    # Second run dies hard (SIGKILL from its own debug hook) at the chosen point.
    p = _gateway_proc(
        mqtt_broker, registry_url, gw_key_file, {"AUXILIO_GATEWAY_CRASH_AT": point}, log
    )
    c = sim.send("ALERT")
    assert p.wait(WAIT_S) == -signal.SIGKILL
    if point == "during_ack":
        sim.acks.pop(c, None)  # the ACK may have left before the kill: forget it
    else:
        assert sim.wait_ack(c, timeout=0.5) is None  # nothing acked by the dead gateway
    before = [r for r in _stored(registry, sim.device) if r[0] == c]
    assert before == ([] if point == "before_commit" else [(c, "received")])
    # Third run: the broker redelivers the un-PUBACKed frame; the device never re-sent it.
    p = _gateway_proc(mqtt_broker, registry_url, gw_key_file, {}, log)
    try:
        ack = sim.wait_ack(c, timeout=WAIT_S)
        assert ack is not None and ack["disposition"] == "received"
    finally:
        p.send_signal(signal.SIGTERM)
        p.wait(WAIT_S)
    assert [r for r in _stored(registry, sim.device) if r[0] == c] == [(c, "received")]
    secret_hex = fleet.secrets[sim.device].hex()
    text = log.read_text()
    assert secret_hex not in text and secret_hex.upper() not in text


@pytest.mark.slow
@pytest.mark.parametrize("registry_url", ["sqlite"], indirect=True)
def test_broker_restart_gateway_reconnects_and_resumes(
    gateway: Any, fleet: Any, registry: Any, mqtt_broker: Any
) -> None:
    sim = fleet.sim()
    assert sim.wait_ack(sim.send("ALERT"))
    mqtt_broker.kill()  # abrupt, like a crashed broker host
    wait_for(lambda: not gateway.connected.is_set(), what="gateway notices")
    mqtt_broker.start()
    wait_for(lambda: gateway.connected.is_set(), timeout=60, what="gateway reconnects")
    # The device retries like the firmware does until the ACK arrives.
    got = wait_for(
        lambda: sim.wait_ack(sim.send("ALERT"), timeout=1), timeout=60, what="ack after restart"
    )
    assert got["disposition"] == "received"


@pytest.mark.parametrize("registry_url", ["sqlite"], indirect=True)
def test_cli_forward_jsonl_on_stdout(
    fleet: Any, registry: Any, registry_url: str, gw_key_file: Path, mqtt_broker: Any
) -> None:
    sim = fleet.sim()
    p = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "auxilio.cli",
            "gateway",
            "--broker",
            mqtt_broker.url,
            "--registry",
            registry_url,
            "--keys",
            str(gw_key_file),
            "--forward",
            "jsonl",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        c = wait_for(
            lambda: (lambda k: k if sim.wait_ack(k, timeout=0.5) else None)(sim.send("ALERT")),
            what="ack",
        )
        t = sim.send("TAMPER")
        assert sim.wait_ack(t)
    finally:
        p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=WAIT_S)
    assert p.returncode == 0, err
    recs = [json.loads(line) for line in out.splitlines()]
    alerts = [r for r in recs if r["kind"] == "alert"]
    assert [r["counter"] for r in alerts][-1] == c
    assert (
        alerts[-1]["fields"]["lat_e7"] == 194326080
        and alerts[-1]["key"] == f"alert:{sim.label}:1:{c}"
    )
    assert any(r["kind"] == "event" and r["type"] == "TAMPER" and r["counter"] == t for r in recs)
    assert "194326080" not in err  # coordinates go to the forward stream, never to the log


@pytest.mark.parametrize("registry_url", ["sqlite"], indirect=True)
def test_failed_batch_is_redelivered_not_lost(
    gateway: Any, fleet: Any, registry: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    sim = fleet.sim()
    real = registry.get_device
    calls = {"n": 0}

    def flaky(device_id: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("registry hiccup")
        return real(device_id)

    monkeypatch.setattr(registry, "get_device", flaky)
    c = sim.send("ALERT")  # sent once: the broker's redelivery must carry it
    ack = sim.wait_ack(c, timeout=30)
    assert ack is not None and ack["disposition"] == "received"
    assert gateway.stats["internal_error"] == 1
    assert [r[0] for r in _stored(registry, sim.device)] == [c]


@pytest.mark.parametrize("registry_url", ["sqlite"], indirect=True)
def test_poison_frame_dropped_after_retries_others_flow(
    gateway: Any, fleet: Any, registry: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    sim = fleet.sim()
    _c, poison = sim.frame("ALERT")
    real = gateway.verifier.verify

    def verify(topic_dev: Any, frame: bytes, *args: Any, **kwargs: Any) -> Any:
        if frame == poison:
            raise ValueError("bug triggered by this frame")
        return real(topic_dev, frame, *args, **kwargs)

    monkeypatch.setattr(gateway.verifier, "verify", verify)
    sim.publish(poison)
    wait_for(lambda: gateway.stats["drop_poison"] == 1, timeout=60, what="poison dropped")
    assert gateway.stats["internal_error"] == 3
    c = sim.send("ALERT")
    assert sim.wait_ack(c)["disposition"] == "received"


@pytest.mark.slow
@pytest.mark.postgres
def test_registry_outage_nothing_acked_until_durable(gw_key: Any, mqtt_broker: Any) -> None:
    """PostgreSQL stops under a running gateway: no ACK while it is down, then stored once and acked."""
    from auxilio.registry import open_registry
    from auxilio.testing.postgres import PostgresCluster, postgres_bindir

    from .conftest import Fleet

    if postgres_bindir() is None:
        pytest.skip("PostgreSQL is not installed")
    cluster = PostgresCluster().start()
    registry = None
    fleet = None
    gw = None

    def pg_ctl(*args: str) -> None:
        cluster._run(str(cluster.bindir / "pg_ctl"), "-D", str(cluster.data), *args)

    try:
        registry = open_registry(cluster.create_database())
        fleet = Fleet(registry, gw_key, mqtt_broker)
        sim = fleet.sim()
        gw = Gateway(registry, gw_key, mqtt_broker.url)
        gw.start(connect_attempts=50)
        assert gw.connected.wait(WAIT_S)
        assert sim.wait_ack(sim.send("ALERT"))
        pg_ctl("-m", "fast", "-w", "stop")
        c = sim.send("ALERT")
        assert sim.wait_ack(c, timeout=3) is None  # not durable, so not acked
        opts = f"-p {cluster.port} -k {cluster.dir} -c listen_addresses=127.0.0.1"
        pg_ctl("-o", opts, "-l", str(cluster.dir / "log"), "-w", "start")
        ack = sim.wait_ack(c, timeout=60)  # the device did not resend
        assert ack is not None and ack["disposition"] == "received"
        assert [r for r in _stored(registry, sim.device) if r[0] == c] == [(c, "received")]
    finally:
        if gw is not None:
            gw.stop()
        if fleet is not None:
            fleet.close()
        if registry is not None:
            registry.close()
        cluster.stop()
