"""The power model: the projection's arithmetic, and `auxilio power-budget` measuring in emulation."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from auxilio import powerbudget
from auxilio.boards import load_board
from auxilio.errors import UsageError

AUXILIO = str(Path(sys.executable).parent / "auxilio")


def test_projection_is_currents_times_seconds() -> None:
    board = load_board("bracelet-c3").data
    cyc = powerbudget.Cycle(
        {"connected": 10.0, "awake": 2.0},
        airtime_s=0.1,
        gnss_s=1.0,
        mcu_awake_s=3.0,
        rrc_inactivity_s=10.0,
    )
    p = powerbudget.project(board, cyc, 900, "deep")
    pm = json.loads((Path(__file__).parents[2] / "boards/modems/sim7080g.json").read_text())
    mcu = board["power_model"]["mcu"]
    want = (
        10.0 * pm["power_model"]["connected_ma"]
        + 0.1 * (pm["power_model"]["transmit_ma"] - pm["power_model"]["connected_ma"])
        + 2.0 * pm["power_model"]["awake_ma"]
        + 1.0 * pm["power_model"]["gnss_ma"]
        + (900 - 12.0) * pm["power_model"]["psm_ma"]
        + (3.0 + powerbudget.MCU_WAKE_S) * mcu["active_ma"]
        + (900 - 3.0 - powerbudget.MCU_WAKE_S) * mcu["deep_sleep_ma"]
        + 900 * board["power_model"]["board_quiescent_ma"]
    )
    assert p.mas_per_beat == pytest.approx(want)
    assert p.days == pytest.approx(500 / (want / 900) / 24)
    # Release assistance removes the RRC tail: more days.
    q = powerbudget.project(board, cyc, 900, "deep", rrc_tail_s=0.0)
    assert q.days > p.days and q.note
    # An MCU that never sleeps dominates everything.
    assert powerbudget.project(board, cyc, 900, "awake").days < 2


def test_cycles_are_differences_between_psm_entries() -> None:
    a = {
        "seconds": {"connected": 5.0, "psm": 100.0},
        "airtime_s": 0.5,
        "gnss_s": 1.0,
        "commands": {"AT": 3},
        "bytes": {"up": 100},
        "uart_first": 0.0,
        "uart_last": 1.0,
    }
    b = {
        "seconds": {"connected": 15.0, "awake": 3.0, "psm": 190.0},
        "airtime_s": 0.7,
        "gnss_s": 2.0,
        "commands": {"AT": 5, "CASEND": 2},
        "bytes": {"up": 350},
        "uart_first": 200.0,
        "uart_last": 204.5,
    }
    (c,) = powerbudget.cycles_from([a, b])
    assert c.seconds == {"connected": 10.0, "awake": 3.0}
    assert c.airtime_s == pytest.approx(0.2) and c.gnss_s == 1.0 and c.mcu_awake_s == 4.5
    assert c.commands == {"AT": 2, "CASEND": 2} and c.bytes == {"up": 250}


def test_intervals() -> None:
    assert powerbudget.parse_interval("15m") == 900
    assert powerbudget.parse_interval("1h") == 3600
    assert powerbudget.parse_interval("120") == 120
    with pytest.raises(UsageError):
        powerbudget.parse_interval("fortnight")


@pytest.mark.integration
@pytest.mark.emulator
def test_power_budget_measures_the_firmware_in_emulation(tmp_path: Path) -> None:
    out = subprocess.run(
        [
            AUXILIO,
            "power-budget",
            "--board",
            "bracelet-c3",
            "--heartbeat",
            "15m",
            "--timing",
            "fast",
            "--emulated-heartbeat",
            "6",
            "--beats",
            "2",
            "--json",
            "--save",
            str(tmp_path / "cycles.json"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    deep, awake = json.loads(out.stdout)
    assert deep["mcu_sleep"] == "deep" and awake["mcu_sleep"] == "awake"
    assert 0 < deep["modem_awake_s_per_beat"] < 6 and 0 < deep["mcu_awake_s_per_beat"] < 6
    assert deep["days"] > awake["days"]
    saved = powerbudget.load(tmp_path / "cycles.json")
    assert len(saved) == 2 and all(c.commands.get("CASEND") for c in saved)
