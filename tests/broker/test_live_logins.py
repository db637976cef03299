"""Issue 11 §2/§5: lifecycle commands reach a running mosquitto at once, for both authorities.

Each test drives the real CLI (`auxilio devices … --broker-admin FILE`) against a real
mosquitto that was started before the change, and reads the result back on the
broker: a login accepted or refused, a session dropped, a message delivered or not.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from auxilio.testing.livebroker import LiveBroker, wait_dropped
from auxilio.testing.mosquitto import mosquitto_binary

pytestmark = pytest.mark.integration

# Issue 11 "It must show": the revoked device's broker login fails within 1 s.
REVOKE_BOUND_S = 1.0


@pytest.fixture(params=["dynsec", "files"])
def live(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[LiveBroker]:
    if mosquitto_binary() is None:
        pytest.skip("mosquitto is not installed")
    lb = LiveBroker(tmp_path, authority=request.param)
    try:
        yield lb
    finally:
        lb.close()


def test_device_added_after_start_logs_in_and_publishes_without_reload(live: LiveBroker) -> None:
    gw = live.gateway_session()
    assert gw.subscribe("auxilio/v1/+/up")
    dev = live.add_device()
    s = live.session(dev["username"], dev["password"])
    assert not s.refused, s.rc
    s.publish(live.topic(dev["device"], "up"), b"first-frame")
    assert gw.received_until(b"first-frame")[-1] == (
        live.topic(dev["device"], "up"),
        b"first-frame",
    )


def test_import_csv_enrols_and_revokes_at_the_broker_at_once(live: LiveBroker) -> None:
    old = live.creds[0]
    before = live.session(old["username"], old["password"])
    assert not before.refused
    csv = live.dir / "tray.csv"
    csv.write_text(
        "device,kind,board,state\n"
        "0938-NKRT,bracelet,bracelet-c3,spare\n"
        f"{old['device']},bracelet,bracelet-c3,revoked\n"
    )
    secrets = live.dir / "secrets"
    secrets.mkdir(mode=0o700)
    rc, out, err = live.cli(
        "devices",
        "import-csv",
        str(csv),
        "--secret-dir",
        str(secrets),
        "--keys-dir",
        str(live.keys_dir),
        "--json",
    )
    assert rc == 0, err
    assert json.loads(out)["added"] == 1 and json.loads(out)["state_changed"] == 1
    new = json.loads((secrets / "0938-NKRT.json").read_text())
    assert new["password"] not in out + err  # only the 0600 file holds it
    assert not live.session(new["username"], new["password"]).refused
    wait_dropped(before, timeout=REVOKE_BOUND_S)
    assert live.session(old["username"], old["password"]).refused


def test_new_device_is_confined_to_its_own_topics(live: LiveBroker) -> None:
    other = live.creds[0]
    dev = live.add_device()
    me, you = dev["device"], other["device"]
    gw = live.gateway_session()
    assert gw.subscribe("auxilio/v1/+/up") and gw.subscribe("auxilio/v1/+/status")
    s = live.session(dev["username"], dev["password"])
    victim = live.session(other["username"], other["password"])
    assert victim.subscribe(live.topic(you, "down"))
    # Not another's down, not a wildcard over everyone's, not anybody's up.
    granted = [s.subscribe(live.topic(you, "down")), s.subscribe("auxilio/v1/+/down")]
    granted.append(s.subscribe("auxilio/v1/+/up"))
    if live.files.authority == "dynsec":
        assert granted == [False, False, False]  # the plugin refuses them in the SUBACK
    assert s.subscribe(live.topic(me, "down"))
    s.publish(live.topic(you, "up"), b"forged-as-other")
    s.publish(live.topic(you, "status"), b"forged-status")
    s.publish(live.topic(you, "down"), b"forged-down")
    s.publish(live.topic(me, "up"), b"marker-me")
    seen = gw.received_until(b"marker-me")
    assert [t.split("/")[2] for t, _ in seen] == [me], seen
    # Downlinks: the gateway's for the other device reach only that device.
    gw.publish(live.topic(you, "down"), b"ack-for-other")
    gw.publish(live.topic(me, "down"), b"ack-for-me")
    assert all(p != b"ack-for-other" for _, p in s.received_until(b"ack-for-me"))
    got = victim.received_until(b"ack-for-other")
    assert b"forged-down" not in [p for _, p in got]


def test_revoke_refuses_the_login_and_drops_the_session_within_a_second(
    live: LiveBroker,
) -> None:
    dev = live.add_device()
    s = live.session(dev["username"], dev["password"])
    assert not s.refused
    r, returned_at = live.cli_process(
        "devices", "revoke", dev["device"], "--broker-admin", str(live.admin_file)
    )
    assert r.returncode == 0, r.stderr
    dropped_at = wait_dropped(s, timeout=REVOKE_BOUND_S)
    assert dropped_at - returned_at < REVOKE_BOUND_S
    assert live.registry.require_device(dev["device"]).state == "revoked"
    assert live.session(dev["username"], dev["password"]).refused


def test_rekey_refuses_the_old_password_and_accepts_the_new(live: LiveBroker) -> None:
    dev = live.add_device()
    old = live.session(dev["username"], dev["password"])
    assert not old.refused
    out = live.dir / "rekeyed.json"
    rc, _o, err = live.cli("devices", "rekey", dev["device"], "--secret-out", str(out))
    assert rc == 0, err
    new = json.loads(out.read_text())
    assert new["password"] != dev["password"]
    wait_dropped(old, timeout=REVOKE_BOUND_S)  # the old session goes with the old key
    assert live.session(dev["username"], dev["password"]).refused
    assert not live.session(new["username"], new["password"]).refused


def test_rekey_grace_keeps_the_old_key_sealed_but_not_the_old_password(
    live: LiveBroker,
) -> None:
    from auxilio import keys

    dev = live.creds[0]
    out = live.dir / "graced.json"
    before = time.time()
    rc, _o, err = live.cli(
        "devices", "rekey", dev["device"], "--grace", "45", "--secret-out", str(out)
    )
    assert rc == 0, err
    new = json.loads(out.read_text())
    rec = live.registry.require_device(dev["device"])
    old = rec.previous_key
    assert old is not None and (rec.key_epoch, old.epoch) == (2, 1)
    assert before + 45 <= old.valid_until.timestamp() <= time.time() + 45
    # The replaced secret is kept sealed to the gateway key like the current one.
    assert dev["secret"] not in old.sealed_secret.hex()
    assert keys.unseal(old.sealed_secret, live.key, rec.id).hex() == dev["secret"]
    assert keys.unseal(rec.sealed_secret, live.key, rec.id).hex() == new["secret"]
    # The broker is not part of the grace: the old password is refused at once.
    assert live.session(dev["username"], dev["password"]).refused
    assert not live.session(new["username"], new["password"]).refused
    audit = live.registry.audit_log(target=dev["device"], limit=1)
    assert audit and "grace=45s" in audit[0]["detail"]
    assert dev["secret"] not in json.dumps(audit, default=str)


def test_a_revoked_device_rekeyed_comes_back(live: LiveBroker) -> None:
    dev = live.creds[0]
    assert live.cli("devices", "revoke", dev["device"])[0] == 0
    assert live.session(dev["username"], dev["password"]).refused
    out = live.dir / "back.json"
    assert live.cli("devices", "rekey", dev["device"], "--secret-out", str(out))[0] == 0
    new = json.loads(out.read_text())
    assert live.registry.require_device(dev["device"]).state == "spare"
    assert not live.session(new["username"], new["password"]).refused


def test_retire_refuses_the_login(live: LiveBroker) -> None:
    dev = live.creds[0]
    s = live.session(dev["username"], dev["password"])
    assert live.cli("devices", "retire", dev["device"])[0] == 0
    wait_dropped(s, timeout=REVOKE_BOUND_S)
    assert live.session(dev["username"], dev["password"]).refused


def test_a_lost_device_still_connects_and_reports(live: LiveBroker) -> None:
    dev = live.creds[0]
    s = live.session(dev["username"], dev["password"])
    gw = live.gateway_session()
    assert gw.subscribe("auxilio/v1/+/up")
    rc, _o, err = live.cli("devices", "mark-lost", dev["device"])
    assert rc == 0, err
    assert live.registry.require_device(dev["device"]).state == "lost"
    assert s.dropped_at is None
    again = live.session(dev["username"], dev["password"])
    assert not again.refused
    again.publish(live.topic(dev["device"], "up"), b"alert-from-lost")
    assert gw.received_until(b"alert-from-lost")[-1][1] == b"alert-from-lost"


def test_without_a_broker_admin_the_registry_alone_changes(live: LiveBroker) -> None:
    """Today's behaviour stays: no --broker-admin and no $AUXILIO_BROKER_ADMIN, no broker call."""
    dev = live.creds[0]
    rc, _o, err = live.cli("devices", "revoke", dev["device"], admin=False)
    assert rc == 0 and err == ""
    assert live.registry.require_device(dev["device"]).state == "revoked"
    assert not live.session(dev["username"], dev["password"]).refused  # until a sync
    assert live.cli("broker", "sync", "--broker-admin", str(live.admin_file))[0] == 0
    assert live.session(dev["username"], dev["password"]).refused


def test_sync_repairs_logins_changed_behind_the_registrys_back(live: LiveBroker) -> None:
    a, b = live.creds[0], live.add_device()
    assert live.cli("devices", "revoke", b["device"])[0] == 0
    # Behind our back: A's login removed, revoked B's login restored.
    if live.files.authority == "dynsec":
        admin = live.admin()
        try:
            admin.run(
                [
                    {"command": "deleteClient", "username": a["device"]},
                    {"command": "enableClient", "username": b["device"]},
                    {"command": "setClientPassword", "username": b["device"], "password": "x"},
                ]
            )
        finally:
            admin.close()
        b_password = "x"
    else:
        from auxilio.broker.fileauth import PasswordFile, reload_broker

        pw = PasswordFile(live.files.passwd)
        users = pw.read()
        del users[a["device"]]
        users[b["device"]] = live.registry.get_device(a["device"]).mqtt_password_hash
        pw.write(users)
        reload_broker(live.files.directory / "data" / "mosquitto.pid")
        b_password = a["password"]
    assert live.session(a["username"], a["password"]).refused
    assert not live.session(b["username"], b_password).refused
    rc, out, err = live.cli("broker", "sync", "--broker-admin", str(live.admin_file), "--json")
    assert rc == 0, err
    report = json.loads(out)
    assert a["device"] in report["added"] + report["updated"]
    assert report["removed"] == [b["device"]] and report["pending"] == []
    assert not live.session(a["username"], a["password"]).refused
    assert live.session(b["username"], b_password).refused
    # Idempotent: a second pass finds nothing to do.
    again = json.loads(
        live.cli("broker", "sync", "--broker-admin", str(live.admin_file), "--json")[1]
    )
    assert again["added"] == again["updated"] == again["removed"] == []


def test_embedded_broker_follows_the_registry_live(tmp_path: Path) -> None:
    """The amqtt demo broker reads device logins from the registry itself: nothing to push."""
    pytest.importorskip("amqtt")
    from auxilio import keys
    from auxilio.broker.config import write_config
    from auxilio.broker.embedded import EmbeddedBroker
    from auxilio.registry import open_registry
    from auxilio.registry.enrol import enrol_device
    from auxilio.testing.livebroker import Session
    from auxilio.testing.mosquitto import free_port
    from auxilio.testing.wait import wait_for

    registry = open_registry(tmp_path / "reg.db")
    _priv, pub_file = keys.init_keys(tmp_path / "keys")
    pub = keys.load_public_key(pub_file)

    def enrol(name: str) -> dict:
        out = tmp_path / f"{name}.json"
        enrol_device(registry, pub, "bracelet", "bracelet-c3", actor="test", secret_out=out)
        return json.loads(out.read_text())

    a = enrol("a")
    files = write_config(tmp_path / "cfg", registry, port=free_port())
    gateway = json.loads(files.gateway.read_text())
    broker = EmbeddedBroker(config_dir=files.directory, registry=tmp_path / "reg.db").start()
    sessions: list[Session] = []

    def login(c: dict) -> Session:
        sessions.append(Session(broker.port, c["username"], c["password"]))
        return sessions[-1]

    try:
        b = enrol("b")  # after the broker started, and in no file it read
        gw = Session(broker.port, gateway["username"], gateway["password"])
        sessions.append(gw)
        assert gw.subscribe("auxilio/v1/+/up")
        sa, sb = login(a), login(b)
        assert not sb.refused
        up = f"auxilio/v1/{b['device']}/up"
        sb.publish(up, b"from-b")
        assert gw.received_until(b"from-b")[-1] == (up, b"from-b")
        registry.set_state(b["device"], "revoked", "test")
        n = iter(range(10**6))

        def b_silenced() -> bool:
            i = next(n)
            sb.publish(up, b"probe-%d" % i)
            sa.publish(f"auxilio/v1/{a['device']}/up", b"mark-%d" % i)
            return b"probe-%d" % i not in [p for _, p in gw.received_until(b"mark-%d" % i)]

        wait_for(b_silenced, timeout=REVOKE_BOUND_S, what="the revoked session silenced")
        assert login(b).refused
        assert not login(a).refused
    finally:
        for s in sessions:
            s.close()
        broker.stop()
        registry.close()
