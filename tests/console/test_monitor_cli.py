"""`auxilio monitor`: usage errors in one line, the snapshot's facts, and the live console on a real pty."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from auxilio.cli import main
from auxilio.testing.console import drive
from sqlalchemy import select

from .conftest import CASE, SITE

BRACELET, BUTTON, SPARE = 0x1234500, 0x1234501, 0x1234502
FIX = {
    "lat_e7": -345037220,  # south and west: signs and widths of the coordinates
    "lon_e7": -584381590,
    "accuracy_m": 8,
    "fix_age_s": 4,
    "battery": 64,
    "rssi": -70,
    "bearer": "lte",
}
NO_FIX = {k: None for k in ("lat_e7", "lon_e7", "accuracy_m", "fix_age_s", "battery")}


def _one_line_error(err: str) -> None:
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err


def test_json_without_once_is_a_usage_error(seed: Any, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["monitor", "--json", "--registry", str(seed.path)]) == 2
    _one_line_error(capsys.readouterr().err)


def test_a_registry_that_does_not_exist_is_one_line_and_nothing_is_created(
    tmp_path: Path,
) -> None:
    """Repro: run from another directory, `monitor` created an empty var/auxilio.db, exit 0."""
    env = {k: v for k, v in os.environ.items() if k != "AUXILIO_REGISTRY"}
    for args in (["--once"], ["--once", "--registry", str(tmp_path / "no" / "dir" / "x.db")]):
        r = subprocess.run(
            [sys.executable, "-m", "auxilio.cli", "monitor", *args],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert r.returncode == 3, r.stderr
        _one_line_error(r.stderr)
        assert "does not exist" in r.stderr
    assert list(tmp_path.iterdir()) == []


def test_the_live_console_needs_a_terminal(seed: Any, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["monitor", "--registry", str(seed.path)]) == 2  # pytest's stdin is no tty
    _one_line_error(capsys.readouterr().err)


def test_snapshot_separates_alerts_from_events_with_context(
    seed: Any, local_zone: str, capsys: pytest.CaptureFixture[str]
) -> None:
    now = seed.now
    seed.device(BRACELET, case=CASE)
    seed.device(BUTTON, kind="button", site=True)
    seed.device(SPARE)
    old = seed.frame(
        BRACELET,
        payload=FIX,
        pressed_at=now - dt.timedelta(seconds=95),
        received_at=now - dt.timedelta(seconds=30),
    )
    new = seed.frame(BUTTON, payload=NO_FIX, received_at=now - dt.timedelta(seconds=2))
    done = seed.frame(
        BRACELET,
        payload=FIX,
        received_at=now - dt.timedelta(hours=2),
        attending_at=now - dt.timedelta(hours=2) + dt.timedelta(seconds=7),
        attending_by="op-1",
        disposition="attending",
    )
    drill = seed.frame(BRACELET, payload=FIX, test=True)
    for typ in ("BOOT", "POWER", "TAMPER", "LOW_BATTERY"):
        seed.frame(BUTTON, typ, payload={})
    seed.event(BUTTON, "TAMPER", open=True)
    seed.event(BRACELET, "LOW_BATTERY", battery=9, threshold=20)
    seed.event(BRACELET, "SUPERVISION_LOST")
    seed.event(None, "FORWARD_FAILING", backlog=3)
    seed.seen(BRACELET, now)
    assert main(["monitor", "--once", "--json", "--registry", str(seed.path)]) == 0
    snap = json.loads(capsys.readouterr().out)
    # Only ALERTs are alerts: unattended ones first, oldest press first, then the others.
    assert [a["id"] for a in snap["alerts"]] == [old, new, drill, done]
    assert {a["type"] for a in snap["alerts"]} == {"ALERT"}
    assert [a["state"] for a in snap["alerts"]] == ["pending", "pending", "test", "attending"]
    assert snap["pending_total"] == 2 and snap["overdue"] == 1
    assert snap["supervision_lost"] == 1 and snap["forward_failing"] is True
    b, k = snap["alerts"][0], snap["alerts"][1]
    # The bracelet's: elapsed since the press (not the late delivery), its case, its fix.
    assert b["since"] == "pressed" and 95 <= b["elapsed_s"] < 95 + 30 and b["overdue"]
    assert b["case_ref"] == CASE and b["site"] is None
    assert b["fix"] == {"lat": -34.503722, "lon": -58.438159, "accuracy_m": 8, "fix_age_s": 4}
    assert b["map"] == {
        "geo": "geo:-34.5037220,-58.4381590;u=8",
        "osm": "https://www.openstreetmap.org/?mlat=-34.50372&mlon=-58.43816&zoom=18",
    }
    assert (b["battery"], b["bearer"]) == (64, "lte")
    assert b["pressed_at"].endswith(local_zone) and b["received_at"].endswith(local_zone)
    # The button's: the site, its sector and fixed coordinates; no fix; not overdue yet.
    assert (k["site"], k["sector"], k["site_lat"], k["site_lon"]) == (SITE[0], SITE[3], *SITE[1:3])
    assert k["fix"] is None and k["map"]["geo"] == "geo:19.4326000,-99.1332000"
    assert k["since"] == "received" and not k["overdue"]
    assert snap["alerts"][3]["attend_s"] == 7.0
    # Events in their own list, newest first, never with a location.
    assert [e["type"] for e in snap["events"]] == [
        "FORWARD_FAILING",
        "SUPERVISION_LOST",
        "LOW_BATTERY",
        "TAMPER",
    ]
    assert snap["events"][2]["case_ref"] == CASE and snap["events"][3]["site"] == SITE[0]
    devices = {d["device"]: d for d in snap["devices"]}
    assert len(devices) == 3 and sum(d["supervision"] == "lost" for d in devices.values()) == 1


def test_once_text_fits_80_columns_with_the_essentials(
    seed: Any, local_zone: str, capsys: pytest.CaptureFixture[str], monkeypatch: Any
) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    seed.device(BRACELET, case=CASE)
    seed.frame(BRACELET, payload=FIX, received_at=seed.now - dt.timedelta(seconds=75))
    assert main(["monitor", "--once", "--registry", str(seed.path)]) == 0
    out = capsys.readouterr().out
    assert max(len(line) for line in out.splitlines()) <= 80
    row = next(line for line in out.splitlines() if CASE in line and "SIN ATENDER" in line)
    assert "! 1:1" in row and "-34.50372,-58.43816" in row
    assert out.splitlines()[0].startswith("C4 ") and local_zone in out.splitlines()[0]


# ----------------------------------------------------- a real terminal ---


def _attending_by(reg: Any, dev: int) -> Any:
    a = reg.tables.alerts
    with reg.engine.connect() as conn:
        return conn.execute(select(a.c.attending_by).where(a.c.device_id == dev)).scalar()


def _console(chain: Any, *extra: str) -> list[str]:
    return [
        "monitor",
        "--registry",
        str(chain.registry_path),
        "--broker",
        chain.url,
        "--operator",
        "consola-1",
        *extra,
    ]


@pytest.mark.integration
def test_live_console_attends_with_a_on_a_real_terminal(chain: Any) -> None:
    """The real CLI on an 80x24 pty: 'a' attends the selected alert, 'q' quits."""
    chain.start_gateway()
    dev = chain.device(0)
    c = dev.send("ALERT")
    assert dev.wait_ack(c, timeout=20)
    _out, code = drive(
        _console(chain, "--broker-credentials", str(chain.files.operator)),
        steps=[(b"SIN ATENDER", b"a")],
        quit_when=lambda _o: dev.wait_ack(c, n=2, timeout=0.01) is not None,
    )
    assert code == 0
    assert dev.wait_ack(c, n=2)["disposition"] == "attending"
    assert _attending_by(chain.registry, dev.device) == "consola-1"


@pytest.mark.integration
def test_live_console_with_a_wrong_password_never_shows_attending(chain: Any) -> None:
    chain.start_gateway()
    dev = chain.device(0)
    c = dev.send("ALERT")
    assert dev.wait_ack(c, timeout=20)
    bad = chain.dir / "wrong.json"
    bad.write_text(json.dumps({**json.loads(chain.files.operator.read_text()), "password": "x"}))
    out, code = drive(
        _console(chain, "--broker-credentials", str(bad)),
        steps=[(b"SIN ATENDER", b"a")],
        quit_when=lambda o: "atención fallida".encode() in o,
    )
    assert code == 0 and b"atendiendo" not in out
    assert _attending_by(chain.registry, dev.device) is None
    assert dev.wait_ack(c, n=2, timeout=0.3) is None
