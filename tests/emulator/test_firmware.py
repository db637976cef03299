"""End to end: the real firmware from firmware/ on virtual boards, with a real broker."""

from __future__ import annotations

import time

import pytest
from auxilio.paths import firmware_dir
from auxilio.testing.peer import C4Peer
from auxilio.testing.wait import wait_for

pytestmark = [
    pytest.mark.emulator,
    pytest.mark.integration,
    pytest.mark.skipif(
        not (firmware_dir() / "app.py").exists(), reason="the firmware has not landed yet"
    ),
]

# Fleet figures: short heartbeat so "heartbeating" is observable in bounded time.
FLEET_SIZE = 200
FLEET_HEARTBEAT_S = 5
FLEET_BEATS = 2  # heartbeats each device must show after connecting


def secret_of(vd) -> bytes:
    return bytes.fromhex(vd.config["secret"])


def test_bracelet_alert_is_acked_with_two_pulses(virtual_board, mqtt_broker) -> None:
    vd = virtual_board(firmware=True, broker_url=mqtt_broker.url)
    peer = C4Peer(mqtt_broker, {vd.device: secret_of(vd)})
    try:
        mark = vd.mark()
        vd.hold()  # the bracelet's alert gesture: hold >= hold_ms
        alert = peer.wait_frame(type="ALERT", device=vd.device)
        assert alert["encrypted"]
        ev = vd.wait_event(ev="haptic", pattern="double", since=mark)
        pulses = [e["pattern"] for e in vd.events(mark) if e.get("ev") == "haptic"]
        assert pulses[:2] == ["pulse", "double"]  # queued, then acked
        assert ev["t"] >= alert["received_at"] - 1
        acked = vd.wait_event(ev="state", name="acked", counter=alert["counter"], since=mark)
        assert acked["dev"] == 0
    finally:
        peer.close()


def test_alert_during_network_outage_is_delivered_when_link_returns(
    virtual_board, mqtt_broker
) -> None:
    vd = virtual_board(firmware=True, broker_url=mqtt_broker.url)
    peer = C4Peer(mqtt_broker, {vd.device: secret_of(vd)})
    try:
        vd.wait_event(ev="state", name="connected")
        vd.network(False)
        wait_for(lambda: vd.proxy.connections() == 0, 30, "the proxy to drop the connection")
        mark = vd.mark()
        vd.hold()
        vd.wait_event(ev="haptic", pattern="pulse", since=mark)
        time.sleep(0.5)  # nothing may get through the cut link: the absence is under test
        assert not peer.of("ALERT")  # nothing got through
        vd.latency(50)  # a slow link when it comes back
        vd.network(True)
        alert = peer.wait_frame(type="ALERT", timeout=60)
        vd.wait_event(ev="haptic", pattern="double", since=mark, timeout=60)
        assert vd.proxy.stats["bytes_up"] > 0
        assert alert["device"] == vd.device
    finally:
        peer.close()


def test_unacked_alert_survives_a_power_cut_in_the_flash_image(virtual_board, mqtt_broker) -> None:
    vd = virtual_board(firmware=True, broker_url=mqtt_broker.url)
    peer = C4Peer(mqtt_broker, {vd.device: secret_of(vd)}, mode="none")
    try:
        vd.wait_event(ev="state", name="connected")
        mark = vd.mark()
        vd.hold()
        first = peer.wait_frame(type="ALERT")
        vd.wait_event(ev="state", name="sent", counter=first["counter"], since=mark)
        vd.power_cut()  # kill -9: RAM gone, the outbox is in the LittleFS image
        peer.mode = "ack"
        since = vd.mark()
        vd.power_restore()
        vd.control.wait_connected(60)
        vd.wait_event(ev="haptic", pattern="double", since=since, timeout=90)
        resent = peer.of("ALERT")
        assert {f["counter"] for f in resent} == {first["counter"]}  # same alert, same counter
        assert len(resent) >= 2  # sent before the cut, sent again after it
        assert resent[-1]["retransmission"]  # SPEC §12.3: flagged as a repeat
    finally:
        peer.close()


def test_boot_frame_reports_power_on_then_hard_reset(virtual_board, mqtt_broker) -> None:
    """The BOOT frame carries what machine.reset_cause() would say: EN pulse = hard_reset."""
    vd = virtual_board(firmware=True, broker_url=mqtt_broker.url)
    peer = C4Peer(mqtt_broker, {vd.device: secret_of(vd)})
    try:
        vd.wait_event(ev="state", name="connected")
        vd.hard_reset()  # the RTS (EN) pulse an auto-reset circuit gives
        boot = peer.wait_frame(type="BOOT", reset_cause="hard_reset", timeout=60)
        assert boot["device"] == vd.device
    finally:
        peer.close()


@pytest.mark.slow
def test_fleet_of_200_connected_and_heartbeating(
    virtual_fleet, mqtt_broker, record_property
) -> None:
    t0 = time.monotonic()
    fleet = virtual_fleet(FLEET_SIZE, mqtt_broker.url, heartbeat_s=FLEET_HEARTBEAT_S)
    started_s = time.monotonic() - t0
    peer = C4Peer(
        mqtt_broker,
        {d.device: bytes.fromhex(d.config["secret"]) for d in fleet.devices},
    )
    try:
        assert fleet.proxy is not None and fleet.proxy.connections() == FLEET_SIZE

        def beats() -> dict[str, int]:
            n: dict[str, int] = {}
            for f in peer.of("HEARTBEAT"):
                n[f["device"]] = n.get(f["device"], 0) + 1
            return n

        got = wait_for(
            lambda: (lambda b: b if len(b) == FLEET_SIZE and min(b.values()) >= FLEET_BEATS else 0)(
                beats()
            ),
            FLEET_HEARTBEAT_S * (FLEET_BEATS + 6),
            f"{FLEET_BEATS} heartbeats from each of {FLEET_SIZE} devices",
        )
        assert len(got) == FLEET_SIZE and min(got.values()) >= FLEET_BEATS
        assert peer.bad == []
        # Idle figures over one heartbeat period (reported, not asserted: shared machine).
        c0, w0 = fleet.cpu_seconds(), time.monotonic()
        time.sleep(FLEET_HEARTBEAT_S)  # the measuring window itself
        cpu = (fleet.cpu_seconds() - c0) / (time.monotonic() - w0)
        rss_per_device = fleet.rss_bytes() / FLEET_SIZE
        record_property("fleet_start_s", round(started_s, 2))
        record_property("rss_per_device_kb", round(rss_per_device / 1024, 1))
        record_property("idle_cpu_fraction", round(cpu, 3))
        print(
            f"\nfleet {FLEET_SIZE}: started in {started_s:.1f}s, RSS/device "
            f"{rss_per_device / 1024:.0f} KB, idle CPU {cpu * 100:.1f}% of one core "
            f"(heartbeat {FLEET_HEARTBEAT_S}s)"
        )
        assert all(p.poll() is None for p in fleet.procs)
    finally:
        peer.close()


def test_cli_hold_and_events_through_vboard(tmp_path, mqtt_broker) -> None:
    import json
    import os

    from tests.emulator.test_cli import Emulator
    from tests.emulator.test_cli import vboard as cli_vboard

    # No registry knows this identity (emulate says so in one warning line).
    env = dict(os.environ, XDG_RUNTIME_DIR=str(tmp_path), AUXILIO_REGISTRY=str(tmp_path / "r.db"))
    # A provisioning file as `auxilio devices add --secret-out` writes it.
    from auxilio.provision.config import new_config

    ident = new_config("bracelet", mqtt_broker.url)
    prov = {k: ident[k] for k in ("device", "role", "secret", "username", "password")}
    (tmp_path / "prov.json").write_text(json.dumps(prov))
    emu = Emulator(
        [
            "--image",
            str(tmp_path / "b.img"),
            "--format",
            "--firmware",
            "--config",
            str(tmp_path / "prov.json"),
            "--broker",
            mqtt_broker.url,
            "--name",
            "cli",
        ],
        env,
    )
    peer = C4Peer(mqtt_broker, {prov["device"]: bytes.fromhex(prov["secret"])})

    def vboard(*args: str) -> str:
        return cli_vboard("cli", env, *args)

    try:
        assert emu.info["device"] == prov["device"]
        wait_for(lambda: json.loads(vboard("status"))["control_connected"], 60, "the control link")
        vboard("hold")
        peer.wait_frame(type="ALERT", device=prov["device"])

        def double() -> bool:
            evs = [json.loads(x) for x in vboard("events", "--last", "100").splitlines()]
            return any(e.get("ev") == "haptic" and e.get("pattern") == "double" for e in evs)

        wait_for(double, 60, "the double pulse in `vboard events`")
        vboard("battery", "15")
        vboard("network", "down")
        assert json.loads(vboard("status"))["network"]["up"] is False
    finally:
        peer.close()
        rc, err = emu.stop()
    assert rc == 0, err


def test_fleet_populates_the_registry(virtual_fleet, mqtt_broker, tmp_path) -> None:
    from auxilio.keys import init_keys, load_private_key
    from auxilio.protocol import codec
    from auxilio.registry import open_registry

    priv, _pub = init_keys(tmp_path / "keys")
    fleet = virtual_fleet(3, mqtt_broker.url)
    db = tmp_path / "registry.db"
    assert fleet.register(str(db), tmp_path / "keys") == 3
    assert fleet.register(str(db), tmp_path / "keys") == 0  # idempotent
    key = load_private_key(priv)
    with open_registry(str(db)) as reg:
        for d in fleet.devices:
            rec = reg.get_device(codec.device_int(d.device))
            assert rec is not None and rec.board == "bracelet-c3"
            assert reg.device_secret(rec.id, key).hex() == d.config["secret"]
