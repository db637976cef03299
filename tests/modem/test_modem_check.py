"""`auxilio modem-check` against virtual boards with emulated modems (the real mpremote and driver)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from auxilio.modemcheck import run_checks

pytestmark = [pytest.mark.emulator, pytest.mark.integration]

AUXILIO = str(Path(sys.executable).parent / "auxilio")


def by_name(results) -> dict:  # noqa: ANN001
    return {r.check: r for r in results}


def test_every_check_passes_on_a_healthy_bracelet(virtual_board, mqtt_broker) -> None:
    vd = virtual_board(firmware=True, broker_url=mqtt_broker.url, modem=True, lte_timing="fast")
    got = by_name(run_checks(vd.board.port, sms_to="+525511112222", gnss_s=10))
    assert [got[c].status for c in ("modem", "sim", "registration", "signal", "data")] == ["ok"] * 5
    assert got["gnss"].status == "ok" and "accuracy" in got["gnss"].detail
    assert "19." not in got["gnss"].detail  # never a location in the report
    assert got["sms"].status == "ok"
    sms = vd.smsc.wait(timeout=10, to="+525511112222")[0]
    assert sms.text.startswith("AUXILIO TEST ") and vd.device in sms.text


def test_missing_sim_fails_with_a_hint_and_a_nonzero_exit(virtual_board, mqtt_broker) -> None:
    vd = virtual_board(
        firmware=True, broker_url=mqtt_broker.url, modem="sim7600", lte_timing="fast"
    )
    vd.lte("sim-missing")
    out = subprocess.run(
        [AUXILIO, "modem-check", "--port", vd.board.port, "--json", "--gnss-timeout", "5"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 1, out.stderr
    rows = {r["check"]: r for r in map(json.loads, out.stdout.splitlines())}
    assert rows["modem"]["status"] == "ok" and "SIM7600E" in rows["modem"]["detail"]
    assert rows["sim"]["status"] == "fail" and rows["sim"]["detail"] == "sim_missing"
    assert "insert a SIM" in rows["sim"]["hint"]
    assert "registration" not in rows  # nothing past a missing SIM


def test_bad_arguments_are_one_line_errors(tmp_path) -> None:  # noqa: ANN001
    out = subprocess.run(
        [AUXILIO, "modem-check", "--port", str(tmp_path / "nope"), "--sms-to", "5512"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode != 0 and out.stderr.startswith("error: --sms-to must be an E.164")
    out = subprocess.run(
        [AUXILIO, "modem-check", "--port", str(tmp_path / "nope")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode != 0 and out.stderr.startswith("error: ")
    assert "Traceback" not in out.stderr
