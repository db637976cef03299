"""config.json / board.json for LTE: bearer order, modem wiring, lte and sms settings (under micropython)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import FIRMWARE, PROTOCOL
from tests.firmware.fwkit import make_root
from tests.firmware.test_units import mp

SCRIPT = """
import json, auxcodec
from config import Config, ConfigError
try:
    c = Config(ROOT, auxcodec)
    print("J " + json.dumps({"bearers": list(c.bearers), "modem": c.modem, "apn": c.apn,
        "roaming": c.roaming, "low_power": c.low_power, "sms_to": c.sms_to,
        "budget": c.sms_budget_s, "tun": c.lte_tunables}))
except ConfigError as e:
    print("J " + json.dumps({"error": str(e)}))
"""


def load(root: Path) -> dict:
    (res,) = mp(f"ROOT = {str(root)!r}\n" + SCRIPT, [FIRMWARE, PROTOCOL])
    return res


def test_board_defaults_and_config_overrides(tmp_path: Path) -> None:
    make_root(tmp_path / "a", "mqtt://127.0.0.1:1883", modem="board")
    a = load(tmp_path / "a")
    assert a["bearers"] == ["lte"] and a["modem"]["profile"] == "sim7080g"
    assert a["modem"]["pins"]["pwrkey"] == 7 and a["modem"]["file"].endswith("modem.json")
    assert a["roaming"] is True and a["low_power"] == "psm" and a["budget"] == 20
    make_root(
        tmp_path / "b",
        "mqtt://127.0.0.1:1883",
        board="button-s3",
        modem="board",
        bearers=["lte", "wifi"],
        lte={"apn": "iot.example", "roaming": False, "low_power": "off"},
        sms={"to": "+525512345678", "budget_s": 45},
        tunables={"modem_fail_cycle": 5, "retry_base_ms": 100},
    )
    b = load(tmp_path / "b")
    assert b["bearers"] == ["lte", "wifi"] and b["apn"] == "iot.example"
    assert b["roaming"] is False and b["low_power"] == "off"
    assert b["sms_to"] == "+525512345678" and b["budget"] == 45
    assert b["tun"] == {"modem_fail_cycle": 5}  # only the LTE tunables


@pytest.mark.parametrize(
    "board,extra,needle",
    [
        ("devkit-esp32", {"bearers": ["lte"]}, "needs a modem"),
        ("bracelet-c3", {"bearers": ["3g"]}, "bearers may only name"),
        ("bracelet-c3", {"sms": {"to": "5512345678"}}, "E.164"),
        ("bracelet-c3", {"sms": {"budget_s": 0}}, "budget_s"),
        ("bracelet-c3", {"lte": {"low_power": "nap"}}, "low_power"),
    ],
)
def test_bad_lte_settings_are_one_clear_line(tmp_path: Path, board, extra, needle) -> None:  # noqa: ANN001
    make_root(tmp_path, "mqtt://127.0.0.1:1883", board=board, **extra)
    err = load(tmp_path)["error"]
    assert needle in err and "\n" not in err
    assert json.loads((tmp_path / "config.json").read_text())["secret"] not in err
