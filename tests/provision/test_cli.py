"""`auxilio provision`: the CLI's result, its words, no secret anywhere, and bad input.

Each mistake is one `error:` line, a non-zero exit, and nothing half-registered:
no registry row, no config on the board.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from auxilio.testing.station import ProvisionStation
from auxilio.testing.tools import run_auxilio


@pytest.fixture
def station(tmp_path: Path):
    with ProvisionStation(tmp_path / "station") as st:
        yield st


def _nothing_registered(st: ProvisionStation, vd=None) -> None:
    assert st.registry.list_devices() == []
    if vd is not None:
        assert "config.json" not in vd.image.listdir()


def _one_error_line(proc) -> None:
    assert proc.returncode != 0
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr


def test_json_result_and_no_secret_in_any_output(station, virtual_board, tmp_path) -> None:
    vd = station.blank_board(virtual_board)
    proc = run_auxilio(
        ["-vv", *station.cli_args("--port", vd.board.rfc2217_url, "--role", "bracelet")]
        + ["--case", "PR-2026-00321", "--json"]
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(proc.stdout)
    assert res["ok"] and res["assignment"] and res["qr_payload"].startswith("AUXILIO:")
    cfg = json.loads(vd.image.read_file("config.json"))
    secret = bytes.fromhex(cfg["secret"])
    needles = {
        cfg["secret"],
        cfg["secret"].upper(),
        base64.b64encode(secret).decode(),
        base64.urlsafe_b64encode(secret).decode().rstrip("="),
        cfg["password"],
    }
    # Every output and log of the run: stdout, stderr (progress and -vv logs, the
    # in-process gateway's included), the broker's log, the board's console, the label.
    texts = {
        "stdout": proc.stdout,
        "stderr": proc.stderr,
        "mosquitto.log": (station.dir / "mosquitto.log").read_text(errors="replace"),
        "console": vd.board.console().decode(errors="replace"),
        "svg": Path(res["label_svg"]).read_text(),
    }
    blobs = {"png": Path(res["label_png"]).read_bytes()}
    # The flash image: every file but config.json, and the raw flash outside the filesystem.
    fs = vd.image.littlefs()
    try:
        for name in _walk(fs, "/"):
            if name != "/config.json":
                with fs.open(name, "rb") as f:
                    blobs[name] = f.read()
    finally:
        fs.unmount()
    raw = vd.image.path.read_bytes()
    part = vd.image.vfs
    blobs["flash outside vfs"] = raw[: part.offset] + raw[part.offset + part.size :]
    for needle in needles:
        for what, text in texts.items():
            assert needle not in text, f"secret material in {what}"
        for what, blob in blobs.items():
            assert needle.encode() not in blob and secret not in blob, f"secret in {what}"


def _walk(fs, path: str) -> list[str]:
    out = []
    for name in fs.listdir(path):
        full = path.rstrip("/") + "/" + name
        if fs.stat(full).type == 2:  # LFS_TYPE_DIR
            out += _walk(fs, full)
        else:
            out.append(full)
    return out


def test_progress_lines_are_spanish_first_english_on_request(station, virtual_board) -> None:
    vd = station.blank_board(virtual_board)
    args = station.cli_args("--port", vd.board.rfc2217_url, "--role", "bracelet")
    es = run_auxilio(args)
    assert es.returncode == 0, es.stderr[-2000:]
    assert "Identificando el dispositivo" in es.stdout and "Aprovisionamiento" in es.stdout
    en = run_auxilio(args, env={**__import__("os").environ, "AUXILIO_LANG": "en"})
    assert en.returncode == 0, en.stderr[-2000:]
    assert "Identifying the device" in en.stdout and "resuming" in en.stdout


def test_wrong_port(station) -> None:
    proc = run_auxilio(station.cli_args("--port", "/dev/ttyNOPE9", "--role", "bracelet"))
    _one_error_line(proc)
    assert "does not exist" in proc.stderr
    _nothing_registered(station)


def test_no_micropython_on_the_device(station, virtual_board) -> None:
    blank = virtual_board("bracelet-c3", blank=True, wait=False)  # erased flash: ROM only
    proc = run_auxilio(station.cli_args("--port", blank.board.rfc2217_url, "--role", "bracelet"))
    _one_error_line(proc)
    assert "MicroPython" in proc.stderr
    _nothing_registered(station)


def test_unreachable_broker(station, virtual_board) -> None:
    vd = station.blank_board(virtual_board)
    args = station.cli_args("--port", vd.board.rfc2217_url, "--role", "bracelet")
    args[args.index("--broker") + 1] = "mqtt://127.0.0.1:9"
    proc = run_auxilio(args)
    _one_error_line(proc)
    assert "unreachable" in proc.stderr
    _nothing_registered(station, vd)


def test_unreachable_gateway_is_refused_first(station, virtual_board) -> None:
    station.chain.stop_gateways()
    vd = station.blank_board(virtual_board)
    proc = run_auxilio(station.cli_args("--port", vd.board.rfc2217_url, "--role", "bracelet"))
    _one_error_line(proc)
    assert "gateway does not answer" in proc.stderr
    _nothing_registered(station, vd)
    assert station.registry.audit_log() == []  # not even begun


def test_a_gateway_that_never_hears_the_boot_rolls_back(station, virtual_board) -> None:
    """Without the station's broker login the gateway is not checked first: the BOOT
    wait times out, and what the run created is undone."""
    station.chain.stop_gateways()
    vd = station.blank_board(virtual_board)
    args = station.cli_args("--port", vd.board.rfc2217_url, "--role", "bracelet")
    i = args.index("--broker-credentials")
    del args[i : i + 2]
    proc = run_auxilio([*args, "--boot-timeout", "8"])
    _one_error_line(proc)
    assert "gateway" in proc.stderr
    _nothing_registered(station, vd)
    actions = [a["action"] for a in station.registry.audit_log()][::-1]
    assert actions == ["provision-begin", "provision-commit", "provision-abandon"]


def test_duplicate_case_warns_and_force_allows(station, virtual_board) -> None:
    a = station.blank_board(virtual_board)
    b = station.blank_board(virtual_board)
    ok = run_auxilio(
        station.cli_args("--port", a.board.rfc2217_url, "--role", "bracelet", "--case")
        + ["PR-2026-00500"]
    )
    assert ok.returncode == 0, ok.stderr[-2000:]
    args = station.cli_args("--port", b.board.rfc2217_url, "--role", "bracelet")
    dup = run_auxilio([*args, "--case", "PR-2026-00500"])
    _one_error_line(dup)
    assert "--force" in dup.stderr
    assert len(station.registry.list_devices()) == 1
    assert "config.json" not in b.image.listdir()
    forced = run_auxilio([*args, "--case", "PR-2026-00500", "--force", "--json"])
    assert forced.returncode == 0, forced.stderr[-2000:]
    assert "ya tiene otra pulsera" in forced.stderr  # the warning, on the progress stream
    assert json.loads(forced.stdout)["warnings"]
    assert len(station.registry.list_devices()) == 2


@pytest.mark.parametrize(
    "extra,words",
    [
        (["--lat", "91", "--lon", "-99.1", "--site", "Plaza", "--sector", "Centro"], "latitude"),
        (["--lat", "19.4", "--lon", "nan", "--site", "Plaza", "--sector", "Centro"], "longitude"),
        (["--lat", "19.4", "--site", "Plaza", "--sector", "Centro"], "--lon"),
    ],
)
def test_bad_button_site(station, virtual_board, extra, words) -> None:
    vd = station.blank_board(virtual_board, "button-s3")
    proc = run_auxilio(station.cli_args("--port", vd.board.rfc2217_url, "--role", "button", *extra))
    _one_error_line(proc)
    assert words in proc.stderr
    _nothing_registered(station, vd)


def test_a_name_is_not_a_case_reference(station, virtual_board) -> None:
    vd = station.blank_board(virtual_board)
    proc = run_auxilio(
        station.cli_args("--port", vd.board.rfc2217_url, "--role", "bracelet")
        + ["--case", "María López"]
    )
    _one_error_line(proc)
    assert "never a name" in proc.stderr
    _nothing_registered(station, vd)
