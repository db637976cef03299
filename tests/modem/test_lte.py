"""The firmware over an emulated modem, end to end: real micropython, real mosquitto, C4 peer.

Every profile's data mode (SIM7080G CA*, SIM7600 CIP*, BG95 QI*) carries the
same MQTT session; the emulator answers from the vendors' command grammar, so
a profile template the module would refuse shows up as an ERROR count.
"""

from __future__ import annotations

import time

import pytest
from auxilio.emulator import radio
from auxilio.protocol import codec
from auxilio.protocol import sms as smsbody
from auxilio.testing.mosquitto import free_port
from auxilio.testing.wait import wait_for

from tests.firmware.fwkit import broker as mqtt_broker_with
from tests.firmware.test_mqtt_client import tls_files  # noqa: F401 (fixture)
from tests.modem.ltekit import C4_NUMBER, DEVICE_MSISDN, LteRig, fault_bits

pytestmark = pytest.mark.integration

PROFILES = ["sim7080g", "sim7600", "bg95"]
# The commands each profile's data mode must have used (the emulator's counts).
DATA_COMMANDS = {
    "sim7080g": ("CNACT", "CAOPEN", "CASEND", "CARECV"),
    "sim7600": ("NETOPEN", "CIPOPEN", "CIPSEND", "CIPRXGET"),
    "bg95": ("QIACT", "QIOPEN", "QISEND", "QIRD"),
}
GNSS_COMMANDS = {"sim7080g": "CGNSINF", "sim7600": "CGPSINFO", "bg95": "QGPSLOC"}
CLOSE_COMMANDS = {"sim7080g": "CACLOSE", "sim7600": "CIPCLOSE", "bg95": "QICLOSE"}


@pytest.mark.parametrize("profile", PROFILES)
def test_alert_over_emulated_lte_is_acked(lte_rig, profile: str) -> None:
    fix = radio.Fix(19.4270, -99.1677, 1.0)  # Ángel de la Independencia: a public place
    rig = lte_rig(profile, gnss=radio.GnssTrack.fixed(fix.lat, fix.lon, fix.hdop))
    rig.start(tunables={"gnss_every_s": 1, "gnss_timeout_s": 3})
    wait_for(lambda: rig.status()["modem"]["fix"], 20, "a GNSS fix")
    base = rig.status()["modem"]["at"]  # the probes before PWRKEY timed out, by design
    alert = rig.alert()
    assert alert["bearer"] == "lte"
    assert abs(alert["lat_e7"] - round(fix.lat * 1e7)) <= 2  # 2e-7 degrees: 2 cm
    assert abs(alert["lon_e7"] - round(fix.lon * 1e7)) <= 2
    # HDOP 1.0 x 5 m; +CGPSINFO (SIM7600) has no HDOP: accuracy unknown.
    assert alert["accuracy_m"] == (None if profile == "sim7600" else 5)
    rig.wait_state("acked", alert["counter"])
    st = rig.status()
    assert st["bearer"] == "lte" and st["modem"]["state"] == "ready"
    at = st["modem"]["at"]
    assert at["garbage"] == 0 and at["stray"] == 0 and at["unexpected"] == 0, at
    assert at["timeouts"] == base["timeouts"], (base, at)
    # The profile's command set, against the emulated module's grammar.
    m = rig.modem
    # Only the first close of a socket 0 the modem may have kept open from before this
    # boot is allowed to be refused (nothing was open): every other template was accepted.
    close = CLOSE_COMMANDS[profile]
    assert set(m.errors) <= {close} and m.errors[close] <= 1, (dict(m.errors), rig.uart())
    for name in DATA_COMMANDS[profile] + (GNSS_COMMANDS[profile],):
        assert m.commands[name] > 0, (name, dict(m.commands))
    assert m.power_ons == 1  # probed before pulsing: PWRKEY once, never toggled back off


@pytest.mark.parametrize("profile", PROFILES)
def test_sms_fallback_when_data_is_down(lte_rig, profile: str) -> None:
    """Data down, SMS working: the alert also leaves by SMS, same frame and counter."""
    rig = lte_rig(profile, scenario="data-down")
    rig.start(wait_boot=False)
    wait_for(lambda: rig.status()["modem"]["fault"] == "data_down", 30, "data_down")
    assert rig.status()["modem"]["registered"] is True
    t_press = time.monotonic()
    rig.ctl.hold(2300)
    sms = rig.smsc.wait(timeout=30, sender=DEVICE_MSISDN)[0]
    assert sms.to == C4_NUMBER
    frame = smsbody.sms_decode(sms.text)
    got = codec.decode(frame, rig.secret)  # verifies the tag with the device key
    assert got["type"] == "ALERT" and got["device"] == rig.dev
    assert rig.ctl.matching(ev="state", name="queued", counter=got["counter"])
    assert time.monotonic() - t_press >= 3  # the 3 s budget ran out first
    # The distinct haptic pattern, and the state event with the alert's counter.
    rig.ctl.wait_event(ev="haptic", pattern="sms", timeout=10)
    sms_state = rig.wait_state("sms")
    assert sms_state["counter"] == got["counter"]
    # The gammu-smsd style inbox file carries the same text.
    files = sorted(rig.inbox.glob("IN*.txt"))
    assert files and files[0].read_text() == sms.text
    assert DEVICE_MSISDN in files[0].name
    # Data returns: the same alert (same counter) reaches the broker and is acked.
    rig.modem.set_scenario("registered")
    alert = rig.peer.wait("ALERT", 1, timeout=60)[0]
    assert alert["counter"] == got["counter"]  # the C4 dedups the two on this
    assert alert["lat_e7"] == got["lat_e7"] and alert["battery"] == got["battery"]
    rig.wait_state("acked", alert["counter"], timeout=30)
    rig.ctl.wait_event(ev="haptic", pattern="double", timeout=10)
    assert len(rig.smsc.inbox()) == 1  # one SMS per alert, even while it keeps retrying


def test_missing_sim_is_reported_and_retried_then_power_cycled(lte_rig) -> None:
    """Street button, Wi-Fi first: the HEARTBEAT over Wi-Fi carries the modem fault."""
    rig = lte_rig("sim7600", board="button-s3")
    rig.modem.fault("sim-missing")
    rig.start(role="button", heartbeat_s=2, tunables={"modem_fail_cycle": 3})
    hb = rig.wait_heartbeat(lambda h: fault_bits(h) == 1, 30, "a heartbeat with sim_missing")
    assert hb["bearer"] == "wifi"

    # Retried with growing gaps, and power-cycled (RESET pin) after 3 failed bring-ups.
    def cpin() -> list[float]:
        return [t for t, d, b in rig.modem.trace if d == "in" and b.startswith(b"AT+CPIN?")]

    wait_for(lambda: rig.modem.resets >= 1 and len(cpin()) >= 6, 60, "a power cycle")
    t = cpin()
    gaps = [b - a for a, b in zip(t, t[1:], strict=False)]
    assert gaps[-1] > 2 * gaps[0], gaps  # capped exponential backoff (jittered)
    # The SIM comes back: the next heartbeats report no fault.
    rig.modem.fault("sim-inserted")
    wait_for(lambda: rig.status()["modem"]["state"] == "ready", 40, "the modem ready again")
    n = len(rig.heartbeats())
    rig.wait_heartbeat(lambda h: h in rig.heartbeats()[n + 1 :] and fault_bits(h) == 0, 30)


def test_denied_registration_is_reported(lte_rig) -> None:
    rig = lte_rig("sim7600", board="button-s3", scenario="denied")
    rig.start(role="button", heartbeat_s=2)
    rig.wait_heartbeat(lambda h: fault_bits(h) == 3, 30, "a heartbeat with denied")
    assert rig.status()["modem"]["fault"] == "denied"


def test_a_modem_that_does_not_answer_is_power_cycled_and_recovers(lte_rig) -> None:
    rig = lte_rig("sim7080g")
    rig.start(heartbeat_s=3)
    rig.modem.fault("mute")  # the module's firmware hangs: UART silent, PWRKEY ignored
    wait_for(lambda: rig.modem.resets >= 1, 60, "the RESET pin pulse")
    wait_for(lambda: rig.status()["modem"]["state"] == "ready", 60, "the modem back")
    alert = rig.alert(timeout=60)
    rig.wait_state("acked", alert["counter"])
    # Reported in the next heartbeat that could go out, once the link was back.
    rig.wait_heartbeat(lambda h: fault_bits(h) == 5, 30, "a heartbeat with not_responding")


def test_roaming_is_accepted_and_the_link_works(lte_rig) -> None:
    rig = lte_rig("bg95", scenario="roaming")
    rig.start()
    assert rig.status()["modem"]["roaming"] is True
    alert = rig.alert()
    rig.wait_state("acked", alert["counter"])


def test_garbage_and_a_modem_reboot_mid_session_do_not_lose_the_alert(lte_rig) -> None:
    rig = lte_rig("sim7080g")
    rig.start()
    rig.modem.inject(b"\r\n\x00\xff+CADA\r\nOK\r\n\x1b[2J garbage\r\n")
    rig.modem.fault("reboot")  # the module resets: socket, PDP and registration gone
    alert = rig.alert(timeout=60)
    rig.wait_state("acked", alert["counter"], timeout=60)
    at = rig.status()["modem"]["at"]
    # Counted somewhere: garbage if idle, unexpected/stray if a command was pending (an
    # injected "OK" mid-command is indistinguishable from the real one; the retry covers it).
    assert at["garbage"] + at["stray"] + at["unexpected"] >= 1, at
    assert rig.procs[0].alive()


def test_psm_between_heartbeats_and_an_alert_from_psm(lte_rig) -> None:
    rig = lte_rig("sim7080g")
    rig.start(heartbeat_s=4, tunables={"psm_active_s": 2})
    wait_for(lambda: rig.modem.psm_entries >= 2, 40, "two PSM periods")
    beats = rig.heartbeats()
    # Beats queued before the first attach say "none"; once attached, LTE even in PSM.
    assert len(beats) >= 2 and [h["bearer"] for h in beats[-2:]] == ["lte", "lte"]
    assert rig.modem.commands["CPSMS"] >= 1
    # Woken by PWRKEY for each beat, never power-cycled.
    assert rig.modem.power_ons == 1 and rig.modem.resets == 0
    wait_for(lambda: rig.modem.power == "psm", 20, "the modem in PSM")
    alert = rig.alert()
    rig.wait_state("acked", alert["counter"])
    s = rig.modem.status()["seconds"]
    assert s["psm"] > 0 and s["connected"] > 0


def test_button_fails_over_from_wifi_to_lte_and_back(lte_rig) -> None:
    rig = lte_rig("sim7600", board="button-s3")
    rig.start(role="button", heartbeat_s=2)
    rig.wait_heartbeat(lambda h: h["bearer"] == "wifi", 30, "a heartbeat over Wi-Fi")
    rig.ctl.send("link", up=False)  # the Wi-Fi association is lost
    n = len(rig.heartbeats())
    hb = rig.wait_heartbeat(lambda h: h in rig.heartbeats()[n:] and h["bearer"] == "lte", 40)
    assert rig.modem.commands["CIPOPEN"] >= 1
    alert = rig.alert()
    assert alert["bearer"] == "lte"
    rig.wait_state("acked", alert["counter"])
    rig.ctl.send("link", up=True)
    n = len(rig.heartbeats())
    rig.wait_heartbeat(lambda h: h in rig.heartbeats()[n:] and h["bearer"] == "wifi", 40)
    assert hb["counter"] > 0


def test_tls_over_the_modem_socket(tls_files, tmp_path) -> None:  # noqa: F811
    """The same MQTT session, TLS with the pinned CA, over the module's own TCP socket."""

    port = free_port()
    tls = mqtt_broker_with(
        f"listener {port} 127.0.0.1\n"
        f"certfile {tls_files['server.pem']}\nkeyfile {tls_files['server.key']}\n"
    )
    try:
        rig = LteRig(tls, tmp_path / "tls", "bg95")
        try:
            rig.root.mkdir(parents=True)
            (rig.root / "ca.pem").write_bytes(tls_files["ca.pem"].read_bytes())
            rig.start(broker=f"mqtts://127.0.0.1:{port}", tls_ca="ca.pem")
            alert = rig.alert()
            rig.wait_state("acked", alert["counter"])
            # The module carried TLS records, not MQTT in clear.
            sent = b"".join(b for _, d, b in rig.modem.trace if d == "in")
            assert b"MQTT" not in sent and rig.modem.commands["QISEND"] > 3
        finally:
            rig.close()
    finally:
        tls.close()


def test_no_signal_is_reported_as_no_service(lte_rig) -> None:
    rig = lte_rig("sim7600", board="button-s3", scenario="no-signal")
    rig.start(role="button", heartbeat_s=2)
    rig.wait_heartbeat(lambda h: fault_bits(h) == 4, 40, "a heartbeat with no_service")
    assert rig.status()["modem"]["rssi"] is None  # CSQ 99: unknown, not a number
    rig.modem.set_scenario("registered")
    wait_for(lambda: rig.status()["modem"]["state"] == "ready", 40, "attached once in coverage")


def test_edrx_keeps_the_session_up_instead_of_psm(lte_rig) -> None:
    rig = lte_rig("bg95")
    rig.start(heartbeat_s=3, lte={"low_power": "edrx"})
    n = len(rig.heartbeats())
    rig.wait_heartbeat(lambda h: h in rig.heartbeats()[n + 2 :], 30, "two more heartbeats")
    m = rig.modem
    assert m.commands["CEDRXS"] == 1 and m.commands["CPSMS"] == 0
    assert m.psm_entries == 0 and m.status()["sockets"] == [0]  # one session, never closed
    assert m.commands["QIOPEN"] == 1


def test_soft_reset_rebuilds_the_transport_without_leaking_the_old_one(lte_rig) -> None:
    rig = lte_rig("sim7080g")
    rig.start()
    rig.ctl.send("reset")  # the Device object is rebuilt in place (control op)
    rig.peer.wait("BOOT", 2, timeout=60)
    alert = rig.alert()
    rig.wait_state("acked", alert["counter"])
    assert rig.modem.power_ons == 1  # the modem stayed on: probed, not toggled
    at = rig.status()["modem"]["at"]
    assert at["garbage"] == 0 and at["stray"] == 0, at  # one reader on the UART, not two
