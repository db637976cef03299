"""Issue 11 §3: one blank bracelet, one pass -> registry row, audit, on-device config, label, broker login.

Against a virtual board running the real firmware (MicroPython unix port behind
RFC 2217), a real mosquitto with per-device logins and the real gateway.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from auxilio.errors import AuxilioError
from auxilio.keys import sealed_id
from auxilio.protocol import codec
from auxilio.provision import writer
from auxilio.provision.run import provision
from auxilio.registry.schema import alerts
from auxilio.testing.chain import Login
from auxilio.testing.station import ProvisionStation
from PIL import Image
from sqlalchemy import select

zxingcpp = pytest.importorskip("zxingcpp")


@pytest.fixture
def station(tmp_path: Path):
    with ProvisionStation(tmp_path / "station") as st:
        yield st


def device_config(vd) -> tuple[dict, bytes]:
    """config.json as it is in the board's flash (read from the image, not over serial)."""
    raw = vd.image.read_file("config.json")
    return json.loads(raw), raw


def test_one_blank_bracelet_one_pass(station: ProvisionStation, virtual_board) -> None:
    vd = station.blank_board(virtual_board)
    mark = vd.mark()
    res, lines = station.provision_live(vd, "bracelet", case="PR-2026-00123")
    assert res.ok and not res.resumed
    reg = station.registry
    rec = reg.require_device(res.device)
    # The registry row: in service, assigned to the case, the key the device holds.
    assert rec.state == "assigned" and rec.kind == "bracelet" and rec.board == "bracelet-c3"
    assert reg.current_assignment(rec.id)["case_ref"] == "PR-2026-00123"
    assert rec.key_epoch == res.key_epoch == 1
    # The audit: begin (station and MAC), commit, assign, by the operator.
    audit = [(a["action"], a["actor"], a["detail"]) for a in reg.audit_log(target=rec.label)][::-1]
    # (the live test's CONFIG is audited by the gateway, on the operator's behalf)
    assert [a[0] for a in audit] == ["provision-begin", "provision-commit", "config", "assign"]
    assert [a[1] for a in audit] == ["staff-test"] * 2 + ["selftest:staff-test", "staff-test"]
    assert "selftest mode=window" in audit[2][2]
    assert "station=station-1" in audit[0][2] and f"mac={res.mac}" in audit[0][2]
    assert res.mac == ":".join(f"{b:02x}" for b in vd.board.mac)
    # The config on the device's flash: hash as reported, the registered key, the floor.
    cfg, raw = device_config(vd)
    assert hashlib.sha256(raw).hexdigest() == res.config_sha256
    assert cfg["device"] == rec.label and cfg["key_epoch"] == rec.key_epoch
    assert cfg["key_id"] == sealed_id(rec.sealed_secret)
    assert cfg["counter_floor"] == 1 and cfg["broker"] == station.broker_url
    assert cfg["role"] == "bracelet" and cfg["username"] == rec.label
    assert reg.device_secret(rec.id, station.chain.key) == bytes.fromhex(cfg["secret"])
    assert "config.json.tmp" not in vd.image.listdir()
    # The gateway stored the BOOT under the new key, then the heartbeat moved the mark.
    assert res.boot_s is not None and res.heartbeat_s is not None
    assert rec.high_water is not None and rec.last_seen is not None
    # The live test: the wearer's press came back as a TEST, stored as a test, acked (she
    # felt "received"), and never forwarded as an alert.
    assert res.test_counter is not None and res.press_wait_s is not None
    with reg.reader.connect() as conn:
        rows = (
            conn.execute(select(alerts).where(alerts.c.device_id == rec.id).order_by(alerts.c.id))
            .mappings()
            .all()
        )
    (test,) = [r for r in rows if r["type"] == "TEST"]
    assert test["counter"] == res.test_counter and test["test"]
    assert test["flags"] & codec.FLAG_TEST and test["disposition"] == "received"
    assert not [r for r in rows if r["type"] == "ALERT"]
    vd.wait_event(ev="state", name="acked", counter=res.test_counter, since=mark)
    vd.wait_event(ev="haptic", pattern="double", since=mark)
    assert not [f for f in station.forwarded_records() if f.get("type") in ("TEST", "ALERT")]
    i_ask = next(i for i, ln in enumerate(lines) if "mantenga pulsado" in ln)
    i_ok = next(i for i, ln in enumerate(lines) if "Prueba recibida" in ln)
    assert i_ask < i_ok
    # The label: the QR in the PNG decodes to the printed id and nothing else.
    texts = [r.text for r in zxingcpp.read_barcodes(Image.open(res.label_png))]
    assert texts == [f"AUXILIO:{rec.label}"] == [res.qr_payload]
    assert Path(res.label_svg).read_text().startswith("<svg")
    # The broker login works (the broker learnt it without a manual reload).
    login = Login(f"mqtt://{rec.label}:{cfg['password']}@127.0.0.1:{station.chain.port}", rec.label)
    try:
        assert not login.rc.is_failure
    finally:
        login.close()
    # A progress line per step, Spanish by default.
    assert any("Identificando" in ln for ln in lines) and any("Etiqueta" in ln for ln in lines)


def test_a_second_run_resumes_and_changes_nothing(station: ProvisionStation, virtual_board) -> None:
    vd = station.blank_board(virtual_board)
    first = provision(station.request(vd, "bracelet", case="PR-2026-00124"))
    _cfg, raw = device_config(vd)
    again = provision(station.request(vd, "bracelet", case="PR-2026-00124"))
    assert again.ok and again.resumed and again.device == first.device
    _cfg2, raw2 = device_config(vd)
    assert raw2 == raw  # the same secret: nothing re-keyed
    assert station.registry.require_device(first.device).key_epoch == 1


def test_an_assigned_bracelet_is_not_reprovisioned_without_reassign(
    station: ProvisionStation, virtual_board
) -> None:
    vd = station.blank_board(virtual_board)
    first = provision(station.request(vd, "bracelet", case="PR-2026-00125"))
    _cfg, raw = device_config(vd)
    with pytest.raises(AuxilioError, match="--reassign"):
        provision(station.request(vd, "bracelet", case="PR-2026-00999"))
    assert device_config(vd)[1] == raw
    res = provision(station.request(vd, "bracelet", case="PR-2026-00999", reassign=True))
    rec = station.registry.require_device(first.device)
    assert res.device == first.device and rec.key_epoch == 2 and rec.state == "assigned"
    assert station.registry.current_assignment(rec.id)["case_ref"] == "PR-2026-00999"
    cfg, raw2 = device_config(vd)
    assert raw2 != raw and cfg["key_epoch"] == 2 and cfg["key_id"] == sealed_id(rec.sealed_secret)


def test_reading_a_board_never_returns_its_secret(station, virtual_board) -> None:
    vd = station.blank_board(virtual_board)
    provision(station.request(vd, "bracelet"))
    st = writer.read_device(vd.board.rfc2217_url)
    assert set(st.config) == set(writer.DEVICE_FIELDS)
    assert "secret" not in json.dumps(st.__dict__)
