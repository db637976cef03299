"""Issue 11 §4: `auxilio provision --batch FILE.csv`: a tray of 6 (4 bracelets, 2 buttons) in parallel,
ports matched by USB serial number, bad rows refused on their own line, a report like flashing's."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from auxilio.keys import sealed_id
from auxilio.provision.batch import parse_batch
from auxilio.testing.station import ProvisionStation
from auxilio.testing.tools import run_auxilio

HEADER = "port,role,case,site,lat,lon,sector\n"


@pytest.fixture
def station(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("AUXILIO_RUNTIME_DIR", str(tmp_path / "run"))  # a private USB bus
    with ProvisionStation(tmp_path / "station") as st:
        yield st


def tray(station, virtual_board, roles):
    out = []
    for role in roles:
        board = "bracelet-c3" if role == "bracelet" else "button-s3"
        vd = virtual_board(board, firmware=True, advertise=True)
        out.append(vd)
    return out


def test_a_tray_of_six_with_bad_rows(station, virtual_board, tmp_path) -> None:
    roles = ["bracelet"] * 4 + ["button"] * 2
    boards = tray(station, virtual_board, roles)
    lines = [HEADER]
    for i, (vd, role) in enumerate(zip(boards, roles, strict=True)):
        serial = vd.board.usb_serial
        if role == "bracelet":
            lines.append(f"{serial},bracelet,PR-2026-{1000 + i:05d},,,,\n")
        else:
            lines.append(f"{serial},button,,Plaza {i},19.43{i},-99.13{i},Centro-{i}\n")
    bad = [
        "/dev/ttyNOPE1,bracelet,Juana Pérez,,,,\n",  # a name, not a case reference
        "/dev/ttyNOPE2,button,,Plaza X,95.0,-99.1,Centro\n",  # latitude out of range
        f"{boards[0].board.usb_serial},bracelet,PR-2026-09999,,,,\n",  # the same port again
    ]
    path = tmp_path / "tray.csv"
    path.write_text("".join(lines + bad), encoding="utf-8")
    reports = tmp_path / "reports"
    proc = run_auxilio(station.cli_args("--batch", str(path), "--reports", str(reports), "--json"))
    assert proc.returncode == 1, proc.stderr[-3000:]  # some rows refused
    results = [json.loads(ln) for ln in proc.stdout.splitlines()]
    assert [r["result"] for r in results] == ["ok"] * 6 + ["refused"] * 3, [
        r.get("error") for r in results
    ]
    assert "never a name" in results[6]["error"] and "latitude" in results[7]["error"]
    assert "already on row 2" in results[8]["error"]
    # One line per row in the progress, each row's outcome.
    assert sum("LISTO" in ln for ln in proc.stderr.splitlines()) == 6
    assert sum("RECHAZADA" in ln for ln in proc.stderr.splitlines()) == 3
    # The registry: exactly the six, each assigned, each holding the board's own key.
    recs = station.registry.list_devices()
    assert len(recs) == 6 and {r.state for r in recs} == {"assigned"}
    assert sorted(r.kind for r in recs) == sorted(roles)
    for vd, r in zip(boards, results[:6], strict=True):
        cfg = json.loads(vd.image.read_file("config.json"))
        rec = station.registry.require_device(cfg["device"])
        assert r["device"] == rec.label and cfg["key_id"] == sealed_id(rec.sealed_secret)
    # The report: a CSV and a JSON, one row per CSV line.
    (csv_path,) = reports.glob("provision-*.csv")
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["result"] for r in rows] == ["ok"] * 6 + ["refused"] * 3
    doc = json.loads(next(reports.glob("provision-*.json")).read_text())
    assert doc["kind"] == "provision" and len(doc["rows"]) == 9


def test_bad_csv_files() -> None:
    from auxilio.errors import UsageError

    with pytest.raises(UsageError, match="columns"):
        parse_batch("serial,kind\nX,bracelet\n")
    with pytest.raises(UsageError, match="unknown CSV columns"):
        parse_batch("port,role,name\nX,bracelet,Ana\n")
    with pytest.raises(UsageError, match="no rows"):
        parse_batch(HEADER)
    rows = parse_batch(HEADER + "P1,bracelet,PR-2026-00001,,,,\nP2,bracelet,PR-2026-00001,,,,\n")
    assert rows[0].error is None and "already on row 2" in (rows[1].error or "")
    assert (
        parse_batch(
            HEADER + "P1,bracelet,PR-2026-00001,,,,\nP2,bracelet,PR-2026-00001,,,,\n", force=True
        )[1].error
        is None
    )
    (row,) = parse_batch(HEADER + "P1,lamp,,,,,\n")
    assert "bracelet or button" in (row.error or "")
