"""`auxilio flash --all` over a tray of 8 virtual boards of mixed chips; one dies mid-write."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from auxilio.boards import load_board
from auxilio.emulator import State, VirtualBoard
from auxilio.flash.deploy import bundle
from auxilio.testing import firmware_file
from auxilio.testing.wait import wait_for

from tests.flash.conftest import QUIET, auxilio

pytestmark = [pytest.mark.emulator, pytest.mark.slow, QUIET]

TRAY = [
    "devkit-esp32",
    "bracelet-c3",
    "button-s3",
    "devkit-esp32",
    "bracelet-c3",
    "button-s3",
    "bracelet-c3",
    "devkit-esp32",
]
VICTIM = 4  # this board loses power in the middle of writing the app
BOOT_S = 60


def _wait(vb: VirtualBoard, state: State, timeout: float = BOOT_S) -> None:
    wait_for(lambda: vb.state is state, timeout, f"{vb.name} {state} (it is {vb.state})")


def _rows(path: str) -> dict[str, dict]:
    doc = json.loads(Path(path).read_text())
    return {r["port"]: r for r in doc["rows"]}


def test_tray_of_eight_one_killed_mid_write_then_rerun_flashes_only_that_one(
    virtual_tray, tmp_path: Path
) -> None:
    boards = virtual_tray(TRAY)
    names = sorted(set(TRAY))
    args = []
    for name in names:
        args += [
            "--board",
            name,
            "--firmware",
            str(firmware_file(name, tmp_path, code_size=12 * 1024)),
        ]
    reports = tmp_path / "reports"
    victim = boards[VICTIM]
    app_at = victim.board.factory.offset

    def cut(offset: int, length: int) -> None:
        if offset >= app_at + 0x1000:  # bootloader and partition table are in, the app is not
            victim.on_flash_write = None
            victim.power_cut()

    victim.on_flash_write = cut
    for vb in boards:
        _wait(vb, State.BOOT_LOOP)  # blank modules: nothing to boot yet

    first = auxilio("flash", *args, "--all", "--reports", str(reports), "--json")
    assert first.returncode == 1, first.stdout + first.stderr  # one board failed
    (report,) = sorted(reports.glob("flash-*.json"))
    rows = _rows(str(report))
    assert len(rows) == 8
    for i, vb in enumerate(boards):
        row = rows[vb.port]
        if i == VICTIM:
            assert row["result"] == "failed", row
            assert "mid-write" in row["error"] or "stopped answering" in row["error"], row
        else:
            assert row["result"] == "ok", row
            assert row["chip"] == vb.board.chip_info.title
            assert row["mac"] == ":".join(f"{b:02x}" for b in vb.mac)
            assert row["board"] == vb.board.name and row["serial"] == vb.usb_serial
    assert (reports / report.name.replace(".json", ".csv")).read_text().count("\n") == 9

    # Power back: the half-written board does not boot (it is never counted as flashed).
    victim.power_restore()
    _wait(victim, State.BOOT_LOOP)
    assert "not bootable" in (victim.boot_failure or "") or "esp_image" in victim.console().decode(
        errors="replace"
    )

    second = auxilio("flash", *args, "--all", "--reports", str(reports), "--json")
    assert second.returncode == 0, second.stdout + second.stderr
    rerun = _rows(str(sorted(reports.glob("flash-*.json"))[-1]))
    assert [p for p, r in rerun.items() if r["result"] == "ok"] == [victim.port]
    assert all(
        r["result"] == "skipped" and "already flashed" in r["error"]
        for p, r in rerun.items()
        if p != victim.port
    )

    # All eight boot MicroPython with the app deployed: read the files back.
    apps = {n: bundle(load_board(n), tmp_path / f"app-{n}") for n in names}
    for vb in boards:
        _wait(vb, State.RUNNING)
        app = apps[vb.board.name]
        on_board = {n: hashlib.sha256(vb.image.read_file(n)).hexdigest() for n in app.files}
        assert on_board == app.sha256, vb.name
        row = rerun[vb.port] if vb is victim else rows[vb.port]
        assert row["files"] == app.sha256  # what the device itself hashed after copying
        assert json.loads(vb.image.read_file("board.json"))["name"] == vb.board.name
