"""Virtual boards with an emulated modem: the VirtualDevice API, `auxilio emulate --lte`, `vboard lte`."""

from __future__ import annotations

import json
import os
import time

import pytest
from auxilio.emulator.admin import AdminClient
from auxilio.protocol import codec
from auxilio.protocol import sms as smsbody
from auxilio.testing.peer import C4Peer
from auxilio.testing.wait import wait_for

from tests.emulator.test_cli import Emulator, cli_env, run_cli  # noqa: F401 (fixture)

pytestmark = [pytest.mark.emulator, pytest.mark.integration]


def test_virtual_bracelet_alert_over_lte_then_sms_when_data_fails(virtual_board, mqtt_broker):
    vd = virtual_board(firmware=True, broker_url=mqtt_broker.url, modem=True, lte_timing="fast")
    secret = bytes.fromhex(vd.config["secret"])
    peer = C4Peer(mqtt_broker, {vd.device: secret})
    try:
        assert vd.modem is not None
        wait_for(lambda: vd.modem.status()["sockets"], 60, "the MQTT session over LTE")
        mark = vd.mark()
        vd.hold()
        alert = peer.wait_frame(type="ALERT", device=vd.device, timeout=60)
        assert alert["bearer"] == "lte"
        vd.wait_event(ev="haptic", pattern="double", since=mark, timeout=30)
        assert vd.modem.commands["CASEND"] > 0
        # Data down while SMS still works: the next alert also arrives by SMS.
        vd.lte("data-down")
        peer.mode = "none"
        time.sleep(0.3)  # a human pause: a press right after a release is debounced into it
        mark = vd.mark()
        vd.hold()
        sms = vd.smsc.wait(timeout=60)[0]  # 20 s budget (the default), then the SMS
        frame = codec.decode(smsbody.sms_decode(sms.text), secret)
        assert frame["type"] == "ALERT" and frame["counter"] > alert["counter"]
        vd.wait_event(ev="haptic", pattern="sms", since=mark, timeout=10)
    finally:
        peer.close()


def test_vboard_lte_reaches_the_emulated_modem(tmp_path, cli_env, mqtt_broker):  # noqa: F811
    emu = Emulator(
        [
            "--image",
            str(tmp_path / "b.img"),
            "--format",
            "--firmware",
            "--broker",
            mqtt_broker.url,
            "--lte",
            "fast",
            "--name",
            "lte1",
            "--sms-inbox",
            str(tmp_path / "inbox"),
        ],
        cli_env,
    )
    try:
        assert emu.info["modem"] == "SIM7080G (fast)"
        old = os.environ.get("XDG_RUNTIME_DIR")
        os.environ["XDG_RUNTIME_DIR"] = cli_env["XDG_RUNTIME_DIR"]
        try:
            client = AdminClient("lte1")
            wait_for(lambda: client.call("status")["modem"]["stat"] == 1, 60, "the emulated attach")
            out = run_cli("vboard", "--name", "lte1", "lte", "denied", env=cli_env)
            assert out.returncode == 0, out.stderr
            st = client.call("status")["modem"]
            assert st["scenario"] == "denied" and st["stat"] == 3
            bad = run_cli("vboard", "--name", "lte1", "lte", "teleport", env=cli_env)
            assert bad.returncode != 0 and bad.stderr.startswith("error: unknown lte state")
            run_cli("vboard", "--name", "lte1", "gnss", "19.5", "-99.1", env=cli_env)
            status = json.loads(run_cli("vboard", "--name", "lte1", "status", env=cli_env).stdout)
            assert status["modem"]["model"] == "SIM7080G"
        finally:
            if old is None:
                os.environ.pop("XDG_RUNTIME_DIR", None)
            else:
                os.environ["XDG_RUNTIME_DIR"] = old
    finally:
        rc, err = emu.stop()
        assert rc == 0, err
