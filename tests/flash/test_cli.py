"""auxilio ports / flash / deploy from the command line: wrong chips, bad input, idempotent deploys."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
from pathlib import Path

import pytest
import serial
from auxilio.boards import load_board
from auxilio.emulator import FlashImage, State, VirtualBoard
from auxilio.flash.deploy import bundle
from auxilio.testing import firmware_file
from auxilio.testing.wait import wait_for

from tests.flash.conftest import AUXILIO, QUIET, auxilio, ok

pytestmark = [pytest.mark.emulator, QUIET]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _wait(vb: VirtualBoard, state: State, timeout: float = 60) -> None:
    wait_for(lambda: vb.state is state, timeout, f"{vb.name} {state} (it is {vb.state})")


def _report(reports: Path) -> list[dict]:
    return json.loads(sorted(reports.glob("flash-*.json"))[-1].read_text())["rows"]


def test_ports_lists_virtual_boards_with_usb_ids_and_probe_adds_chip_and_version(
    virtual_tray,
) -> None:
    devkit, c3 = virtual_tray(["devkit-esp32", "bracelet-c3"], blank=False)
    rows = [json.loads(line) for line in ok(auxilio("ports", "--json")).splitlines()]
    by_dev = {r["device"]: r for r in rows}
    assert set(by_dev) == {devkit.port, c3.port}
    assert (by_dev[devkit.port]["usb_id"], by_dev[devkit.port]["bridge"]) == ("10c4:ea60", "cp210x")
    assert (by_dev[c3.port]["usb_id"], by_dev[c3.port]["bridge"]) == (
        "303a:1001",
        "usb-serial-jtag",
    )
    assert by_dev[c3.port]["serial"] == ":".join(f"{b:02X}" for b in c3.mac)
    assert by_dev[devkit.port]["url"] == devkit.rfc2217_url
    probed = {
        r["device"]: r
        for r in map(json.loads, ok(auxilio("ports", "--probe", "--json")).splitlines())
    }
    for vb in (devkit, c3):
        r = probed[vb.port]
        assert r["chip"] == vb.board.chip_info.title and r["mac"] == ":".join(
            f"{b:02x}" for b in vb.mac
        )
        assert r["micropython"] and r["micropython"] in vb.console().decode(errors="replace")
        _wait(vb, State.RUNNING)  # probing resets the board; it is left running


def test_wrong_chip_image_is_refused_before_any_write(virtual_tray, tmp_path: Path) -> None:
    (devkit,) = virtual_tray(["devkit-esp32"])
    before = _sha(devkit.image.path)
    c3_image = firmware_file("bracelet-c3", tmp_path)
    reports = tmp_path / "reports"
    # An image built for another chip: refused while checking the file.
    bad = auxilio(
        "flash",
        "--board",
        "devkit-esp32",
        "--firmware",
        str(c3_image),
        "--port",
        devkit.port,
        "--reports",
        str(reports),
    )
    assert (
        bad.returncode == 2 and "built for ESP32-C3" in bad.stderr and bad.stderr.count("\n") == 1
    )
    # The right image for the board, but the port holds another chip: refused after connecting.
    (c3,) = virtual_tray(["bracelet-c3"])
    c3_before = _sha(c3.image.path)
    wrong = auxilio(
        "flash",
        "--board",
        "devkit-esp32",
        "--firmware",
        str(firmware_file("devkit-esp32", tmp_path)),
        "--port",
        c3.rfc2217_url,
        "--reports",
        str(reports),
    )
    assert wrong.returncode == 1
    (row,) = _report(reports)
    assert row["result"] == "failed" and "has an ESP32-C3, not devkit-esp32's ESP32" in row["error"]
    assert _sha(devkit.image.path) == before and _sha(c3.image.path) == c3_before


@pytest.mark.parametrize(
    "make,args,code,message",
    [
        (None, ["--firmware", "{tmp}/missing.bin"], 2, "does not exist"),
        ("corrupt", ["--firmware", "{tmp}/corrupt.bin"], 2, "not an ESP32 firmware image"),
        ("good", ["--board", "nope", "--firmware", "{tmp}/good.bin"], 3, "unknown board 'nope'"),
    ],
)
def test_bad_files_and_boards_give_one_line_and_a_row_per_board(
    virtual_tray, tmp_path: Path, make, args, code, message
) -> None:
    (vb,) = virtual_tray(["devkit-esp32"])
    if make == "corrupt":
        (tmp_path / "corrupt.bin").write_bytes(os.urandom(4096))
    elif make == "good":
        firmware_file("devkit-esp32", tmp_path, name="good.bin")
    args = [a.format(tmp=tmp_path) for a in args]
    if "--board" not in args:
        args = ["--board", "devkit-esp32", *args]
    reports = tmp_path / "reports"
    r = auxilio("flash", *args, "--all", "--reports", str(reports))
    assert r.returncode == code, r.stderr
    assert r.stderr.startswith("error: ") and message in r.stderr and "Traceback" not in r.stderr
    (row,) = _report(reports)
    assert row["port"] == vb.port and row["result"] == "failed" and message in row["error"]


def test_no_matching_port_and_a_vanished_port(virtual_tray, tmp_path: Path) -> None:
    fw = str(firmware_file("devkit-esp32", tmp_path))
    virtual_tray([])  # an empty virtual bus (and this machine has no USB boards)
    none = auxilio(
        "flash", "--board", "devkit-esp32", "--firmware", fw, "--all", "--reports", str(tmp_path)
    )
    assert none.returncode == 3 and "no board is plugged in" in none.stderr
    gone = auxilio("flash", "--board", "devkit-esp32", "--firmware", fw, "--port", "/dev/pts/9999")
    assert gone.returncode == 3 and "does not exist" in gone.stderr
    # A board that goes away between listing and flashing: its row says it did not answer.
    (vb,) = virtual_tray(["devkit-esp32"])
    url = vb.rfc2217_url
    vb.close()
    r = auxilio(
        "flash",
        "--board",
        "devkit-esp32",
        "--firmware",
        fw,
        "--port",
        url,
        "--reports",
        str(tmp_path / "r2"),
    )
    assert r.returncode == 1
    (row,) = _report(tmp_path / "r2")
    assert row["result"] == "failed" and "nothing answers" in row["error"]


def test_ctrl_c_marks_boards_interrupted_and_leaves_no_process(
    virtual_tray, tmp_path: Path
) -> None:
    boards = virtual_tray(["devkit-esp32", "bracelet-c3"])
    args = []
    for name in ("devkit-esp32", "bracelet-c3"):
        args += ["--board", name, "--firmware", str(firmware_file(name, tmp_path))]
    deploying = [False]
    for vb in boards:
        vb.add_listener(lambda data: deploying.__setitem__(0, deploying[0] or b"raw REPL" in data))
    reports = tmp_path / "reports"
    proc = subprocess.Popen(
        [AUXILIO, "flash", *args, "--all", "--reports", str(reports)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    # Ctrl-C once mpremote is copying files: the worst moment.
    wait_for(lambda: deploying[0] or proc.poll() is not None, 120, "flash to reach deploy")
    assert proc.poll() is None, "flash ended before it reached deploy"
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, out + err
    rows = _report(reports)
    assert {r["result"] for r in rows} <= {"interrupted", "ok"} and "interrupted" in {
        r["result"] for r in rows
    }
    assert not any(r["result"] == "ok" and not r["files"] for r in rows)

    def mine() -> list[str]:
        leftovers = subprocess.run(
            ["pgrep", "-f", "mpremote connect rfc2217://127.0.0.1"], capture_output=True, text=True
        )
        return [
            pid
            for pid in leftovers.stdout.split()
            if any(
                vb.rfc2217_url in Path(f"/proc/{pid}/cmdline").read_text(errors="replace")
                for vb in boards
                if Path(f"/proc/{pid}/cmdline").exists()
            )
        ]

    wait_for(lambda: mine() == [], 10, "no mpremote of ours left running")


def test_deploy_is_idempotent_and_removes_shadowing_sources(virtual_tray, tmp_path: Path) -> None:
    (vb,) = virtual_tray(["bracelet-c3"], blank=False)
    _wait(vb, State.RUNNING)
    vb.power_cut()
    _wait(vb, State.OFF)
    vb.image.deploy(
        {"config.py": b"raise RuntimeError('stale source')\n"}
    )  # would shadow config.mpy
    vb.power_restore()
    _wait(vb, State.RUNNING)
    first = json.loads(ok(auxilio("deploy", "--port", vb.port, "--board", "bracelet-c3", "--json")))
    app = bundle(load_board("bracelet-c3"), tmp_path / "app")
    assert sorted(first["copied"]) == sorted(app.files) and first["removed"] == ["config.py"]
    second = json.loads(
        ok(auxilio("deploy", "--port", vb.rfc2217_url, "--json"))
    )  # board from board.json
    assert (
        second["copied"] == [] and second["unchanged"] == len(app.files) and second["removed"] == []
    )
    _wait(vb, State.RUNNING)
    for name, sha in app.sha256.items():
        assert hashlib.sha256(vb.image.read_file(name)).hexdigest() == sha
    assert "config.py" not in vb.image.listdir("/")
    # A board flashed with a frozen build keeps only main.py and board.json on its filesystem.
    frozen = json.loads(
        ok(auxilio("deploy", "--port", vb.rfc2217_url, "--frozen", "--no-reset", "--json"))
    )
    assert frozen["copied"] == []
    assert sorted(frozen["removed"]) == sorted(n for n in app.files if n.endswith(".mpy"))
    assert set(vb.image.listdir("/")) == {"board.json", "hal", "main.py"}
    assert vb.image.listdir("/hal") == []


class _DeafRom:
    """A download mode whose TX is dead: the chip resets into the ROM but never answers."""

    def __init__(self, board: VirtualBoard) -> None:
        pass

    def feed(self, data: bytes) -> None:
        pass

    def close(self) -> None:
        pass


def test_no_serial_data_and_a_busy_port_are_explained(tmp_path: Path) -> None:
    fw = str(firmware_file("devkit-esp32", tmp_path))
    img = FlashImage(tmp_path / "deaf.img", load_board("devkit-esp32")).erase()
    deaf = VirtualBoard(img.board, img.path, download_mode=_DeafRom).start(wait=False)
    try:
        r = auxilio(
            "flash",
            "--board",
            "devkit-esp32",
            "--firmware",
            fw,
            "--port",
            deaf.rfc2217_url,
            "--reports",
            str(tmp_path / "a"),
        )
        assert r.returncode == 1
        (row,) = _report(tmp_path / "a")
        assert "no answer from the ROM bootloader" in row["error"]
        for hint in ("auto-reset", "data cable", "driver", "another auxilio run", "hold BOOT"):
            assert hint in row["error"], row["error"]
        with serial.serial_for_url(deaf.rfc2217_url):  # a serial monitor holds the port
            r = auxilio(
                "flash",
                "--board",
                "devkit-esp32",
                "--firmware",
                fw,
                "--port",
                deaf.rfc2217_url,
                "--reports",
                str(tmp_path / "b"),
            )
        (row,) = _report(tmp_path / "b")
        assert r.returncode == 1 and "is busy: another program" in row["error"]
        assert set(img.path.read_bytes()) == {0xFF}  # nothing was written either time
    finally:
        deaf.close()


def test_a_board_that_boots_another_version_than_the_image_is_a_failure(
    virtual_tray, tmp_path: Path
) -> None:
    (vb,) = virtual_tray(["bracelet-c3"])
    fw = firmware_file("bracelet-c3", tmp_path, version="v9.9.9")
    r = auxilio(
        "flash",
        "--board",
        "bracelet-c3",
        "--firmware",
        str(fw),
        "--all",
        "--no-deploy",
        "--reports",
        str(tmp_path),
    )
    assert r.returncode == 1
    (row,) = _report(tmp_path)
    assert row["result"] == "failed" and "but the image is v9.9.9" in row["error"]
    assert "python -m auxilio.flash.images" in row["error"]  # the hint for virtual boards
