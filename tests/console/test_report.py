"""`auxilio report` over a seeded registry, checked against figures computed here from the seed."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import math
import random
from collections import defaultdict
from typing import Any

import pytest
from auxilio.cli import main
from auxilio.console import report
from auxilio.console.outcomes import Closer
from auxilio.registry.schema import OUTCOMES

LOW, OK_NOW, REVOKED, SILENT, RECENT, NEVER, SPARE = range(0x1234600, 0x1234607)
MONTHS = ("2026-02", "2026-03", "2026-04")


def _local(*args: int) -> dt.datetime:
    return dt.datetime(*args).astimezone()  # the fixture's zone (-06:00)


def test_nearest_rank_percentiles() -> None:
    assert report.percentile([], 50) is None
    assert report.percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert report.percentile([float(i) for i in range(1, 11)], 90) == 9.0
    assert report.percentile([float(i) for i in range(1, 21)], 90) == 18.0
    assert report.percentile([7.0], 90) == 7.0


def _seed_alerts(seed: Any, rng: random.Random) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Alerts in Feb-Apr 2026 (and some outside); returns what was seeded and the extras."""
    dev = seed.device(0x1234500, case="PR-2026-00123")
    made: list[dict[str, Any]] = []
    for m in (2, 3, 4):
        for _ in range(rng.randint(12, 20)):
            pressed = _local(2026, m, 1) + dt.timedelta(seconds=rng.randint(0, 27 * 86400))
            has_press = rng.random() < 0.8
            received = pressed + dt.timedelta(seconds=rng.choice([1, 2, 40, 600]))
            attended = received + dt.timedelta(seconds=rng.randint(1, 90))
            row = {
                "pressed": pressed if has_press else None,
                "received": received,
                "attended": attended if rng.random() < 0.7 else None,
                "cancelled": received + dt.timedelta(seconds=5) if rng.random() < 0.15 else None,
                "outcome": rng.choice([*OUTCOMES, None]),
                "amend_to": None,
            }
            if row["outcome"] and rng.random() < 0.2:
                row["amend_to"] = rng.choice(OUTCOMES)
            made.append(row)
    # Edge: pressed 23:59:50 on 31 March, received 20 s later in April: a March alert.
    made.append(
        {
            "pressed": _local(2026, 3, 31, 23, 59, 50),
            "received": _local(2026, 4, 1, 0, 0, 10),
            "attended": _local(2026, 4, 1, 0, 0, 12),
            "cancelled": None,
            "outcome": "resolved",
            "amend_to": None,
        }
    )
    ids = []
    for r in made:
        ids.append(
            seed.frame(
                dev,
                pressed_at=r["pressed"],
                received_at=r["received"],
                attending_at=r["attended"],
                attending_by="op" if r["attended"] else None,
                cancelled_at=r["cancelled"],
                payload={"battery": 90},
            )
        )
    extras = {
        "outside": [
            seed.frame(dev, received_at=_local(2026, 1, 31, 23, 0)),
            seed.frame(dev, received_at=_local(2026, 5, 1, 0, 0, 1)),
        ],
        "drills": [seed.frame(dev, received_at=_local(2026, 3, 3), test=True) for _ in range(2)],
        "rejected": [seed.frame(dev, received_at=_local(2026, 4, 4), disposition="rejected")],
    }
    seed.frame(dev, "BOOT", received_at=_local(2026, 3, 5))  # not an alert
    with Closer(seed.path) as closer:
        for alert_id, r in zip(ids, made, strict=True):
            if r["outcome"]:
                closer.close_alert(alert_id, r["outcome"], "op-1")
            if r["amend_to"]:
                closer.close_alert(alert_id, r["amend_to"], "op-2", amend=True)
    return made, extras


def _expected(made: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The figures, from the seed (not from the registry)."""
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in made:
        groups[(r["pressed"] or r["received"]).strftime("%Y-%m")].append(r)
    groups["total"] = list(made)
    out = {}
    for month in (*MONTHS, "total"):
        rows = groups.get(month, [])
        final = [r["amend_to"] or r["outcome"] for r in rows]
        times = sorted(
            (r["attended"] - (r["pressed"] or r["received"])).total_seconds()
            for r in rows
            if r["attended"]
        )

        def rank(p: float, times: list[float] = times) -> float | None:
            return times[math.ceil(p * len(times)) - 1] if times else None

        n = len(rows)
        out[month] = {
            "alerts": n,
            **{o: final.count(o) for o in OUTCOMES},
            "open": final.count(None),
            "effective": final.count("resolved"),
            "cancelled": sum(1 for r in rows if r["cancelled"]),
            "attended": len(times),
            "closed_unattended": sum(1 for r in rows if r["outcome"] and not r["attended"]),
            "attend_p50_s": rank(0.5),
            "attend_p90_s": rank(0.9),
            "attend_within_goal": round(sum(t <= 10 for t in times) / len(times), 4)
            if times
            else None,
            "false_alarm_rate": round(final.count("false_alarm") / n, 4) if n else None,
            "cancel_rate": round(sum(1 for r in rows if r["cancelled"]) / n, 4) if n else None,
        }
    return out


def _seed_devices(seed: Any, now: dt.datetime) -> None:
    for dev in (LOW, OK_NOW, REVOKED):
        seed.device(dev, kind="button", site=True)
        seed.seen(dev, now)
    seed.frame(LOW, "POWER", payload={"mains": False, "battery": 40})
    seed.frame(LOW, "LOW_BATTERY", payload={"battery": 12, "threshold": 20})
    seed.frame(OK_NOW, "LOW_BATTERY", payload={"battery": 10, "threshold": 20})
    seed.frame(OK_NOW, "ALERT", payload={"battery": 85}, test=True)  # recharged since
    seed.frame(REVOKED, "LOW_BATTERY", payload={"battery": 5, "threshold": 20})
    seed.registry.set_state(REVOKED, "revoked", actor="test")
    for dev, seen in (
        (SILENT, now - dt.timedelta(days=10)),
        (RECENT, now - dt.timedelta(days=2)),
        (NEVER, None),
    ):
        seed.device(dev, case=f"PR-2026-0{dev % 1000:04d}")
        seed.seen(dev, seen)
    seed.device(SPARE)  # in a drawer: silent by design, never listed


def test_report_matches_figures_computed_from_the_seed(
    seed: Any, local_zone: str, capsys: pytest.CaptureFixture[str]
) -> None:
    rng = random.Random(9)
    made, extras = _seed_alerts(seed, rng)
    now = _local(2026, 4, 30, 12, 0)
    seed.seen(0x1234500, now)  # the alerts' bracelet is heard from
    _seed_devices(seed, now)
    want = _expected(made)
    assert sum(want[m]["alerts"] for m in MONTHS) == len(made)  # the seed fills all three

    rep = report.build(
        seed.registry,
        report.parse_day("2026-02"),
        report.parse_day("2026-04", end=True),
        silent_days=7,
        low_battery=20,
        now=now,
    )
    assert (rep["from"], rep["to"]) == ("2026-02-01", "2026-04-30")
    assert [m["month"] for m in rep["months"]] == list(MONTHS)
    for got in [*rep["months"], rep["total"]]:
        exp = want[got["month"]]
        for k, v in exp.items():
            assert got[k] == (round(v, 1) if k.endswith("_s") and v is not None else v), (
                got["month"],
                k,
            )
    assert rep["total"]["effective"] == sum(
        1 for r in made if (r["amend_to"] or r["outcome"]) == "resolved"
    )
    assert (rep["drills"], rep["rejected"]) == (len(extras["drills"]), len(extras["rejected"]))
    assert {d["device"] for d in rep["silent_devices"]} == {
        report.codec.device_str(SILENT),
        report.codec.device_str(NEVER),
    }
    silent = {d["device"]: d for d in rep["silent_devices"]}
    assert silent[report.codec.device_str(SILENT)]["silent_days"] == 10.0
    assert silent[report.codec.device_str(NEVER)]["last_seen"] is None
    assert [(d["device"], d["battery"], d["frame"]) for d in rep["low_battery"]] == [
        (report.codec.device_str(LOW), 12, "LOW_BATTERY")
    ]
    assert rep["low_battery"][0]["where"] == "Plaza Mayor"

    # The command: the same figures as CSV (a spreadsheet's view) and as JSON.
    assert (
        main(
            [
                "report",
                "--from",
                "2026-02",
                "--to",
                "2026-04",
                "--csv",
                "--registry",
                str(seed.path),
            ]
        )
        == 0
    )
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [r["month"] for r in rows] == [*MONTHS, "total"]
    for r in rows:
        assert int(r["alerts"]) == want[r["month"]]["alerts"]
        assert int(r["resolved"]) == want[r["month"]]["resolved"]
        assert r["false_alarm_rate"] == (
            ""
            if want[r["month"]]["false_alarm_rate"] is None
            else str(want[r["month"]]["false_alarm_rate"])
        )
    assert (
        main(
            [
                "report",
                "--from",
                "2026-02",
                "--to",
                "2026-04",
                "--json",
                "--registry",
                str(seed.path),
            ]
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out)["total"] == rep["total"]
    assert (
        main(["report", "--from", "2026-02", "--to", "2026-04", "--registry", str(seed.path)]) == 0
    )
    text = capsys.readouterr().out
    assert f"Reportes efectivos (resueltas): {rep['total']['effective']}" in text
    assert "UTC" + local_zone in text


@pytest.mark.parametrize(
    "args",
    [
        ["--from", "2026-13"],
        ["--from", "2026-04-01", "--to", "2026-03-01"],
        ["--silent-days", "0"],
        ["--low-battery", "101"],
        ["--json", "--csv"],
    ],
)
def test_bad_report_options_are_one_line(
    seed: Any, capsys: pytest.CaptureFixture[str], args: list[str]
) -> None:
    try:
        code = main(["report", *args, "--registry", str(seed.path)])
    except SystemExit as exc:  # argparse's own usage errors
        code = int(exc.code or 0)
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
