"""Issue 12 §4: C4 SMS ingest - frames that came as SMS are verified like MQTT frames, deduped
across both paths, recorded with the path that delivered them first, and bad input is counted
and refused, never stored as an alert."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from auxilio.emulator.smsc import Smsc
from auxilio.gateway.forward import WebhookSink
from auxilio.gateway.sms import GammuInbox, HttpSmsSource, SmscSource
from auxilio.phone import e164
from auxilio.protocol import sms as smsbody
from auxilio.testing.sinks import WebhookReceiver
from sqlalchemy import func, select

from .conftest import wait_for

pytestmark = pytest.mark.integration

SIM = "+525512340001"
C4 = "+525599990000"


def _rows(registry: Any, device: int) -> list[dict[str, Any]]:
    a = registry.tables.alerts
    with registry.engine.connect() as conn:
        return [
            dict(r)
            for r in conn.execute(
                select(a).where(a.c.device_id == device).order_by(a.c.id)
            ).mappings()
        ]


def _dead(registry: Any) -> dict[str, int]:
    d = registry.tables.dead_letters
    with registry.engine.connect() as conn:
        return {
            r[0]: r[1] for r in conn.execute(select(d.c.reason, func.count()).group_by(d.c.reason))
        }


@pytest.fixture
def smsc() -> Any:
    s = Smsc(deliver_s=0.0)
    yield s
    s.close()


@pytest.mark.parametrize("registry_url", ["sqlite"], indirect=True)
def test_an_sms_alert_is_stored_acked_over_data_and_deduped(
    gateway_factory: Any, fleet: Any, registry: Any, smsc: Any
) -> None:
    hook = WebhookReceiver()
    try:
        gw = gateway_factory(sink=WebhookSink(hook.url), sms_sources=[SmscSource(smsc, C4)])
        sim = fleet.sim()
        registry.set_msisdn(sim.device, SIM, actor="test")
        c, frame = sim.frame("ALERT")
        smsc.submit(SIM, C4, smsbody.sms_encode(frame))
        # No downlink over SMS: the ACK goes to the device's MQTT topic (its persistent
        # session delivers it when data returns).
        ack = sim.wait_ack(c, timeout=10)
        assert ack is not None and ack["disposition"] == "received"
        assert [(r["counter"], r["via"]) for r in _rows(registry, sim.device)] == [(c, "sms")]
        # Data returns: the device's own MQTT copy (a retransmission) is a duplicate.
        again = sim.frame("ALERT", counter=c, retransmission=True)[1]
        sim.publish(again)
        assert sim.wait_ack(c, n=2, timeout=10)["disposition"] == "received"
        assert [(r["counter"], r["via"]) for r in _rows(registry, sim.device)] == [(c, "sms")]
        key = f"alert:{sim.label}:1:{c}"
        assert hook.wait_keys({key}, timeout=15)
        wait_for(lambda: gw.stats["duplicate"] >= 1, what="the MQTT copy deduped")
        assert hook.keys.count(key) == 1  # the C4 consumer sees it once
        rec = [r for r in hook.accepted if r["key"] == key][0]
        assert rec["via"] == "sms" and rec["counter"] == c
        assert gw.stats["sms_stored"] == 1
    finally:
        hook.close()


def test_bad_sms_are_counted_and_refused_never_stored(
    gateway_factory: Any, fleet: Any, registry: Any, smsc: Any
) -> None:
    gw = gateway_factory(sms_sources=[SmscSource(smsc)])
    sim = fleet.sim()
    registry.set_msisdn(sim.device, SIM, actor="test")
    old = sim.send("ALERT")  # delivered over MQTT first
    assert sim.wait_ack(old)
    for _ in range(70):  # push the window past `old`
        sim.send("HEARTBEAT")
    wait_for(lambda: gw.stats["heartbeat"] >= 70, what="heartbeats")
    revoked = fleet.sim()
    registry.set_msisdn(revoked.device, "+525512340002", actor="test")
    registry.set_state(revoked.device, "revoked", actor="test")
    _c, stale = sim.frame("ALERT", counter=2)  # below the window, never stored: a replay
    cases = [
        (SIM, "not base64 at all!"),  # garbage
        (SIM, "x" * 400),  # longer than an SMS
        (SIM, smsbody.sms_encode(stale)),  # a replayed frame
        ("+525500000000", smsbody.sms_encode(sim.frame("ALERT")[1])),  # well-formed, unknown no.
        ("+525512340002", smsbody.sms_encode(revoked.frame("ALERT")[1])),  # a revoked device
        ("not a number", smsbody.sms_encode(sim.frame("ALERT")[1])),
    ]
    for sender, text in cases:
        smsc.submit(sender, C4, text)
    wait_for(lambda: gw.stats["sms_received"] == len(cases), what="all SMS handled")
    wait_for(lambda: sum(_dead(registry).values()) >= len(cases) - 1, what="dead letters")
    assert gw.stats["sms_rejected_replay"] == 1  # answered (over MQTT) as a replay
    for reason in (
        "sms_bad_encoding",
        "sms_too_long",
        "sms_unknown_number",
        "sms_device_revoked",
        "sms_bad_sender",
    ):
        assert gw.stats["drop_" + reason] == 1, reason
    assert [r["counter"] for r in _rows(registry, sim.device)] == [old]
    assert _rows(registry, revoked.device) == []
    assert gw.stats["internal_error"] == 0


def test_gammu_inbox_files_are_removed_once_committed_or_set_aside(
    gateway_factory: Any, fleet: Any, registry: Any, tmp_path: Path
) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    gw = gateway_factory(sms_sources=[GammuInbox(inbox)])
    sim = fleet.sim()
    registry.set_msisdn(sim.device, SIM, actor="test")
    c, frame = sim.frame("ALERT")
    good = inbox / f"IN20261201_101500_00_{SIM}_00.txt"
    bad = inbox / f"IN20261201_101501_01_{SIM}_00.txt"
    good.write_text(smsbody.sms_encode(frame) + "\n")  # gammu ends the body with a newline
    bad.write_text("garbage\n")
    assert sim.wait_ack(c, timeout=10)["disposition"] == "received"
    wait_for(lambda: not good.exists() and not bad.exists(), what="inbox cleared")
    assert (inbox / "refused" / bad.name).exists()  # kept for an operator, never re-read
    assert [r["via"] for r in _rows(registry, sim.device)] == ["sms"]
    assert gw.stats["sms_received"] == 2


def test_http_webhook_authenticates_and_answers_after_the_commit(
    gateway_factory: Any, fleet: Any, registry: Any
) -> None:
    token = "t0k3n-of-the-sms-aggregator"
    src = HttpSmsSource("127.0.0.1:0", token)
    gateway_factory(sms_sources=[src])
    sim = fleet.sim()
    registry.set_msisdn(sim.device, SIM, actor="test")
    url = f"http://127.0.0.1:{src.port}/sms"

    def post(body: dict[str, Any], auth: str | None = token) -> int:
        req = urllib.request.Request(
            url,
            data=json.dumps(body).encode(),
            method="POST",
            headers={"Content-Type": "application/json"}
            | ({"Authorization": f"Bearer {auth}"} if auth else {}),
        )
        try:
            with urllib.request.urlopen(req, timeout=15) as r:
                return r.status
        except urllib.error.HTTPError as exc:
            return exc.code

    c, frame = sim.frame("ALERT")
    body = {"from": SIM, "text": smsbody.sms_encode(frame)}
    assert post(body, auth=None) == 401
    assert post(body, auth="wrong-token-wrong-token") == 401
    assert _rows(registry, sim.device) == []
    assert post(body) == 200  # answered only once stored
    assert [r["counter"] for r in _rows(registry, sim.device)] == [c]
    assert post({"from": SIM, "text": "garbage"}) == 422
    assert post({"nothing": 1}) == 400


def test_e164() -> None:
    assert e164("+52 55 1234 0001") == "+525512340001"
    assert e164("0052 (55) 1234-0001") == "+525512340001"
    assert e164("5512340001") is None and e164("") is None and e164("+0123") is None


def test_registry_keeps_one_sim_per_device(registry: Any, fleet: Any) -> None:
    from auxilio.errors import UsageError
    from auxilio.registry import RegistryError

    a, _ = fleet.add()
    b, _ = fleet.add()
    registry.set_msisdn(a, "+52 55 1234 0001", actor="test")
    assert registry.get_device(a).msisdn == SIM
    with pytest.raises(RegistryError):
        registry.set_msisdn(b, SIM, actor="test")
    with pytest.raises(UsageError):
        registry.set_msisdn(b, "call me", actor="test")
    assert registry.audit_log(limit=1)[0]["action"] == "set-sim"


@pytest.mark.parametrize("registry_url", ["sqlite"], indirect=True)
def test_devices_set_sim_cli(
    registry: Any, registry_url: str, fleet: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    from auxilio.cli import main
    from auxilio.protocol import codec

    a, _ = fleet.add()
    b, _ = fleet.add()
    la, lb = codec.device_str(a), codec.device_str(b)
    base = ["--registry", registry_url, "--actor", "tecnico:ana"]
    assert main(["devices", "set-sim", la, "+52 55 1234 0001", *base, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["sim"] == SIM
    assert registry.get_device(a).msisdn == SIM
    # Bad input: one line, non-zero, nothing changed.
    for argv, code in (
        (["devices", "set-sim", lb, SIM, *base], 1),  # already device a's SIM
        (["devices", "set-sim", lb, "5512340001", *base], 2),  # no country code
        (["devices", "set-sim", lb, *base], 2),  # neither a number nor --clear
    ):
        assert main(argv) == code, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: "), err
    assert registry.get_device(b).msisdn is None
    assert main(["devices", "set-sim", la, "--clear", *base]) == 0
    assert registry.get_device(a).msisdn is None
