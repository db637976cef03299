"""Issue 11 §5 "Rotate-key": `auxilio rotate-key --port P` gives a device in service a new secret.

Against a virtual board running the real firmware, a real mosquitto (dynsec) and
the real gateway, whose clock the test moves past the grace (no waiting it out).
Read back: the registry row (key epoch + 1, the old key's grace), the config on
the board's flash (its hash, the registry's secret), the device's own alert under
the new key (acked), frames under the old key (accepted in the grace, rejected
after), the audit trail, and the outputs (no secret).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from auxilio.errors import AuxilioError
from auxilio.gateway.simulator import SimDevice
from auxilio.keys import sealed_id
from auxilio.provision import rotate, writer
from auxilio.provision.rotate import RotateRequest, rotate_key
from auxilio.provision.run import DIE_ENV, provision
from auxilio.registry.schema import alerts, dead_letters
from auxilio.testing.station import BOOT_TIMEOUT_S, ProvisionStation
from auxilio.testing.wait import wait_for
from sqlalchemy import select

CASE = "PR-2026-00321"
GRACE_S = 600.0  # long enough never to end by itself while the test runs: the clock ends it
CLI_TIMEOUT_S = 180
ACK_S = 30.0


class Clock:
    """Wall time plus an offset the test moves (the gateway's only clock)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def station(tmp_path: Path, clock: Clock):
    with ProvisionStation(tmp_path / "station", clock=clock) as st:
        yield st


def flash_config(vd: Any) -> tuple[dict[str, Any], bytes]:
    raw = vd.image.read_file("config.json")
    return json.loads(raw), raw


def request(st: ProvisionStation, vd: Any, **kw: Any) -> RotateRequest:
    kw.setdefault("grace_s", GRACE_S)
    return RotateRequest(
        port=vd.board.rfc2217_url,
        registry=st.registry,
        public_key=st.public_key,
        actor="staff-test",
        station="station-1",
        broker_sync=st.sync,
        boot_timeout=BOOT_TIMEOUT_S,
        **kw,
    )


def rows(st: ProvisionStation, device: int, ftype: str = "ALERT") -> list[dict[str, Any]]:
    with st.registry.reader.connect() as conn:
        q = select(alerts).where(alerts.c.device_id == device, alerts.c.type == ftype)
        return [dict(r) for r in conn.execute(q.order_by(alerts.c.id)).mappings()]


def bad_tags(st: ProvisionStation) -> int:
    with st.registry.reader.connect() as conn:
        q = select(dead_letters.c.id).where(dead_letters.c.reason == "bad_tag")
        return len(conn.execute(q).all())


def run_cli(st: ProvisionStation, vd: Any, env: dict[str, str], *extra: str) -> Any:
    """`auxilio rotate-key` for this station and board, as staff run it (a real process)."""
    args = [
        "rotate-key",
        "--port",
        vd.board.rfc2217_url,
        "--grace",
        str(GRACE_S),
        "--registry",
        str(st.chain.registry_path),
        "--pubkey",
        str(st.pubkey_file),
        "--broker-admin",
        str(st.admin_file),
        "--actor",
        "staff-test",
        "--station",
        "station-1",
        *extra,
    ]
    return subprocess.run(
        [sys.executable, "-m", "auxilio.cli", *args],
        env=dict(os.environ, **env),
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
    )


def assert_holds_registry_key(st: ProvisionStation, vd: Any) -> dict[str, Any]:
    """The board's config.json is the registry's current key (issue 11 §7), nothing staged."""
    cfg, _raw = flash_config(vd)
    rec = st.registry.require_device(cfg["device"])
    assert rec.state in rotate.IN_SERVICE
    assert cfg["key_epoch"] == rec.key_epoch and cfg["key_id"] == sealed_id(rec.sealed_secret)
    assert st.registry.device_secret(rec.id, st.chain.key) == bytes.fromhex(cfg["secret"])
    names = vd.image.listdir()
    assert writer.CONFIG_TMP not in names and writer.CONFIG_KEY not in names
    return cfg


def test_rotate_key_new_key_acked_old_key_only_in_its_grace(
    station: ProvisionStation, virtual_board, clock: Clock
) -> None:
    vd = station.blank_board(virtual_board)
    first = provision(station.request(vd, "bracelet", case=CASE))
    old_cfg, old_raw = flash_config(vd)
    reg = station.registry
    did = reg.require_device(first.device).id

    lines: list[str] = []
    res = rotate_key(request(station, vd), lines.append)

    # The registry row: epoch + 1, the new key the device holds, the old one kept for the grace.
    rec = reg.require_device(did)
    assert res.ok and res.resumed is None
    assert rec.key_epoch == res.key_epoch == 2 and res.old_epoch == 1
    assert rec.state == "assigned" and reg.current_assignment(did)["case_ref"] == CASE
    assert rec.previous_key is not None and rec.previous_key.epoch == 1
    assert res.grace_until == rec.previous_key.valid_until.isoformat(timespec="seconds")
    # The on-device config: its hash as reported, the registry's new secret, the rest as it was.
    cfg = assert_holds_registry_key(station, vd)
    _cfg, raw = flash_config(vd)
    assert hashlib.sha256(raw).hexdigest() == res.config_sha256
    assert cfg["secret"] != old_cfg["secret"] and cfg["password"] != old_cfg["password"]
    assert cfg["counter_floor"] == 1
    keep = set(old_cfg) - set(writer.DEVICE_FIELDS) - {"secret", "password"}
    assert {k: cfg.get(k) for k in keep} == {k: old_cfg[k] for k in keep}
    # The gateway stored the BOOT under the new epoch.
    assert [r["key_epoch"] for r in rows(station, did, "BOOT")][-1] == 2
    # Audited with the station and the operator.
    audit = [a for a in reg.audit_log(target=rec.label)][::-1]
    tail = [(a["action"], a["actor"]) for a in audit[-3:]]
    assert tail == [
        ("rekey", "staff-test"),
        ("rotate-key", "staff-test"),
        ("rotate-done", "staff-test"),
    ]
    assert "station=station-1" in audit[-2]["detail"] and "epoch=1->2" in audit[-2]["detail"]
    # No secret (old or new) in what staff saw or in --json.
    out = "\n".join(lines) + json.dumps(res.as_dict())
    for secret in (old_cfg["secret"], cfg["secret"], old_cfg["password"], cfg["password"]):
        assert secret not in out
    assert any("Identificando" in ln for ln in lines)

    # The device's own next alert is signed with the new key and acked.
    mark = vd.mark()
    vd.hold()
    vd.wait_event(ev="state", name="acked", since=mark, timeout=ACK_S)
    new_alerts = rows(station, did)
    assert new_alerts and new_alerts[-1]["key_epoch"] == 2
    assert new_alerts[-1]["disposition"] == "received"

    # Frames under the old key, from a simulated device with the old secret (the real one is
    # off: the broker takes one session per login) and the device's current broker login.
    vd.power_cut()
    floor = (reg.require_device(did).previous_key.high_water or 0) + 1
    old = SimDevice(
        did,
        bytes.fromhex(old_cfg["secret"]),
        "127.0.0.1",
        station.chain.port,
        password=cfg["password"],
        counter=floor,
    )
    try:
        # Inside the grace: accepted and acked, stored under the old epoch.
        n = old.send("ALERT")
        ack = old.wait_ack(n, timeout=ACK_S)
        assert ack is not None and ack["disposition"] == "received"
        assert [r["key_epoch"] for r in rows(station, did) if r["counter"] == n] == [1]
        # Past the grace (the gateway's clock moved beyond valid_until): rejected, bad_tag.
        until = reg.require_device(did).previous_key.valid_until.timestamp()
        clock.offset = until - time.time() + 1.0
        before = bad_tags(station)
        late = old.send("ALERT")
        wait_for(lambda: bad_tags(station) > before, ACK_S, "the old-key frame's dead letter")
        assert old.acks.get(late) is None
        assert not [r for r in rows(station, did) if r["counter"] == late and r["key_epoch"] == 1]
    finally:
        old.close()


def test_refuses_unknown_revoked_and_blank(station: ProvisionStation, virtual_board) -> None:
    vd = station.blank_board(virtual_board)
    with pytest.raises(AuxilioError, match="no Auxilio config"):
        rotate_key(request(station, vd))
    first = provision(station.request(vd, "bracelet"))
    _cfg, raw = flash_config(vd)
    station.registry.set_state(first.device, "revoked", "staff-test")
    with pytest.raises(AuxilioError, match="is revoked"):
        rotate_key(request(station, vd))
    rec = station.registry.require_device(first.device)
    assert rec.key_epoch == 1 and flash_config(vd)[1] == raw  # nothing changed


@pytest.mark.parametrize("point", ["stage", "rekey", "configure", "broker", "reboot"])
def test_killed_between_steps_then_rerun(
    station: ProvisionStation, virtual_board, point: str
) -> None:
    vd = station.blank_board(virtual_board)
    first = provision(station.request(vd, "bracelet", case=CASE))
    did = station.registry.require_device(first.device).id
    proc = run_cli(station, vd, {DIE_ENV: point}, "--json")
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    rec = station.registry.require_device(did)
    cfg, _raw = flash_config(vd)
    if point == "stage":
        # Killed before the rekey: the registry and the board's config.json are untouched.
        assert rec.key_epoch == 1 == cfg["key_epoch"]
    else:
        # Killed after the rekey: the new key is on the board (staged or renamed already).
        assert rec.key_epoch == 2 and rec.previous_key is not None
        held = cfg if cfg["key_epoch"] == 2 else writer.read_device(vd.board.rfc2217_url).staged
        assert held["key_id"] == sealed_id(rec.sealed_secret)
    # No secret (old or new, staged or in place) in anything the killed run printed.
    held_now = [cfg["secret"], cfg["password"]]
    staged = writer.read_device(vd.board.rfc2217_url).staged
    assert staged is None or "secret" not in staged  # the board reports no secret back
    assert not [s for s in held_now if s in proc.stdout + proc.stderr]
    res = rotate_key(request(station, vd))
    new_cfg, _raw = flash_config(vd)
    assert new_cfg["secret"] not in proc.stdout + proc.stderr
    # The re-run finishes the job: one rotation (epoch 2), however far the killed one got.
    resumed = {"stage": None, "rekey": "finish"}.get(point, "resume")
    assert res.ok and res.key_epoch == 2 and res.resumed == resumed
    assert_holds_registry_key(station, vd)
    assert [r["key_epoch"] for r in rows(station, did, "BOOT")][-1] == 2
    # The old key's grace survives the interruption (the device may still have sent under it).
    assert station.registry.require_device(did).previous_key.epoch == 1


def test_cli_in_english_one_line_errors_and_json(station: ProvisionStation, virtual_board) -> None:
    vd = station.blank_board(virtual_board)
    en = {"AUXILIO_LANG": "en"}
    blank = run_cli(station, vd, en)
    assert blank.returncode != 0 and blank.stderr.startswith("error: ")
    assert len(blank.stderr.strip().splitlines()) == 1 and "Traceback" not in blank.stderr
    first = provision(station.request(vd, "bracelet"))
    old_cfg, _raw = flash_config(vd)
    proc = run_cli(station, vd, en, "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout)
    rec = station.registry.require_device(first.device)
    assert out["ok"] and out["device"] == rec.label and out["key_epoch"] == rec.key_epoch == 2
    cfg = assert_holds_registry_key(station, vd)
    assert out["config_sha256"] == hashlib.sha256(flash_config(vd)[1]).hexdigest()
    # Progress lines (stderr with --json) in English; no secret anywhere.
    assert "New key for" in proc.stderr and "Identificando" not in proc.stderr
    for secret in (old_cfg["secret"], cfg["secret"], old_cfg["password"], cfg["password"]):
        assert secret not in proc.stdout + proc.stderr
