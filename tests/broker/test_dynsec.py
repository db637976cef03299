"""mosquitto 2's dynamic-security plugin as the broker authority: restarts, outages, drift, bad input.

Against the real mosquitto 2.0.11 with the Debian plugin, started by each test on a
free loopback port; every claim is read back from the broker (a login accepted or
refused, the plugin's own client list) and from the registry.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from auxilio.broker import dynsec
from auxilio.broker.acl import Acl
from auxilio.broker.authority import device_rules
from auxilio.broker.config import render_acl
from auxilio.broker.passwords import hash_password, verify_password
from auxilio.testing.livebroker import LiveBroker, wait_dropped
from auxilio.testing.mosquitto import free_port, mosquitto_binary

pytestmark = pytest.mark.integration


@pytest.fixture
def live(tmp_path: Path) -> Iterator[LiveBroker]:
    if mosquitto_binary() is None:
        pytest.skip("mosquitto is not installed")
    try:
        dynsec.plugin_path()
    except Exception:  # noqa: BLE001 - UsageError: no plugin on this machine
        pytest.skip("mosquitto's dynamic-security plugin is not installed")
    lb = LiveBroker(tmp_path, authority="dynsec", devices=[("bracelet", "bracelet-c3")] * 2)
    try:
        yield lb
    finally:
        lb.close()


def _clients(lb: LiveBroker) -> dict[str, dict]:
    admin = lb.admin()
    try:
        answer = admin.run([{"command": "listClients", "verbose": True, "count": -1}])[0]
    finally:
        admin.close()
    return {c["username"]: c for c in answer["data"]["clients"]}


def _one_line(err: str, prefix: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith(prefix), err
    assert "Traceback" not in err
    return lines[0]


# ------------------------------------------------------------ the file ---


def test_the_plugin_file_holds_the_registry_hashes_not_passwords(live: LiveBroker) -> None:
    state = json.loads((live.files.directory / "data" / dynsec.DYNSEC_FILE).read_text())
    by_name = {c["username"]: c for c in state["clients"]}
    dev = live.creds[0]
    stored = live.registry.require_device(dev["device"]).mqtt_password_hash
    assert by_name[dev["device"]] | dynsec.plugin_password(stored) == by_name[dev["device"]]
    assert dev["password"] not in json.dumps(state)
    assert state["defaultACLAccess"] == dict.fromkeys(
        ["publishClientSend", "publishClientReceive", "subscribe", "unsubscribe"], False
    )
    # ... and mosquitto accepts those hashes: the device logs in with its password.
    assert not live.session(dev["username"], dev["password"]).refused
    assert live.session(dev["username"], dev["password"] + "x").refused


def test_hash_conversion_matches_mosquitto_passwd_layout() -> None:
    encoded = hash_password("pw", salt=bytes(range(12)))
    fields = dynsec.plugin_password(encoded)
    assert fields["iterations"] == 101 and fields["salt"] == "AAECAwQFBgcICQoL"
    assert verify_password("pw", encoded)
    with pytest.raises(Exception, match="12-byte-salt"):
        dynsec.plugin_password(hash_password("pw", salt=bytes(8)))


def test_device_role_grants_exactly_what_the_pattern_acl_grants() -> None:
    """One rule book: the dynsec role and the files authority's %u pattern ACL agree."""
    label = "0938-NKRT"
    acl = Acl.parse(render_acl("city"))
    acls = dynsec.role_acls(device_rules("city", label))
    sends = {a["topic"] for a in acls if a["acltype"] == "publishClientSend"}
    reads = {a["topic"] for a in acls if a["acltype"] == "publishClientReceive"}
    for leaf in ("up", "status", "down"):
        topic = f"city/v1/{label}/{leaf}"
        assert acl.may_publish(label, label, topic) == (topic in sends)
        assert acl.may_receive(label, label, topic) == (topic in reads)
    assert {a["acltype"] for a in acls if a["topic"].endswith("/down")} == {
        "subscribeLiteral",
        "unsubscribeLiteral",
        "publishClientReceive",
    }


def test_console_roles_grant_exactly_what_the_file_acl_grants() -> None:
    """Attend and self-test topics: the dynsec gateway and operator roles and the ACL file agree."""
    from auxilio.broker.authority import gateway_rules, operator_rules

    acl = Acl.parse(render_acl("city"))
    topics = [f"city/c4/{leaf}" for leaf in ("attend", "selftest")]
    topics += [f"city/c4/{leaf}/result/st-1" for leaf in ("attend", "selftest")]
    for user, rules in (("gateway", gateway_rules("city")), ("operator", operator_rules("city"))):
        acls = dynsec.role_acls(rules)
        sends = {a["topic"] for a in acls if a["acltype"] == "publishClientSend"}
        reads = {a["topic"] for a in acls if a["acltype"] == "publishClientReceive"}
        for topic in topics:
            pattern = topic.replace("/st-1", "/+")
            assert acl.may_publish(user, user, topic) == (pattern in sends), (user, topic)
            assert acl.may_receive(user, user, topic) == (pattern in reads), (user, topic)
        assert any("selftest" in t for t in sends | reads), user


# --------------------------------------------------- live behaviour ---


def test_a_device_cannot_use_the_admin_topic(live: LiveBroker) -> None:
    dev = live.creds[0]
    s = live.session(dev["username"], dev["password"])
    evil = {"commands": [{"command": "createClient", "username": "intruder", "password": "x"}]}
    s.publish(dynsec.CONTROL_TOPIC, json.dumps(evil).encode())
    assert not s.subscribe(dynsec.RESPONSE_TOPIC)
    assert "intruder" not in _clients(live)
    assert live.session("intruder", "x").refused


def test_broker_restart_keeps_live_changes(live: LiveBroker) -> None:
    added = live.add_device()
    gone = live.creds[1]
    assert live.cli("devices", "revoke", gone["device"])[0] == 0
    live.broker.kill()  # not even a clean shutdown: the plugin saved after each command
    live.broker.start()
    assert not live.session(added["username"], added["password"]).refused
    assert live.session(gone["username"], gone["password"]).refused


def test_broker_down_during_revoke_warns_then_sync_applies_it(live: LiveBroker) -> None:
    dev = live.creds[0]
    live.broker.stop()
    rc, out, err = live.cli("devices", "revoke", dev["device"])
    assert rc == 4  # ConnectionFailed: the registry change stands, the broker lags
    line = _one_line(err, "warning: the registry change stands")
    assert "auxilio broker sync" in line and "127.0.0.1" in line
    assert dev["device"] in out
    assert live.registry.require_device(dev["device"]).state == "revoked"
    live.broker.start()
    assert not live.session(dev["username"], dev["password"]).refused  # still stale
    rc, out, err = live.cli("broker", "sync", "--broker-admin", str(live.admin_file))
    assert rc == 0, err
    assert live.session(dev["username"], dev["password"]).refused


def test_broker_down_during_rekey_sync_installs_the_stored_hash(live: LiveBroker) -> None:
    """Only the hash is left after the command: sync restores it through the password file."""
    dev = live.creds[0]
    live.broker.stop()
    out = live.dir / "rekeyed.json"
    rc, _o, err = live.cli("devices", "rekey", dev["device"], "--secret-out", str(out))
    assert rc == 4, err
    new = json.loads(out.read_text())
    live.broker.start()
    assert not live.session(dev["username"], dev["password"]).refused  # the broker lags
    assert live.cli("broker", "sync", "--broker-admin", str(live.admin_file))[0] == 0
    assert live.session(dev["username"], dev["password"]).refused
    s = live.session(new["username"], new["password"])
    assert not s.refused
    # Still its own topics only: the plugin's role decides, not the password file.
    assert not s.subscribe(live.topic(live.creds[1]["device"], "down"))
    assert s.subscribe(live.topic(dev["device"], "down"))
    assert _clients(live)[dev["device"]]["textdescription"].endswith("via=passwd")


def test_sync_restores_a_widened_role(live: LiveBroker) -> None:
    dev, other = live.creds
    admin = live.admin()
    try:
        admin.run(
            [
                {
                    "command": "addRoleACL",
                    "rolename": dynsec.role_name(dev["device"]),
                    "acltype": "subscribePattern",
                    "topic": "#",
                    "priority": 0,
                    "allow": True,
                }
            ]
        )
    finally:
        admin.close()
    s = live.session(dev["username"], dev["password"])
    assert s.subscribe(live.topic(other["device"], "down"))  # the widening works...
    s.close()
    rc, out, _e = live.cli("broker", "sync", "--broker-admin", str(live.admin_file), "--json")
    assert rc == 0 and json.loads(out)["updated"] == [dev["device"]]
    s = live.session(dev["username"], dev["password"])
    assert not s.subscribe(live.topic(other["device"], "down"))  # ...and is gone
    assert s.subscribe(live.topic(dev["device"], "down"))


def test_sync_from_another_host_reports_what_it_cannot_restore(live: LiveBroker) -> None:
    """Without the broker's directory the plugin cannot take a hash: pending, exit 1,
    and a stale password is disabled rather than left working."""
    dev = live.creds[0]
    remote = json.loads(live.admin_file.read_text())
    remote.pop("directory")
    remote_file = live.dir / "remote-admin.json"
    remote_file.write_text(json.dumps(remote))
    live.broker.stop()
    out = live.dir / "rekeyed.json"
    assert live.cli("devices", "rekey", dev["device"], "--secret-out", str(out))[0] == 4
    live.broker.start()
    rc, _o, err = live.cli("broker", "sync", "--broker-admin", str(remote_file))
    assert rc == 1
    assert dev["device"] in _one_line(err, "error:")
    assert live.session(dev["username"], dev["password"]).refused  # the old key: refused
    assert live.cli("broker", "sync", "--broker-admin", str(live.admin_file))[0] == 0
    assert not live.session(dev["username"], json.loads(out.read_text())["password"]).refused


def test_a_second_admin_session_does_not_break_the_first(live: LiveBroker) -> None:
    """use_username_as_clientid makes a second admin login take the first one's session:
    a batch interrupted that way is sent again and still converges."""
    first = live.admin()
    try:
        live.admin().close()  # takes over the client id, then leaves
        answer = first.run([{"command": "listClients", "verbose": False, "count": -1}])
        assert live.creds[0]["device"] in answer[0]["data"]["clients"]
    finally:
        first.close()


# ------------------------------------------------------------ bad input ---


def test_wrong_admin_password(live: LiveBroker) -> None:
    bad = json.loads(live.admin_file.read_text()) | {"password": "not-the-password"}
    path = live.dir / "bad-admin.json"
    path.write_text(json.dumps(bad))
    r, _t = live.cli_process("broker", "sync", "--broker-admin", str(path))
    assert r.returncode == 5
    assert "refused the broker admin login" in _one_line(r.stderr, "error:")
    assert "not-the-password" not in r.stderr + r.stdout
    # A lifecycle command still changes the registry, and says the broker lags.
    dev = live.creds[0]
    rc, _o, err = live.cli("devices", "revoke", dev["device"], "--broker-admin", str(path))
    assert rc == 5 and live.registry.require_device(dev["device"]).state == "revoked"
    _one_line(err, "warning:")


@pytest.mark.parametrize(
    "problem", ["missing", "directory", "not-json", "no-authority", "remote-in-clear"]
)
def test_bad_admin_file_changes_nothing(live: LiveBroker, problem: str) -> None:
    path = live.dir / "admin-problem.json"
    if problem == "directory":
        path.mkdir()
    elif problem == "not-json":
        path.write_text("{not json")
    elif problem == "no-authority":
        path.write_text(json.dumps({"url": "mqtt://127.0.0.1:1"}))
    elif problem == "remote-in-clear":
        admin = json.loads(live.admin_file.read_text())
        path.write_text(json.dumps({**admin, "url": "mqtt://192.0.2.7:1883"}))
    dev = live.creds[0]
    r, _t = live.cli_process("devices", "revoke", dev["device"], "--broker-admin", str(path))
    assert r.returncode == 2
    assert str(path) in _one_line(r.stderr, "error: broker admin file")
    assert live.registry.require_device(dev["device"]).state == "spare"  # nothing changed
    r, _t = live.cli_process("broker", "sync", "--broker-admin", str(path))
    assert r.returncode == 2
    _one_line(r.stderr, "error:")


def test_a_broker_url_that_does_not_answer(live: LiveBroker) -> None:
    port = free_port()
    with socket.socket() as probe:  # nothing listens there
        assert probe.connect_ex(("127.0.0.1", port)) != 0
    dead = json.loads(live.admin_file.read_text()) | {"url": f"mqtt://127.0.0.1:{port}"}
    path = live.dir / "dead-admin.json"
    path.write_text(json.dumps(dead))
    r, _t = live.cli_process("broker", "sync", "--broker-admin", str(path))
    assert r.returncode == 4
    assert f"127.0.0.1:{port} does not answer" in _one_line(r.stderr, "error:")


def test_revoke_drop_is_immediate_for_a_live_session(live: LiveBroker) -> None:
    """Library level, no process start: the kick lands before the call returns."""
    import time

    from auxilio.broker.authority import AdminConfig, apply_device, open_authority

    dev = live.creds[0]
    s = live.session(dev["username"], dev["password"])
    live.registry.set_state(dev["device"], "revoked", "test")
    authority = open_authority(AdminConfig.load(live.admin_file))
    try:
        apply_device(authority, live.registry, dev["device"])
        returned = time.perf_counter()
    finally:
        authority.close()
    assert wait_dropped(s, timeout=1.0) <= returned + 1.0
