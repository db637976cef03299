"""The gateway behind the broker config `auxilio broker config` generates (per-device users, ACL)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from auxilio.broker.config import write_config
from auxilio.gateway.simulator import SimDevice
from auxilio.registry import open_registry
from auxilio.registry.enrol import enrol_device
from auxilio.testing.mosquitto import Mosquitto, free_port, mosquitto_binary

from .conftest import WAIT_S, wait_for

pytestmark = pytest.mark.integration


def test_gateway_with_generated_users_and_acl(
    tmp_path: Path, gw_key: Any, gw_key_file: Path
) -> None:
    if mosquitto_binary() is None:
        pytest.skip("mosquitto is not installed")
    reg_path = tmp_path / "reg.db"
    reg = open_registry(reg_path)
    prov = tmp_path / "device.json"
    enrol_device(reg, gw_key.public_key(), "button", "button-s3", actor="test", secret_out=prov)
    dev = json.loads(prov.read_text())
    port = free_port()
    files = write_config(
        tmp_path / "broker",
        reg,
        port=port,
        run_as="root" if os.geteuid() == 0 else None,
        log_file=tmp_path / "mosquitto.log",
    )
    reg.close()
    broker = Mosquitto(port=port, workdir=tmp_path / "broker", config_path=files.conf).start()
    log = tmp_path / "gateway.log"
    p = subprocess.Popen(
        [
            sys.executable, "-m", "auxilio.cli", "gateway",
            "--broker", f"mqtt://127.0.0.1:{port}",
            "--broker-credentials", str(files.gateway),
            "--registry", str(reg_path), "--keys", str(gw_key_file),
        ],
        stdout=subprocess.DEVNULL,
        stderr=open(log, "wb"),
    )  # fmt: skip
    sim = None
    try:
        from auxilio.protocol import codec

        sim = SimDevice(
            codec.device_int(dev["device"]),
            bytes.fromhex(dev["secret"]),
            "127.0.0.1",
            port,
            password=dev["password"],
        )
        # Re-send until the freshly started gateway has subscribed.
        ack = wait_for(
            lambda: sim.wait_ack(sim.send("ALERT"), timeout=0.5), what="ack through the ACL"
        )
        assert ack["disposition"] == "received"
        counter = ack["counter"]
        # An operator console, with only the operator login, gets the attending ACK sent.
        reg = open_registry(reg_path)
        with reg.engine.connect() as conn:
            t = reg.tables.alerts
            alert_id = conn.execute(
                t.select().with_only_columns(t.c.id).where(t.c.counter == counter)
            ).scalar_one()
        reg.close()
        r = subprocess.run(
            [
                sys.executable, "-m", "auxilio.cli", "attend", str(alert_id),
                "--operator", "op-7",
                "--broker", f"mqtt://127.0.0.1:{port}",
                "--broker-credentials", str(files.operator),
            ],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert r.returncode == 0, r.stderr
        att = wait_for(lambda: sim.wait_ack(counter, timeout=0.5, n=2), what="attending ack")
        assert att["disposition"] == "attending"
    finally:
        if sim is not None:
            sim.close()
        p.send_signal(signal.SIGTERM)
        p.wait(WAIT_S)
        broker.close()
    text = log.read_text()
    assert json.loads(files.gateway.read_text())["password"] not in text
    assert dev["secret"] not in text and dev["password"] not in text
