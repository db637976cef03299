"""`auxilio close`: an operator outcome, audited, written without any write access to alerts."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest
from auxilio.cli import main
from auxilio.console.outcomes import Closer, history
from auxilio.registry import open_registry
from sqlalchemy import insert, select, text

from .conftest import CASE

BRACELET = 0x1234500


def _close(seed: Any, *args: str) -> int:
    try:
        return main(["close", *args, "--registry", str(seed.path)])
    except SystemExit as exc:  # argparse's own usage errors
        return int(exc.code or 0)


def _alerts(reg: Any) -> list[dict[str, Any]]:
    a = reg.tables.alerts
    with reg.engine.connect() as conn:
        return [dict(r) for r in conn.execute(select(a).order_by(a.c.id)).mappings()]


def test_close_amend_and_the_audit_trail(
    seed: Any, local_zone: str, capsys: pytest.CaptureFixture[str]
) -> None:
    seed.device(BRACELET, case=CASE)
    alert = seed.frame(BRACELET, payload={"lat_e7": 1, "lon_e7": 2})
    before = _alerts(seed.registry)
    args = [str(alert), "--outcome", "false_alarm", "--operator", "op-2", "--json"]
    assert _close(seed, *args, "--note", "la usuaria confirma: pulsación accidental") == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["alert"], out["revision"], out["outcome"], out["attended"]) == (
        alert,
        1,
        "false_alarm",
        False,
    )
    assert out["closed_at"].endswith(local_zone)
    # A second close is refused (one line, exit 1); --amend corrects it as a new revision.
    assert _close(seed, str(alert), "--outcome", "resolved", "--operator", "op-3") == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "--amend" in err
    assert _close(seed, str(alert), "--outcome", "resolved", "--operator", "op-3", "--amend") == 0
    assert "corregida" in capsys.readouterr().out
    rows = history(seed.registry, alert)
    assert [(r.revision, r.outcome, r.operator) for r in rows] == [
        (1, "false_alarm", "op-2"),
        (2, "resolved", "op-3"),
    ]
    assert rows[0].note == "la usuaria confirma: pulsación accidental"
    audit = [r for r in seed.registry.audit_log(20) if r["target"] == f"alert:{alert}"]
    assert [(r["actor"], r["action"], r["detail"]) for r in reversed(audit)] == [
        ("op-2", "close", "outcome=false_alarm revision=1 unattended"),
        ("op-3", "close-amend", "outcome=resolved revision=2 unattended"),
    ]
    assert [r["at"] for r in reversed(audit)] == [r.closed_at for r in rows]
    assert _alerts(seed.registry) == before  # what the gateway owns is untouched


@pytest.mark.parametrize(
    ("args", "code"),
    [
        (["{boot}", "--outcome", "resolved"], 2),  # an event is not closed
        (["999999", "--outcome", "resolved"], 3),
        (["abc", "--outcome", "resolved"], 2),
        (["99999999999999999999999", "--outcome", "resolved"], 2),
        (["{alert}", "--outcome", "dunno"], 2),
        (["{alert}", "--outcome", "test", "--note", "two\nlines"], 2),
        (["{alert}", "--outcome", "test", "--note", "x" * 501], 2),
        (["{alert}", "--outcome", "test", "--operator", "two words"], 2),
        (["{alert}", "--outcome", "test", "--amend"], 2),  # nothing to correct yet
    ],
)
def test_bad_closes_are_one_line_and_change_nothing(
    seed: Any, capsys: pytest.CaptureFixture[str], args: list[str], code: int
) -> None:
    seed.device(BRACELET)
    ids = {"alert": seed.frame(BRACELET), "boot": seed.frame(BRACELET, "BOOT")}
    audit = len(seed.registry.audit_log(100))
    assert _close(seed, *[a.format(**ids) for a in args]) == code
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    with seed.registry.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM outcomes")).scalar() == 0
    assert len(seed.registry.audit_log(100)) == audit


def test_close_never_creates_a_registry(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "var" / "auxilio.db"
    assert main(["close", "1", "--outcome", "test", "--registry", str(missing)]) == 3
    assert "does not exist" in capsys.readouterr().err and not missing.parent.exists()


def test_the_sqlite_writer_can_write_outcomes_and_nothing_else(seed: Any) -> None:
    """SQLite has no roles: the closer's authorizer refuses every other write up front."""
    seed.device(BRACELET)
    alert = seed.frame(BRACELET)
    before = _alerts(seed.registry)
    with Closer(seed.path) as closer:
        for stmt in (
            "UPDATE alerts SET attending_at = '2026-01-01 00:00:00', attending_by = 'x'",
            "INSERT INTO alerts (device_id, key_epoch, counter, type, flags, received_at, test,"
            " lost, via) VALUES (19088384, 1, 99, 'ALERT', 0, '2026-01-01', 0, 0, 'mqtt')",
            "DELETE FROM attend_requests",
            "INSERT INTO audit (at, actor, action, target, detail)"
            " VALUES ('2026-01-01', 'x', 'close', 'alert:1', '')",
            "UPDATE devices SET state = 'retired'",
            "DROP TABLE outcomes",
            "PRAGMA foreign_keys = OFF",
        ):
            with pytest.raises(Exception, match="not authorized"):
                with closer.engine.begin() as conn:
                    conn.execute(text(stmt))
        closer.close_alert(alert, "test", "op-1")
    assert _alerts(seed.registry) == before
    assert seed.registry.get_device(BRACELET).state == "spare"


@pytest.mark.postgres
def test_the_console_role_writes_only_outcomes_postgres(postgres_url: str) -> None:
    """On PostgreSQL the console role may INSERT outcomes and nothing else; the audit row is
    the database's (with the server's clock), so the role can neither skip nor forge it."""
    from auxilio.registry.roles import create_console_role
    from sqlalchemy.engine import make_url

    owner = open_registry(postgres_url)
    try:
        owner.add_device(BRACELET, "bracelet", "devkit-esp32", b"sealed", actor="test")
        a = owner.tables.alerts
        now = dt.datetime.now(dt.timezone.utc)
        with owner.engine.begin() as conn:
            alert, boot = (
                conn.execute(
                    insert(a)
                    .values(device_id=BRACELET, key_epoch=1, counter=c, type=t, received_at=now)
                    .returning(a.c.id)
                ).scalar_one()
                for c, t in ((1, "ALERT"), (2, "BOOT"))
            )
        create_console_role(owner, "auxilio_console_t")
        url = make_url(postgres_url).set(username="auxilio_console_t", password=None)
        console_url = url.render_as_string(hide_password=False)
        with Closer(console_url) as closer:
            done = closer.close_alert(alert, "no_contact", "op-1", "nadie contesta")
            assert abs((done.closed_at - now).total_seconds()) < 60
            with pytest.raises(Exception, match="events are not closed|no es una alerta|evento"):
                closer.close_alert(boot, "test", "op-1")
            t = owner.tables
            for stmt in (
                t.alerts.update().values(attending_by="console"),
                t.attend_requests.delete(),
                t.audit.insert().values(at=now, actor="x", action="close", target="alert:1"),
                t.devices.update().values(state="retired"),
                t.outcomes.update().values(outcome="resolved"),
                t.outcomes.delete(),
            ):
                with pytest.raises(Exception, match="permission denied"):
                    with closer.engine.begin() as conn:
                        conn.execute(text("SET TRANSACTION READ WRITE"))
                        conn.execute(stmt)
            # A backdated close is stamped with the server's clock all the same.
            with closer.engine.begin() as conn:
                conn.execute(text("SET TRANSACTION READ WRITE"))
                conn.execute(
                    t.outcomes.insert().values(
                        alert_id=alert,
                        revision=2,
                        outcome="resolved",
                        note="",
                        operator="op-1",
                        closed_at=now - dt.timedelta(days=30),
                        attended=False,
                    )
                )
        rows = history(owner, alert)
        assert [r.revision for r in rows] == [1, 2]
        assert abs((rows[1].closed_at - now).total_seconds()) < 60
        audit = [r for r in owner.audit_log(20) if r["target"] == f"alert:{alert}"]
        assert [r["action"] for r in reversed(audit)] == ["close", "close-amend"]
        assert [r["at"] for r in reversed(audit)] == [r.closed_at for r in rows]
        assert owner.get_device(BRACELET).state == "spare"
    finally:
        owner.close()
