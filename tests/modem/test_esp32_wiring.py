"""The ESP32 HAL builds the LTE transport from board data: UART and PWRKEY/RESET pins (fake machine)."""

from __future__ import annotations

import json
from pathlib import Path

from auxilio import modems

from tests.conftest import BOARDS
from tests.firmware.fwkit import make_root
from tests.firmware.test_units import FAKE_ESP32, fw_path, mp  # noqa: F401 (fixture)

SCRIPT = """
import json, asyncio, machine, auxcodec
from config import Config
from hal.esp32 import Esp32Hal
with open(ROOT + "/board.json") as f:
    board = json.loads(f.read())
cfg = Config(ROOT, auxcodec)
h = Esp32Hal(board)
t = h.make_transport(cfg, print)
m = t.modem
async def main():
    task = asyncio.create_task(t.run())
    await asyncio.sleep_ms(1500)  # 3 probes with no answer, then the PWRKEY press
    task.cancel()
asyncio.run(main())
u = machine.UART.ALL[0]
pins = [c for c in machine.CALLS if c[0] == "pin"]
print("J " + json.dumps({"kind": type(t).__name__, "links": [l.bearer for l in t.links],
    "uart": list(u.cfg), "written": u.written.decode(), "pins": pins,
    "loc": h.location(), "bearer": t.bearer}))
"""


def test_bracelet_transport_on_esp32_pins(fw_path, tmp_path: Path) -> None:  # noqa: ANN001, F811
    root = tmp_path / "dev"
    make_root(root, "mqtt://127.0.0.1:1883", modem="board", lte={"apn": "iot"})
    (res,) = mp(f"ROOT = {str(root)!r}\n" + SCRIPT, [FAKE_ESP32, *fw_path], timeout=60)
    board = json.loads((BOARDS / "bracelet-c3.json").read_text())
    pins = board["modem"]["pins"]
    assert res["kind"] == "Transport" and res["links"] == [2]  # LTE only
    assert res["uart"][:4] == [pins["uart"], 115200, pins["tx"], pins["rx"]]
    assert res["written"].startswith("AT\r")  # probed before any PWRKEY press
    pw = [p for p in res["pins"] if p[1] == pins["pwrkey"]]
    assert pw[0][2] == 0 and [1] == [p[2] for p in pw[1:2]]  # released first, then pressed
    assert res["loc"] is None and res["bearer"] == 0  # no fix, no bearer yet
    assert modems.board_profile(board) == "sim7080g"
