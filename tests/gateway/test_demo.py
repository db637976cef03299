"""The end-to-end demo: both devices' alerts verified, stored, acked and attended (real firmware when present)."""

from __future__ import annotations

import pytest
from auxilio.demo import _firmware_available, run_demo

pytestmark = [pytest.mark.integration, pytest.mark.emulator, pytest.mark.slow]


def test_run_demo_once_every_alert_acked_and_attended() -> None:
    summary = run_demo(once=True)
    assert summary["ok"] is True, summary
    assert summary["devices"] == (
        "firmware/micropython" if _firmware_available() else "cpython-simulator"
    )
    assert [a["role"] for a in summary["alerts"]] == ["bracelet", "button"]
    for a in summary["alerts"]:
        assert a["verified"] and a["stored"] and a["acked"] and a["attended"], a
        assert a["press_to_ack_ms"] > 0
    assert summary["gateway"]["stored"] >= 2


def test_run_demo_on_embedded_broker_when_mosquitto_is_missing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import auxilio.testing.mosquitto

    monkeypatch.setattr(auxilio.testing.mosquitto, "mosquitto_binary", lambda: None)
    summary = run_demo(once=True)
    assert summary["broker"] == "amqtt"
    assert summary["ok"] is True, summary
