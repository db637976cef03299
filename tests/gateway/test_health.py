"""A device's health between alerts: the gateway keeps its latest HEARTBEAT (registry v8), and
`devices show`, the console's device list and `auxilio report` read it (issue 12)."""

from __future__ import annotations

from typing import Any

import pytest
from auxilio.console import report, view
from auxilio.protocol import codec

from .conftest import wait_for

pytestmark = pytest.mark.integration


def _health(registry: Any, device: int) -> dict[str, Any] | None:
    rec = registry.get_device(device)
    return None if rec is None else rec.health


def test_latest_heartbeat_is_the_devices_health_everywhere(
    gateway: Any, fleet: Any, registry: Any
) -> None:
    sim = fleet.sim()
    label = codec.device_str(sim.device)
    low = sim.send("LOW_BATTERY", battery=12)
    assert sim.wait_ack(low)["disposition"] == "received"
    low_list = report.build(registry)["low_battery"]
    assert [(r["device"], r["battery"], r["frame"]) for r in low_list] == [
        (label, 12, "LOW_BATTERY")
    ]

    # Recharged: the next heartbeat is the newest reading, and it is fine.
    sim.send("HEARTBEAT", battery=81, bearer="lte", rssi=-97, modem_fault="none")
    h = wait_for(lambda: _health(registry, sim.device), what="the heartbeat's health")
    assert (h["battery"], h["bearer"], h["rssi"], h["fw"]) == (81, "lte", -97, "0.1.0")
    assert "lat" not in h and "lon" not in h  # health never carries a location
    assert report.build(registry)["low_battery"] == []

    # A struggling LTE bracelet: its modem fault reaches the console's device list.
    sim.send("HEARTBEAT", battery=9, bearer="sms", modem_fault="data_down")
    wait_for(lambda: (_health(registry, sim.device) or {}).get("battery") == 9, what="battery 9")
    (row,) = [d for d in view.snapshot(registry)["devices"] if d["device"] == label]
    assert (row["battery"], row["modem_fault"]) == (9, "data_down")
    assert [(r["battery"], r["frame"]) for r in report.build(registry)["low_battery"]] == [
        (9, "HEARTBEAT")
    ]
    # A heartbeat under a name already taken (a replay or a forgery's counter) changes nothing.
    _c, replay = sim.frame("HEARTBEAT", counter=low, battery=100)
    sim.publish(replay)
    refused = ("counter_collision", "rejected_replay", "duplicate_heartbeat")
    wait_for(lambda: sum(gateway.stats[k] for k in refused) >= 1, what="the heartbeat refused")
    assert _health(registry, sim.device)["battery"] == 9
