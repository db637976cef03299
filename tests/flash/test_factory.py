"""auxilio factory-test on virtual boards: every step answered through the board's control API."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from auxilio.boards import load_board
from auxilio.flash.factory import factory_test, write_report
from auxilio.flash.ports import Port
from auxilio.testing import VirtualTechnician

from tests.flash.conftest import QUIET, auxilio

pytestmark = [pytest.mark.emulator, QUIET]


def _results(checks) -> dict[str, tuple[str, object]]:
    return {c.check: (c.result, c.value) for c in checks}


def test_street_button_self_test_reads_outputs_button_sensors_and_reports_the_missing_modem(
    virtual_board, tmp_path: Path
) -> None:
    # The firmware (selftest.py included) straight into the image; it waits unconfigured.
    vd = virtual_board("button-s3", firmware=True)
    board = load_board("button-s3")
    url = vd.board.rfc2217_url
    vd.battery(80)
    tech = VirtualTechnician(vd)
    checks = factory_test(url, board, tech)
    got = _results(checks)
    assert got["haptic"][0] == "skipped"  # the street button has no motor
    assert got["led"][0] == "pass" and got["buzzer"][0] == "pass"
    assert got["button"][0] == "pass" and 250 <= got["button"][1] <= 1000
    lo, hi = 11000, 13000  # boards/button-s3.json battery range: 80 % of it
    assert got["battery"] == ("pass", lo + (hi - lo) * 80 // 100)
    assert got["mains"] == ("pass", True)
    # No modem answers on the host HAL: an honest failure with its reason, never a pass.
    modem = next(c for c in checks if c.check == "modem")
    assert modem.result == "fail" and "no modem UART" in modem.detail
    assert tech.prompts == ["led", "buzzer", "button"]
    csv_path, json_path = write_report(Port(device=vd.board.port, url=url), board, checks, tmp_path)
    doc = json.loads(json_path.read_text())
    assert [r["check"] for r in doc["rows"]] == [c.check for c in checks] and doc["passed"] is False
    assert csv_path.read_text().count("\n") == len(checks) + 1

    # Out of range is a failure: mains lost, a flat battery, nobody pressing the button.
    vd.mains(False)
    vd.battery(0)
    idle = VirtualTechnician(vd)
    idle.prompt = lambda check, text: None  # a technician who does nothing
    again = _results(
        factory_test(url, board, idle, skip=("led", "buzzer", "modem"), button_wait_s=2)
    )
    assert again["mains"] == ("fail", False)
    assert again["button"][0] == "fail"
    assert again["battery"] == ("pass", 11000)  # empty, but the divider reads a real voltage


def test_factory_test_cli_skips_what_the_board_lacks(virtual_board, tmp_path: Path) -> None:
    vd = virtual_board("devkit-esp32", firmware=True)
    # The technician answers "y" for the LED; the button step is skipped from the CLI.
    mark = vd.mark()
    r = auxilio(
        "factory-test",
        "--port",
        vd.board.rfc2217_url,
        "--skip",
        "button",
        "--reports",
        str(tmp_path),
        "--json",
        input="y\n",
    )
    assert r.returncode == 0, r.stdout + r.stderr
    rows = {c["check"]: c for c in map(json.loads, r.stdout.splitlines())}
    assert rows["led"]["result"] == "pass"
    assert {
        rows[k]["result"] for k in ("haptic", "buzzer", "battery", "mains", "modem", "button")
    } == {"skipped"}
    vd.wait_event(ev="led", pattern="solid", since=mark, timeout=5)  # the LED really lit
