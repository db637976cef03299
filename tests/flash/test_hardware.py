"""On a real board (never in CI): pytest -m hardware --port /dev/ttyUSB0 --board NAME [--firmware FILE]."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from auxilio.boards import load_board
from auxilio.flash.ports import resolve_port
from auxilio.flash.probe import probe

from tests.flash.conftest import auxilio, ok

pytestmark = pytest.mark.hardware


def test_the_board_on_port_is_the_chip_its_board_file_says(hardware) -> None:
    board = load_board(hardware["board"])
    found = probe(resolve_port(hardware["port"]))
    assert found.get("chip") == board.chip_info.title, found


def test_flash_and_deploy_a_real_board(hardware, tmp_path: Path) -> None:
    if not hardware["firmware"]:
        pytest.skip("give --firmware FILE to flash the board")
    r = auxilio(
        "flash",
        "--board",
        hardware["board"],
        "--firmware",
        hardware["firmware"],
        "--port",
        hardware["port"],
        "--force",
        "--reports",
        str(tmp_path),
        "--json",
        timeout=900,
    )
    (row,) = [json.loads(line) for line in ok(r).splitlines()]
    assert row["result"] == "ok" and row["chip"] == load_board(hardware["board"]).chip_info.title
