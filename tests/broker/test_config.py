"""Broker files: mosquitto.conf settings, password file, ACL, gateway credentials, TLS listener, CLI."""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from auxilio.broker.config import render_acl, write_config
from auxilio.broker.passwords import hash_password, verify_password
from auxilio.errors import UsageError
from auxilio.testing.mosquitto import free_port, mosquitto_binary, wait_port
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.broker.conftest import Client, make_fleet, start_broker

needs_mosquitto = pytest.mark.skipif(
    mosquitto_binary() is None, reason="mosquitto is not installed"
)


def test_password_hash_matches_mosquitto_passwd(tmp_path: Path) -> None:
    h = hash_password("s3cret")
    assert h.startswith("$7$101$") and verify_password("s3cret", h) and not verify_password("x", h)
    tool = "/usr/bin/mosquitto_passwd"
    if not os.path.exists(tool):
        pytest.skip("mosquitto_passwd not installed")
    f = tmp_path / "pw"
    subprocess.run([tool, "-c", "-b", str(f), "u", "s3cret"], check=True, capture_output=True)
    theirs = f.read_text().strip().split(":", 1)[1]
    assert verify_password("s3cret", theirs) and not verify_password("s3cret!", theirs)


def test_files_and_modes(tmp_path: Path) -> None:
    fleet = make_fleet(
        tmp_path, [("A", "bracelet"), ("B", "button"), ("L", "bracelet"), ("R", "button")]
    )
    reg = fleet.registry
    reg.set_state(fleet.creds["L"]["device"], "lost", "t")
    reg.set_state(fleet.creds["R"]["device"], "retired", "t")
    files = write_config(tmp_path / "b", reg, port=18830, prefix="city")
    conf = files.conf.read_text().splitlines()
    for line in (
        "set_tcp_nodelay true",
        "allow_anonymous false",
        "per_listener_settings false",
        f"password_file {files.passwd}",
        f"acl_file {files.acl}",
        "listener 18830 127.0.0.1",
    ):
        assert line in conf
    assert not any(ln.startswith("certfile") for ln in conf)
    assert stat.S_IMODE(files.passwd.stat().st_mode) == 0o600
    assert stat.S_IMODE(files.gateway.stat().st_mode) == 0o600
    assert stat.S_IMODE(files.operator.stat().st_mode) == 0o600
    users = dict(ln.split(":", 1) for ln in files.passwd.read_text().splitlines())
    want = {fleet.creds[n]["device"] for n in ("A", "B", "L")} | {"gateway", "operator"}
    assert set(users) == want  # lost may connect (flagged); retired may not
    for n in ("A", "B", "L"):
        c = fleet.creds[n]
        assert verify_password(c["password"], users[c["username"]])
        assert c["password"] not in files.passwd.read_text()
    gw = json.loads(files.gateway.read_text())
    assert verify_password(gw["password"], users["gateway"])
    assert files.acl.read_text() == render_acl("city", "gateway")
    assert "pattern read city/v1/%u/down" in files.acl.read_text()
    # Regenerating keeps the gateway's password (a running gateway stays connected).
    reg.set_state(fleet.creds["B"]["device"], "revoked", "t")
    files2 = write_config(tmp_path / "b", reg, port=18830, prefix="city")
    assert json.loads(files2.gateway.read_text())["password"] == gw["password"]
    assert fleet.creds["B"]["device"] not in files2.passwd.read_text()
    reg.close()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"prefix": "a/#"},
        {"prefix": ""},
        {"gateway_user": "gw user"},
        {"port": 0},
        {"tls_cert": "cert.pem"},
        {"tls_cert": "/nonexistent.pem", "tls_key": "/nonexistent.key"},
    ],
)
def test_bad_config_arguments(tmp_path: Path, kwargs: dict) -> None:
    fleet = make_fleet(tmp_path, [])
    with pytest.raises(UsageError):
        write_config(tmp_path / "b", fleet.registry, **kwargs)
    fleet.registry.close()


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "server.pem", tmp_path / "server.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


@needs_mosquitto
@pytest.mark.integration
def test_tls_listener(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    tls_port = free_port()
    fleet = make_fleet(tmp_path, [("A", "bracelet")])
    start_broker(fleet, tmp_path, tls_cert=cert, tls_key=key, tls_port=tls_port)
    try:
        wait_port("127.0.0.1", tls_port, 10)
        a = fleet.creds["A"]
        gw = Client(fleet.broker.port, fleet.gateway["username"], fleet.gateway["password"])
        gw.subscribe("auxilio/v1/+/up")
        dev = Client(0, a["username"], a["password"], tls_ca=cert, tls_port=tls_port)
        assert dev.ok
        dev.publish(f"auxilio/v1/{a['device']}/up", b"over-tls")
        assert gw.wait_for(b"over-tls")[-1][1] == b"over-tls"
        # Same ACL on the TLS listener (per_listener_settings false).
        assert not Client(0, a["username"], "wrong", tls_ca=cert, tls_port=tls_port).ok
        dev.close()
        gw.close()
    finally:
        fleet.broker.close()
        fleet.registry.close()


def _cli(*args: str, env: dict | None = None, **kw) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "auxilio.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
        **kw,
    )


@needs_mosquitto
@pytest.mark.integration
def test_cli_config_then_real_mosquitto(tmp_path: Path) -> None:
    fleet = make_fleet(tmp_path, [("A", "bracelet")])
    fleet.registry.close()
    port = free_port()
    args = [
        "broker",
        "config",
        "--out",
        str(tmp_path / "out"),
        "--registry",
        str(tmp_path / "reg.db"),
        "--port",
        str(port),
        "--json",
    ]
    if os.geteuid() == 0:
        args += ["--run-as", "root"]
    r = _cli(*args)
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["devices"] == 1
    gw = json.loads((tmp_path / "out" / "gateway.json").read_text())
    assert gw["password"] not in r.stdout + r.stderr
    assert fleet.creds["A"]["password"] not in r.stdout + r.stderr
    # `broker run` starts mosquitto with that config; SIGTERM stops it cleanly.
    proc = subprocess.Popen(
        [sys.executable, "-m", "auxilio.cli", "broker", "run", "--dir", str(tmp_path / "out")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_port("127.0.0.1", port, 20)
        a = fleet.creds["A"]
        dev = Client(port, a["username"], a["password"])
        assert dev.ok
        dev.close()
        assert not Client(port, a["username"], "nope").ok
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    r = _cli(
        "broker",
        "config",
        "--out",
        str(tmp_path / "o2"),
        "--registry",
        str(tmp_path / "reg.db"),
        "--tls-cert",
        "x.pem",
    )
    assert r.returncode == 2 and r.stderr.startswith("error:") and len(r.stderr.splitlines()) == 1


@needs_mosquitto
@pytest.mark.integration
def test_generated_config_survives_mosquitto_restart(tmp_path: Path) -> None:
    fleet = make_fleet(tmp_path, [("A", "bracelet")])
    start_broker(fleet, tmp_path)
    try:
        fleet.broker.stop()
        fleet.broker.start()
        a = fleet.creds["A"]
        c = Client(fleet.broker.port, a["username"], a["password"])
        assert c.ok
        c.close()
    finally:
        fleet.broker.close()
        fleet.registry.close()


def test_embedded_broker_pub_sub() -> None:
    pytest.importorskip("amqtt")
    from auxilio.broker.embedded import EmbeddedBroker

    with EmbeddedBroker() as broker:
        sub = Client(broker.port, "sub", None)
        assert sub.ok
        sub.subscribe("auxilio/v1/+/up")
        pub = Client(broker.port, "pub", None)
        pub.publish("auxilio/v1/0938-NKRT/up", b"hello")
        assert sub.wait_for(b"hello")[-1] == ("auxilio/v1/0938-NKRT/up", b"hello")
        pub.close()
        sub.close()


def test_broker_run_embedded_prints_the_production_note(tmp_path: Path) -> None:
    pytest.importorskip("amqtt")
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "auxilio.cli", "broker", "run", "--embedded", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,  # no var/broker here: an open demo broker
    )
    try:
        wait_port("127.0.0.1", port, 30)
        c = Client(port, "x", None)
        assert c.ok
        c.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    err = proc.stderr.read()
    assert "mosquitto" in err and "producción" in err.lower() and "Traceback" not in err
    assert proc.returncode == 0


def test_broker_run_embedded_enforces_generated_config(tmp_path: Path) -> None:
    pytest.importorskip("amqtt")
    fleet = make_fleet(tmp_path, [("A", "bracelet")])
    port = free_port()
    write_config(tmp_path / "cfg", fleet.registry, port=port)
    fleet.registry.close()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "auxilio.cli",
            "broker",
            "run",
            "--embedded",
            "--dir",
            str(tmp_path / "cfg"),
            "--port",
            str(port),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_port("127.0.0.1", port, 30)
        a = fleet.creds["A"]
        good = Client(port, a["username"], a["password"])
        assert good.ok
        good.close()
        assert not Client(port, a["username"], "wrong").ok
        assert not Client(port, None, None).ok
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    err = proc.stderr.read()
    assert "users and ACL from" in err and "Traceback" not in err
