"""The firmware MQTT session (firmware/mqtt.py + session.py) under real micropython against real mosquitto."""

from __future__ import annotations

import datetime
import ipaddress
import json
import signal
import socket
import struct
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from auxilio.testing.mosquitto import free_port, mosquitto_binary
from auxilio.testing.peer import C4Peer
from auxilio.testing.wait import wait_for

from tests.conftest import FIRMWARE, run_micropython
from tests.firmware.fwkit import broker
from tests.firmware.mqtt_harness import MpDevice, build_mpy

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(mosquitto_binary() is None, reason="mosquitto is not installed"),
]

DEV = "0938-NKRT"
UP = f"auxilio/v1/{DEV}/up"
DOWN = f"auxilio/v1/{DEV}/down"
STATUS = f"auxilio/v1/{DEV}/status"
PASSWORD = "pw-Zq81-never-logged"


def unread_by_broker(b) -> int:  # noqa: ANN001
    """Bytes that reached the broker's sockets but that it has not read (Linux /proc/net/tcp).

    With the broker frozen (SIGSTOP) this grows exactly when the device writes: the wait
    for "the PUBLISH is on the wire" is a condition, not a sleep.
    """
    port = f"0100007F:{b.port:04X}"  # 127.0.0.1, the broker's end of each connection
    total = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        f = line.split()
        if f[1] == port and f[3] == "01":  # 01: ESTABLISHED
            total += int(f[4].split(":")[1], 16)  # tx_queue:rx_queue
    return total


def wait_written(b, before: int, what: str) -> None:  # noqa: ANN001
    wait_for(lambda: unread_by_broker(b) > before, 10, f"{what} written to the frozen broker")


def msg_line(topic: str, payload: bytes) -> str:
    """The runner's line for a received downlink."""
    return f"MSG {topic} {payload.hex()}"


def dev_cfg(b, **kw) -> dict:  # noqa: ANN001
    cfg = {
        "client_id": DEV,
        "host": b.host,
        "port": b.port,
        "user": DEV,
        "password": PASSWORD,
        "keepalive": 60,
        "will_topic": STATUS,
        "online_topic": STATUS,
        "subs": [DOWN],
        "backoff_min_ms": 200,
        "backoff_max_ms": 1000,
    }
    cfg.update(kw)
    return cfg


@pytest.fixture
def bk():
    b = broker("log_type debug\n")
    try:
        yield b
    finally:
        b.close()


@pytest.fixture
def devices() -> Iterator[list[MpDevice]]:
    """Collects started devices so every test stops its micropython processes."""
    started: list[MpDevice] = []
    yield started
    for d in started:
        d.close()
    for d in started:  # no secret ever reaches a log line (common rules)
        assert PASSWORD not in "\n".join(d.snapshot())


@pytest.fixture
def observers() -> Iterator[list[C4Peer]]:
    started: list[C4Peer] = []
    yield started
    for o in started:
        o.close()


def test_publish_qos1_reaches_subscriber(bk, devices, observers) -> None:
    obs = C4Peer(bk, topics=[UP, STATUS])
    observers.append(obs)
    dev = MpDevice(dev_cfg(bk))
    devices.append(dev)
    dev.wait_state(True)
    dev.publish("a", UP, b"\x01\x02alert")
    assert dev.wait_pub("a")
    assert obs.wait_message(UP, b"\x01\x02alert").qos == 1
    # The broker saw clean session off, the credentials and the retained QoS1 LWT.
    log = bk.log_path.read_text()
    assert "New client connected from 127.0.0.1" in log
    assert f"as {DEV} (p2, c0, k60, u'{DEV}')" in log
    assert "Will message specified (7 bytes) (r1, q1)." in log


def test_mpy_build_under_64k_heap(bk, devices, observers, tmp_path: Path) -> None:
    """The `.mpy` build runs the same session under -X heapsize=64K; reports its heap use."""
    obs = C4Peer(bk, topics=[UP])
    observers.append(obs)
    dev = MpDevice(dev_cfg(bk), heapsize="64K", path=build_mpy(tmp_path / "mpy"))
    devices.append(dev)
    dev.wait_state(True)
    for i in range(20):  # one at a time, as the outbox does (at most 6 unacked at once)
        dev.publish(f"m{i}", UP, bytes([i]) * 64)
        assert dev.wait_pub(f"m{i}")
    obs.wait_message(UP, bytes([19]) * 64)
    assert 0 < dev.mem() < 48 * 1024
    assert dev.alive()


def test_subscribe_and_receive_downlink(bk, devices, observers) -> None:
    dev = MpDevice(dev_cfg(bk, raise_in_callback=True))
    devices.append(dev)
    dev.wait_state(True)
    obs = C4Peer(bk, topics=[])
    observers.append(obs)
    obs.publish(DOWN, b"\x81ack-one")
    dev.wait_line(lambda s: s == msg_line(DOWN, b"\x81ack-one"))
    # The callback raised: one log line, the connection survives and keeps delivering.
    wait_for(lambda: any("on_message failed" in m for m in dev.logs()), 10, "callback log")
    obs.publish(DOWN, b"\x82second")
    dev.wait_line(lambda s: s == msg_line(DOWN, b"\x82second"))
    st = dev.stat()
    assert st["connects"] == 1 and st["connected"]
    # QoS 1 downlinks were PUBACKed by the device (mosquitto logs the PUBACK it received).
    wait_for(lambda: f"Received PUBACK from {DEV}" in bk.log_path.read_text(), 10, "PUBACK")


def test_lwt_offline_on_sigkill_and_online_when_connected(bk, devices, observers) -> None:
    dev = MpDevice(dev_cfg(bk))
    devices.append(dev)
    dev.wait_state(True)
    obs = C4Peer(bk, topics=[STATUS])  # subscribes after the fact: sees the retained value
    observers.append(obs)
    m = obs.wait_message(STATUS, b"online")
    assert m.retain
    dev.kill()
    m = obs.wait_message(STATUS, b"offline")
    late = C4Peer(bk, topics=[STATUS])  # a newcomer gets the retained offline
    observers.append(late)
    assert late.wait_message(STATUS, b"offline").retain


def test_persistent_session_delivers_downlink_sent_while_offline(bk, devices, observers) -> None:
    first = MpDevice(dev_cfg(bk))
    devices.append(first)
    first.wait_state(True)
    first.kill()
    obs = C4Peer(bk, topics=[])
    observers.append(obs)
    obs.publish(DOWN, b"\x81while-away")
    again = MpDevice(dev_cfg(bk))
    devices.append(again)
    again.wait_line(lambda s: s == msg_line(DOWN, b"\x81while-away"))


def test_broker_killed_mid_publish_redelivers_with_dup(bk, devices, observers) -> None:
    obs = C4Peer(bk, topics=[UP], client_id="c4-observer", clean=False)
    observers.append(obs)
    dev = MpDevice(dev_cfg(bk))
    devices.append(dev)
    dev.wait_state(True)
    assert bk.proc is not None
    bk.proc.send_signal(signal.SIGSTOP)  # the broker freezes: the PUBLISH is written, never acked
    try:
        mark = len(dev.snapshot())
        before = unread_by_broker(bk)
        dev.publish("mid", UP, b"\x01mid-publish", timeout_ms=60000)
        wait_written(bk, before, "the PUBLISH")
    finally:
        bk.kill()  # SIGKILL works on a stopped process: the broker vanishes mid-publish
    dev.wait_state(False, start=mark)
    # Hold the device off the restarted broker until the observer has resubscribed, so the
    # retransmission has a subscriber (mosquitto's own persistence is not what is tested here).
    dev.send("link 0")
    obs.subscribed.clear()
    bk.start()
    assert obs.subscribed.wait(20)
    dev.send("link 1")
    assert dev.wait_pub("mid", timeout=60)  # the same publish() call succeeds after reconnect
    obs.wait_message(UP, b"\x01mid-publish", timeout=30)
    log = bk.log_path.read_text()
    assert f"Received PUBLISH from {DEV} (d1, q1, r0, m" in log  # the DUP retransmission
    assert dev.stat()["reconnects"] >= 1
    assert any("connection lost" in m for m in dev.logs())


def test_caller_retry_after_timeout_reuses_packet_id_with_dup(bk, devices) -> None:
    dev = MpDevice(dev_cfg(bk))
    devices.append(dev)
    dev.wait_state(True)
    assert bk.proc is not None
    bk.proc.send_signal(signal.SIGSTOP)  # written but never acked: publish() times out
    try:
        dev.publish("first", UP, b"\x01retry-me", timeout_ms=1000)
        assert not dev.wait_pub("first")
        before = unread_by_broker(bk)
        dev.publish("again", UP, b"\x01retry-me", timeout_ms=30000)  # the caller retries
        wait_written(bk, before, "the retried PUBLISH")
    finally:
        bk.proc.send_signal(signal.SIGCONT)
    assert dev.wait_pub("again")

    def received() -> list[str]:
        return [
            line
            for line in bk.log_path.read_text().splitlines()
            if f"Received PUBLISH from {DEV}" in line and "/up'" in line
        ]

    lines = wait_for(lambda: len(received()) >= 2 and received(), 10, "both copies")
    assert "(d0, q1" in lines[0] and "(d1, q1" in lines[1]
    mid = lines[0].split(", m")[1].split(",")[0]
    assert f", m{mid}," in lines[1]  # same packet id: the broker sees one message, twice


def test_link_down_fails_fast_and_reconnects(bk, devices) -> None:
    dev = MpDevice(dev_cfg(bk))
    devices.append(dev)
    dev.wait_state(True)
    mark = len(dev.snapshot())
    dev.send("link 0")
    dev.wait_state(False, start=mark)
    dev.publish("down", UP, b"x", timeout_ms=30000)
    assert not dev.wait_pub("down", timeout=5)  # False right away, not after 30 s
    dev.send("link 1")
    dev.wait_state(True, start=mark)
    dev.publish("up", UP, b"y")
    assert dev.wait_pub("up")
    # A publish waiting for its PUBACK when the link drops returns False at once.
    assert bk.proc is not None
    bk.proc.send_signal(signal.SIGSTOP)
    try:
        before = unread_by_broker(bk)
        dev.publish("cut", UP, b"z", timeout_ms=60000)
        wait_written(bk, before, "the PUBLISH")
        dev.send("link 0")
        assert not dev.wait_pub("cut", timeout=5)
    finally:
        bk.proc.send_signal(signal.SIGCONT)
    dev.send("link 1")
    # The written-but-unacked copy goes out again with DUP once the link is back.
    wait_for(lambda: f"Received PUBLISH from {DEV} (d1, q1" in bk.log_path.read_text(), 30, "DUP")


def test_refused_credentials_are_logged_without_secrets(devices) -> None:
    b = broker("allow_anonymous false\n")
    try:
        dev = MpDevice(dev_cfg(b))
        devices.append(dev)
        dev.wait_line(lambda s: "not authorized" in s or "bad user name" in s)
        assert dev.alive() and not dev.stat()["connected"]
    finally:
        b.close()


# --- keepalive ----------------------------------------------------------------------------------


def test_keepalive_pings_and_silent_broker_detected(bk, devices) -> None:
    dev = MpDevice(dev_cfg(bk, keepalive=2, connect_timeout_ms=2000))
    devices.append(dev)
    dev.wait_state(True)
    wait_for(
        lambda: bk.log_path.read_text().count(f"Received PINGREQ from {DEV}") >= 3, 20, "pings"
    )
    assert bk.proc is not None
    mark = len(dev.snapshot())
    bk.proc.send_signal(signal.SIGSTOP)  # alive for TCP, silent for MQTT
    try:
        dev.wait_state(False, start=mark, timeout=20)
        assert any("pings unanswered" in m for m in dev.logs())
    finally:
        bk.proc.send_signal(signal.SIGCONT)
    dev.wait_state(True, start=mark + 1, timeout=30)


# --- garbage from a fake broker -----------------------------------------------------------------


class FakeBroker:
    """A TCP server that answers CONNECT with CONNACK, then sends what the script says and
    records what the client sends afterwards."""

    def __init__(self, scripts: list[bytes]) -> None:
        self.scripts = scripts
        self.connections = 0
        self.received: list[bytearray] = []
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        self.host, self.port = self.sock.getsockname()
        self.stopping = False
        self.open: list[socket.socket] = []
        self.threads: list[threading.Thread] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stopping:
            try:
                c, _ = self.sock.accept()
            except OSError:
                continue
            c.settimeout(5)
            try:
                first = c.recv(1)
                assert first == b"\x10"  # CONNECT
                n, shift = 0, 0
                while True:
                    b = c.recv(1)[0]
                    n |= (b & 0x7F) << shift
                    shift += 7
                    if not b & 0x80:
                        break
                while n:
                    n -= len(c.recv(n))
                c.sendall(b"\x20\x02\x00\x00")  # CONNACK, accepted
                k = self.connections
                self.connections += 1
                if k < len(self.scripts):
                    c.sendall(self.scripts[k])
                self.open.append(c)
                buf = bytearray()
                self.received.append(buf)
                t = threading.Thread(target=self._record, args=(c, buf), daemon=True)
                t.start()
                self.threads.append(t)
            except (OSError, AssertionError, IndexError):
                c.close()

    def _record(self, c: socket.socket, buf: bytearray) -> None:
        c.settimeout(0.2)
        while not self.stopping:
            try:
                data = c.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            if not data:
                return
            buf += data

    def close(self) -> None:
        self.stopping = True
        self.thread.join(2)
        for t in self.threads:
            t.join(2)
        for c in self.open:
            c.close()
        self.sock.close()


def test_garbage_and_oversized_packets(devices) -> None:
    """Garbage or an oversized non-PUBLISH: one line, drop, reconnect. An oversized PUBLISH:
    one line, read and discarded, PUBACKed (else a persistent session redelivers it forever),
    and the connection carries on."""
    big_suback = b"\x90" + bytes([0xE8, 0x07]) + b"\x00" * 1000  # SUBACK claiming 1000 bytes
    topic = b"auxilio/v1/0938-NKRT/down"
    big_publish = (
        b"\x32"  # PUBLISH, QoS 1
        + bytes([0xE8, 0x07])  # remaining length 1000
        + struct.pack("!H", len(topic))
        + topic
        + struct.pack("!H", 0x1234)  # packet id
        + b"z" * (1000 - 2 - len(topic) - 2)
    )
    small = b"\x30" + bytes([2 + len(topic) + 5]) + struct.pack("!H", len(topic)) + topic + b"after"
    fake = FakeBroker([b"\xff\xfegarbage-not-mqtt", big_suback, big_publish + small])
    try:
        cfg = {
            "client_id": DEV,
            "host": fake.host,
            "port": fake.port,
            "keepalive": 60,
            "backoff_min_ms": 100,
            "backoff_max_ms": 400,
            "max_packet": 256,
        }
        dev = MpDevice(cfg)
        devices.append(dev)
        dev.wait_line(lambda s: s == msg_line(topic.decode(), b"after"), timeout=30)
        wait_for(lambda: len(fake.received) >= 3 and fake.received[2], 10, "the PUBACK")
        assert bytes(fake.received[2]).startswith(b"\x40\x02\x12\x34")  # PUBACK 0x1234
        # Asked after it handled everything the fake sent: still on the third connection.
        st = dev.stat()
        assert st["bad_packets"] == 3 and st["connects"] == 3 and st["drops"] == 2
        assert st["connected"]
        assert fake.connections == 3  # the oversized PUBLISH did not cost a reconnect
        assert dev.alive()
        logs = dev.logs()
        assert len([m for m in logs if "garbage" in m]) == 1  # one line per bad packet
        assert len([m for m in logs if "oversized packet (1000 > 256" in m]) == 1
        assert len([m for m in logs if "oversized downlink (1000 > 256" in m]) == 1
    finally:
        fake.close()


def test_oversized_downlink_via_broker_is_acked_not_redelivered(bk, devices, observers) -> None:
    dev = MpDevice(dev_cfg(bk))
    devices.append(dev)
    dev.wait_state(True)
    obs = C4Peer(bk, topics=[])
    observers.append(obs)
    obs.publish(DOWN, b"\x01" * 300)  # over max_packet (256)
    obs.publish(DOWN, b"\x81fine")
    dev.wait_line(lambda s: s == msg_line(DOWN, b"\x81fine"))
    assert len([m for m in dev.logs() if "oversized downlink" in m]) == 1
    assert dev.stat()["connects"] == 1
    dev.kill()  # a new process, same persistent session: nothing is redelivered
    again = MpDevice(dev_cfg(bk))
    devices.append(again)
    again.wait_state(True)
    obs.publish(DOWN, b"\x81marker")
    again.wait_line(lambda s: s == msg_line(DOWN, b"\x81marker"))
    assert not any("oversized" in m for m in again.logs())


# --- TLS ----------------------------------------------------------------------------------------


def _make_ca(name: str):  # noqa: ANN202
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return key, cert


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    d = tmp_path_factory.mktemp("tls")
    ca_key, ca = _make_ca("Auxilio test CA")
    _, wrong = _make_ca("Some other CA")
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    files = {
        "ca.pem": ca.public_bytes(pem),
        "ca.der": ca.public_bytes(serialization.Encoding.DER),
        "wrong.pem": wrong.public_bytes(pem),
        "server.pem": cert.public_bytes(pem),
        "server.key": key.private_bytes(
            pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
    }
    out = {}
    for name, data in files.items():
        (d / name).write_bytes(data)
        out[name] = d / name
    return out


@pytest.fixture
def tls_broker(tls_files):  # noqa: ANN001, ANN201
    port = free_port()
    b = broker(
        f"listener {port} 127.0.0.1\n"
        f"certfile {tls_files['server.pem']}\n"
        f"keyfile {tls_files['server.key']}\n"
    )
    b.tls_port = port  # type: ignore[attr-defined]
    try:
        yield b
    finally:
        b.close()


@pytest.mark.parametrize("ca", ["ca.pem", "ca.der"])
def test_tls_with_pinned_ca(
    tls_broker, tls_files, devices, observers, ca: str, tmp_path: Path
) -> None:
    obs = C4Peer(tls_broker, topics=[UP])  # plain listener of the same broker
    observers.append(obs)
    cfg = dev_cfg(
        tls_broker,
        port=tls_broker.tls_port,
        ca_file=str(tls_files[ca]),
        server_hostname="localhost",
    )
    if ca == "ca.der":  # the .mpy build under the device-sized heap, TLS included
        dev = MpDevice(cfg, heapsize="64K", path=build_mpy(tmp_path / "mpy"))
    else:
        dev = MpDevice(cfg)
    devices.append(dev)
    dev.wait_state(True, timeout=30)
    dev.publish("tls", UP, b"\x01over-tls")
    assert dev.wait_pub("tls")
    obs.wait_message(UP, b"\x01over-tls")


def test_tls_wrong_ca_refused(tls_broker, tls_files, devices) -> None:
    cfg = dev_cfg(
        tls_broker,
        port=tls_broker.tls_port,
        ca_file=str(tls_files["wrong.pem"]),
        server_hostname="localhost",
    )
    dev = MpDevice(cfg)
    devices.append(dev)
    wait_for(lambda: len([m for m in dev.logs() if "failed" in m]) >= 2, 30, "refusals")
    st = dev.stat()
    assert st["connects"] == 0 and not st["connected"] and dev.alive()
    assert "STATE 1" not in dev.snapshot()
    # Each refusal is one line, naming the certificate problem.
    assert all(s.startswith(("LOG mqtt:", "STAT ")) for s in dev.snapshot())
    assert "not correctly signed" in dev.logs()[0]


def test_tls_refused_on_hostname_mismatch(tls_broker, tls_files, devices) -> None:
    cfg = dev_cfg(
        tls_broker,
        port=tls_broker.tls_port,
        ca_file=str(tls_files["ca.pem"]),
        server_hostname="broker.example.org",
    )
    dev = MpDevice(cfg)
    devices.append(dev)
    wait_for(lambda: len([m for m in dev.logs() if "failed" in m]) >= 2, 30, "refusals")
    assert dev.stat()["connects"] == 0


# --- backoff ------------------------------------------------------------------------------------


def test_backoff_is_capped_exponential_with_injected_jitter() -> None:
    script = (
        "import session\n"
        "for r in (0, 65535):\n"
        "    s = session.Session('d', '127.0.0.1', 1, rand=lambda: r,\n"
        "                        backoff_min_ms=500, backoff_max_ms=30000)\n"
        "    print([s._delay(n) for n in range(1, 12)])\n"
    )
    out = run_micropython(script, path=[FIRMWARE])
    assert out.returncode == 0, out.stderr
    low, high = (json.loads(line) for line in out.stdout.splitlines())
    # rand() == 0: half of the doubled delay; the cap (30 s) halves to 15 s.
    assert low == [250, 500, 1000, 2000, 4000, 8000, 15000, 15000, 15000, 15000, 15000]
    # Jitter never exceeds the un-jittered delay, so the cap holds.
    assert all(lo <= hi <= 2 * lo for lo, hi in zip(low, high, strict=True))
    assert max(high) <= 30000
