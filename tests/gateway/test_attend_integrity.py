"""Issue 8 §3-§4: only the gateway decides what was received and what is attended, and the
console never says "attending" when the wearer was not told.

Repros: a console with registry write access inserted an `alerts` row for a counter the
device had not delivered, set `attending_at` and asked for the ACK: the gateway signed
`attending`, the bracelet gave the long pulse and dropped her unsent alert. Attending a BOOT
or POWER row signed an ACK for it; repeated requests re-signed every time. With the broker
unreachable or a wrong operator password, `monitor` turned the row `atendiendo` anyway
(the live console's tests are in tests/console/test_monitor_cli.py).
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from typing import Any

import pytest
from auxilio.gateway.control import request_attend
from auxilio.registry import open_registry
from auxilio.testing.mosquitto import free_port
from sqlalchemy import insert, select
from sqlalchemy.exc import OperationalError

from .conftest import wait_for

pytestmark = pytest.mark.integration


def _row(registry: Any, device: int, counter: int) -> dict[str, Any]:
    a = registry.tables.alerts
    with registry.engine.connect() as conn:
        return dict(
            conn.execute(select(a).where(a.c.device_id == device, a.c.counter == counter))
            .mappings()
            .one()
        )


def _request(registry: Any, request_id: str) -> dict[str, Any]:
    r = registry.tables.attend_requests
    with registry.engine.connect() as conn:
        return dict(conn.execute(select(r).where(r.c.request_id == request_id)).mappings().one())


def test_forged_alert_row_is_never_attended(secure_chain: Any) -> None:
    chain = secure_chain
    chain.start_gateway()
    dev = chain.device(0)
    c = dev.send("ALERT")
    assert dev.wait_ack(c, timeout=10)
    genuine = _row(chain.registry, dev.device, c)
    # The device's next alert never left it (network down); a console with write access
    # invents its row - even copying a genuine frame's bytes - marks it attended, and asks.
    forged_counter = c + 1
    a = chain.registry.tables.alerts
    now = dt.datetime.now(dt.timezone.utc)
    forgeries = {
        "copied frame": {"raw": genuine["raw"], "gw_seal": genuine["gw_seal"]},
        "no frame": {"raw": None, "gw_seal": None},
    }
    ids = {}
    for i, (what, fields) in enumerate(forgeries.items()):
        with chain.registry.engine.begin() as conn:
            ids[what] = conn.execute(
                insert(a)
                .values(
                    device_id=dev.device,
                    key_epoch=1,
                    counter=forged_counter + i,
                    type="ALERT",
                    flags=6,
                    device_ts=0,
                    payload={},
                    received_at=now,
                    attending_at=now,
                    attending_by="intruso",
                    disposition="received",
                    test=False,
                    lost=False,
                    **fields,
                )
                .returning(a.c.id)
            ).scalar_one()
    for what, alert_id in ids.items():
        res = request_attend(chain.operator_url, alert_id, "intruso")
        assert (res.state, res.reason) == ("failed", "not_stored_by_gateway"), what
        assert _request(chain.registry, res.request)["state"] == "failed"
    # No ACK at all was signed for the counters the device still holds.
    for i in range(len(ids)):
        assert dev.wait_ack(forged_counter + i, timeout=0.5) is None


def test_events_are_never_attended_and_alerts_are_signed_once(secure_chain: Any) -> None:
    chain = secure_chain
    gw = chain.start_gateway()
    dev = chain.device(1)  # the street button
    counters = {t: dev.send(t) for t in ("BOOT", "POWER", "TAMPER", "TEST")}
    counters["drill"] = dev.send("ALERT", test=True)
    for c in counters.values():
        assert dev.wait_ack(c, timeout=10)
    for t, c in counters.items():
        res = request_attend(chain.operator_url, _row(chain.registry, dev.device, c)["id"], "op")
        assert res.state == "failed", t
        assert res.reason == ("test_alert" if t == "drill" else "not_an_alert"), t
        assert dev.wait_ack(c, n=2, timeout=0.3) is None
    c = dev.send("ALERT")
    assert dev.wait_ack(c, timeout=10)
    alert_id = _row(chain.registry, dev.device, c)["id"]
    results = [request_attend(chain.operator_url, alert_id, f"op-{i}") for i in range(3)]
    assert [r.state for r in results] == ["sent", "sent", "sent"]
    assert [r.reason for r in results] == ["", "already_attended", "already_attended"]
    assert dev.wait_ack(c, n=2, timeout=10)["disposition"] == "attending"
    assert dev.wait_ack(c, n=3, timeout=0.5) is None  # signed exactly once
    assert gw.stats["attend_sent"] == 3
    row = _row(chain.registry, dev.device, c)
    assert row["attending_by"] == "op-0" and row["disposition"] == "attending"


def test_console_registry_is_read_only_sqlite(secure_chain: Any) -> None:
    ro = open_registry(secure_chain.registry_path, readonly=True)
    try:
        assert ro.list_devices()
        with pytest.raises(OperationalError):
            ro.set_state(ro.list_devices()[0].id, "lost", actor="console")
    finally:
        ro.close()
    assert all(d.state == "spare" for d in secure_chain.registry.list_devices())


@pytest.mark.postgres
def test_console_role_is_read_only_postgres(postgres_url: str) -> None:
    from auxilio.registry.roles import create_console_role
    from sqlalchemy.engine import make_url

    reg = open_registry(postgres_url)
    try:
        create_console_role(reg, "auxilio_console_t")
    finally:
        reg.close()
    url = make_url(postgres_url).set(username="auxilio_console_t", password=None)
    console = open_registry(url.render_as_string(hide_password=False), readonly=True)
    try:
        assert console.list_devices() == []
        t = console.tables
        for stmt in (
            insert(t.alerts).values(
                device_id=1,
                key_epoch=1,
                counter=1,
                type="ALERT",
                received_at=dt.datetime.now(dt.timezone.utc),
            ),
            t.devices.delete(),
        ):
            with pytest.raises(Exception, match="read-only|permission denied"):
                with console.engine.begin() as conn:
                    conn.execute(stmt)
    finally:
        console.close()


def _cli(*args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "auxilio.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        **kw,
    )


def test_attend_cli_exit_codes_and_nothing_attended_on_failure(secure_chain: Any) -> None:
    chain = secure_chain
    chain.start_gateway()
    dev = chain.device(0)
    c = dev.send("ALERT")
    assert dev.wait_ack(c, timeout=10)
    alert_id = _row(chain.registry, dev.device, c)["id"]
    bad = chain.dir / "wrong.json"
    creds = json.loads(chain.files.operator.read_text())
    bad.write_text(json.dumps({**creds, "password": "not-it"}))
    # A wrong password: exit 5, one line, nothing attended.
    r = _cli("attend", str(alert_id), "--broker", chain.url, "--broker-credentials", str(bad))
    assert r.returncode == 5 and r.stderr.count("\n") == 1, r.stderr
    assert "credentials" in r.stderr and "Traceback" not in r.stderr
    # No credentials at all (the repro's RuntimeError "not currently connected"): one line.
    r = _cli("attend", str(alert_id), "--broker", chain.url)
    assert r.returncode == 5 and r.stderr.startswith("error:"), r.stderr
    # The broker unreachable: exit 4.
    r = _cli("attend", str(alert_id), "--broker", f"mqtt://127.0.0.1:{free_port()}")
    assert r.returncode == 4 and r.stderr.startswith("error:"), r.stderr
    # Overflowing ids are a usage error, not a traceback.
    r = _cli("attend", "99999999999999999999999", "--broker", chain.url)
    assert r.returncode == 2 and r.stderr.startswith("error:"), r.stderr
    assert _row(chain.registry, dev.device, c)["attending_at"] is None
    assert dev.wait_ack(c, n=2, timeout=0.3) is None
    # The right login: exit 0 only on sent.
    r = _cli(
        "attend",
        str(alert_id),
        "--broker",
        chain.url,
        "--broker-credentials",
        str(chain.files.operator),
        "--json",
    )
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["state"] == "sent"
    assert dev.wait_ack(c, n=2, timeout=10)["disposition"] == "attending"


def test_attend_without_a_gateway_is_requested_not_attended(secure_chain: Any) -> None:
    chain = secure_chain
    gw = chain.start_gateway()
    dev = chain.device(0)
    c = dev.send("ALERT")
    assert dev.wait_ack(c, timeout=10)
    alert_id = _row(chain.registry, dev.device, c)["id"]
    chain.stop_gateways()
    del gw
    res = request_attend(chain.operator_url, alert_id, "op", result_timeout=1.0)
    assert res.state == "requested"
    assert _row(chain.registry, dev.device, c)["attending_at"] is None
    # The request waits in the gateway's persistent session and is served when it returns.
    chain.start_gateway()
    assert dev.wait_disposition(c, "attending", timeout=15) is not None
    wait_for(lambda: _request(chain.registry, res.request)["state"] == "sent", what="sent")
