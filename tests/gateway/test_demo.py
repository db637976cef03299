"""The end-to-end demo: both devices' alerts verified, stored, acked and attended (real firmware when present)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from auxilio.demo import run_demo

pytestmark = [pytest.mark.integration, pytest.mark.emulator, pytest.mark.slow]


def test_demo_once_cli_every_alert_acked_and_attended() -> None:
    """`auxilio demo --once`: one JSON line, exit 0, real firmware on both devices."""
    r = subprocess.run(
        [sys.executable, "-m", "auxilio.cli", "demo", "--once"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 1, r.stdout
    summary = json.loads(lines[0])
    assert summary["ok"] is True, summary
    # The repository ships the firmware: the demo must run it, not the simulator.
    assert summary["devices"] == "firmware/micropython"
    assert [a["role"] for a in summary["alerts"]] == ["bracelet", "button"]
    for a in summary["alerts"]:
        assert a["verified"] and a["stored"] and a["acked"] and a["attended"], a
        assert a["press_to_ack_ms"] > 0
    assert summary["gateway"]["stored"] >= 2


def test_run_demo_on_embedded_broker_when_mosquitto_is_missing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import auxilio.broker.mosquitto

    monkeypatch.setattr(auxilio.broker.mosquitto, "mosquitto_binary", lambda: None)
    summary = run_demo(once=True)
    assert summary["broker"] == "amqtt"
    assert summary["ok"] is True, summary
