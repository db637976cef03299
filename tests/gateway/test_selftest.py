"""Self-test at any time (issue 11 §6): the real firmware on a virtual board, a real mosquitto
with the generated ACLs, the real gateway. A TEST frame comes back acked, is stored as a test
and is never forwarded; a test window turns one press into TEST, and never more than that."""

from __future__ import annotations

import io
import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from auxilio.gateway import selftest as ST
from auxilio.gateway.forward import JsonlSink
from auxilio.paths import firmware_dir
from auxilio.protocol import codec
from auxilio.registry import schema
from auxilio.selftest import RECEIVED, SelftestResult, request_selftest
from auxilio.testing.chain import SecureChain
from auxilio.testing.tools import run_auxilio
from auxilio.testing.wait import wait_for
from sqlalchemy import select

needs_firmware = pytest.mark.skipif(
    not (firmware_dir() / "app.py").exists(), reason="the firmware has not landed yet"
)


def e2e(test):  # noqa: ANN001, ANN201 - a decorator
    """The real firmware, broker and gateway: the emulator and integration tiers."""
    return pytest.mark.emulator(pytest.mark.integration(needs_firmware(test)))


HOLD_MS = 300  # a short alert hold keeps the 3x hold of SPEC §8.10.1 under a second
WAIT = 60.0


# ------------------------------------------------------------------ units ---


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"[]", "bad_json"),
        (b'{"device": "0938-NKRU"}', "bad_device_id"),  # wrong check character
        (b'{"device": "0938-NKRT", "mode": "later"}', "bad_mode"),
        (b'{"device": "0938-NKRT", "mode": "window", "seconds": 601}', "bad_seconds"),
        (b'{"device": "0938-NKRT", "mode": "window", "seconds": true}', "bad_seconds"),
        (b'{"device": "0938-NKRT", "request": "x"}', "bad_request_id"),
        (b'{"device": "0938-NKRT", "seconds": NaN}', "bad_number"),
        (b"{" + b" " * 600 + b"}", "too_large"),
    ],
)
def test_bad_requests_are_refused_with_a_reason(body: bytes, reason: str) -> None:
    with pytest.raises(ST.BadRequest) as exc:
        ST.parse_request(body)
    assert exc.value.reason == reason


def test_config_asks_for_the_right_action() -> None:
    now = ST.parse_request(b'{"device": "0938-NKRT"}')
    window = ST.parse_request(b'{"device": "0938-NKRT", "mode": "window", "seconds": 90}')
    secret = bytes(range(32))
    f = codec.decode(codec.encode(ST.config_fields(now, 7, 1764350000), secret), secret)
    assert (f["type"], f["counter"], f["selftest"]) == ("CONFIG", 7, 1)
    f = codec.decode(codec.encode(ST.config_fields(window, 8, 1764350000), secret), secret)
    assert (f["counter"], f["test_window_s"], "selftest" in f) == (8, 90, False)
    sched = ST.scheduled_request(0x12345678)
    f = codec.decode(codec.encode(ST.config_fields(sched, 9, 1764350000), secret), secret)
    assert f["selftest"] == 2  # scheduled: no feedback on the wearer's wrist


# ---------------------------------------------------------------- the chain ---
# Everything below runs the real firmware against the real broker and gateway.


class Bench:
    """A secured chain, its gateway forwarding to a JSONL consumer, one real-firmware bracelet."""

    def __init__(self, tmp_path: Path, virtual_board: Any, **gw: Any) -> None:
        self.chain = SecureChain(tmp_path)
        self.jsonl = io.StringIO()
        self.gw = self.chain.start_gateway(sink=JsonlSink(self.jsonl), **gw)
        self.dev = self.chain.device_id(0)
        self.name = codec.device_str(self.dev)
        self.vd = virtual_board(firmware=True, config=self.chain.board_config(0, hold_ms=HOLD_MS))
        self.vd.wait_event(ev="state", name="connected", timeout=WAIT)
        wait_for(lambda: self.rows("BOOT"), WAIT, "the bracelet's BOOT stored")

    def rows(self, ftype: str) -> list[dict[str, Any]]:
        a = schema.alerts
        q = select(a).where(a.c.device_id == self.dev, a.c.type == ftype).order_by(a.c.id)
        with self.chain.registry.reader.connect() as conn:
            return [dict(r) for r in conn.execute(q).mappings()]

    def events(self, etype: str) -> list[dict[str, Any]]:
        e = schema.events
        with self.chain.registry.reader.connect() as conn:
            q = select(e).where(e.c.device_id == self.dev, e.c.type == etype).order_by(e.c.id)
            return [dict(r) for r in conn.execute(q).mappings()]

    def forwarded(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.jsonl.getvalue().splitlines() if line]

    def ask(self, **kw: Any) -> SelftestResult:
        return request_selftest(
            self.chain.url, self.chain.files.operator, "auxilio", self.name, **kw
        )

    def ask_in_background(self, **kw: Any) -> tuple[threading.Thread, list[SelftestResult]]:
        out: list[SelftestResult] = []
        t = threading.Thread(target=lambda: out.append(self.ask(**kw)), daemon=True)
        t.start()
        return t, out

    def cli(self, *extra: str) -> tuple[int, dict[str, Any]]:
        """`auxilio selftest --device ... --json` with the operator's login: (exit code, result)."""
        r = run_auxilio(
            [
                "selftest",
                "--device",
                self.name,
                "--broker",
                self.chain.url,
                "--broker-credentials",
                str(self.chain.files.operator),
                "--json",
                *extra,
            ]
        )
        assert "Traceback" not in r.stderr, r.stderr
        return r.returncode, json.loads(r.stdout.strip().splitlines()[-1])

    def close(self) -> None:
        self.chain.close()


@pytest.fixture
def bench(tmp_path: Path, virtual_board: Any):
    b = Bench(tmp_path, virtual_board)
    try:
        yield b
    finally:
        b.close()


def _forwarded_counters(b: Bench) -> set[int]:
    return {r["counter"] for r in b.forwarded() if r.get("kind") == "alert"}


def _alert_forwarded(b: Bench, counter: int) -> bool:
    return counter in _forwarded_counters(b)


# ------------------------------------------------------------- self-test now ---


@e2e
def test_selftest_now_comes_back_acked_recorded_and_never_forwarded(bench: Bench) -> None:
    b = bench
    mark = b.vd.mark()
    seq0 = b.chain.registry.get_device(b.dev).config_seq
    rc, res = b.cli()
    assert rc == 0
    assert res["state"] == RECEIVED and res["ok"]
    assert res["states"][-1] == RECEIVED and "sent" in res["states"]
    assert res["round_trip_ms"] > 0
    # The registry: a new config sequence, audited; the TEST row stored as a test, acked.
    assert b.chain.registry.get_device(b.dev).config_seq == seq0 + 1 == res["config_seq"]
    audit = b.chain.registry.audit_log(target=b.name)
    assert any(e["action"] == "config" and "selftest" in e["detail"] for e in audit)
    (row,) = b.rows("TEST")
    assert row["counter"] == res["counter"]
    assert row["test"] and row["flags"] & codec.FLAG_TEST  # the frame's own test flag
    assert row["disposition"] == "received"
    assert b.events(ST.SELFTEST_REQUESTED)
    # The device: its ACK verified, and the wearer felt "received" (two pulses).
    b.vd.wait_event(ev="state", name="acked", counter=res["counter"], since=mark)
    b.vd.wait_event(ev="haptic", pattern="double", since=mark)
    # Never forwarded: a real alert afterwards reaches the consumer, the TEST never did.
    b.vd.hold(HOLD_MS / 1000 + 0.2)
    wait_for(lambda: b.rows("ALERT"), WAIT, "the real alert stored")
    alert = b.rows("ALERT")[0]
    wait_for(lambda: _alert_forwarded(b, alert["counter"]), WAIT, "the alert forwarded")
    assert res["counter"] not in _forwarded_counters(b)
    assert not [f for f in b.forwarded() if f.get("type") == "TEST"]
    assert not alert["test"]


@e2e
def test_cli_one_line_errors(bench: Bench, tmp_path: Path) -> None:
    b = bench
    common = ["--broker-credentials", str(b.chain.files.operator), "--timeout", "5"]
    # The plain (staff) output of a good run: progress, then the result, exit 0.
    r = run_auxilio(["selftest", "--device", b.name, "--broker", b.chain.url, *common])
    assert r.returncode == 0 and "Traceback" not in r.stderr and r.stdout.count("\n") == 2
    assert len(b.rows("TEST")) == 1
    # A device the gateway does not know: exit 3, one line.
    unknown = codec.device_str(0x00ABCDEF)
    r = run_auxilio(["selftest", "--device", unknown, "--broker", b.chain.url, *common])
    assert r.returncode == 3 and r.stderr.count("error:") == 1 and "Traceback" not in r.stderr
    # A wrong password: refused by the broker, nothing requested.
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"username": "operator", "password": "wrong"}))
    r = run_auxilio(
        ["selftest", "--device", b.name, "--broker", b.chain.url, "--broker-credentials", str(bad)]
    )
    assert r.returncode != 0 and r.stderr.count("error:") == 1 and "Traceback" not in r.stderr
    # An unreachable broker: exit 4.
    from auxilio.broker.mosquitto import free_port

    url = f"mqtt://127.0.0.1:{free_port()}"
    r = run_auxilio(["selftest", "--device", b.name, "--broker", url, *common])
    assert r.returncode == 4 and r.stderr.count("error:") == 1
    # A bad device id: a usage error before any connection.
    r = run_auxilio(["selftest", "--device", "0938-NKRU", "--broker", b.chain.url, *common])
    assert r.returncode == 2 and r.stderr.count("error:") == 1
    assert len(b.rows("TEST")) == 1  # none of the failures made the device send anything


@e2e
def test_a_selftest_outlives_a_gateway_restart(bench: Bench) -> None:
    """The request is durable (its event row): a restarted gateway still answers it."""
    b = bench
    b.vd.network(False)  # the CONFIG waits in the device's persistent session
    t, out = b.ask_in_background(timeout=WAIT)
    wait_for(lambda: b.events(ST.SELFTEST_REQUESTED), WAIT, "the request recorded")
    wait_for(lambda: b.gw.stats["selftest_sent"], WAIT, "the CONFIG taken by the broker")
    b.chain.stop_gateways()
    b.gw = b.chain.start_gateway(sink=JsonlSink(b.jsonl))
    assert b.gw.tests.pending  # reloaded from the registry
    b.vd.network(True)
    t.join(WAIT)
    assert out and out[0].ok, out
    assert out[0].states == ("sent", "received")
    assert not b.events(ST.SELFTEST_MISSED)


@e2e
def test_revoked_device_is_refused_and_gets_no_config(bench: Bench) -> None:
    b = bench
    assert b.ask().ok  # the gateway has the device's key cached from now on
    seq = b.chain.registry.get_device(b.dev).config_seq
    b.chain.registry.set_state(b.dev, "revoked", "test")
    res = b.ask(timeout=10)
    assert (res.state, res.reason) == ("failed", "device_revoked")
    assert b.chain.registry.get_device(b.dev).config_seq == seq  # no CONFIG was signed
    assert len(b.rows("TEST")) == 1


@e2e
def test_silent_device_times_out_and_exits_nonzero(bench: Bench) -> None:
    b = bench
    b.vd.network(False)  # the CONFIG waits in the broker; no TEST can come back
    rc, res = b.cli("--timeout", "3")
    assert rc == 1
    assert res["state"] == "timeout" and res["states"] == ["sent"]


# ------------------------------------------------------------------ window ---


def _open_window(b: Bench, seconds: int, timeout: float = WAIT):
    mark = b.vd.mark()
    t, out = b.ask_in_background(mode="window", seconds=seconds, timeout=timeout)
    b.vd.wait_event(ev="state", name="test_window", counter=seconds, since=mark, timeout=WAIT)
    return t, out


@e2e
def test_window_press_sends_test_and_a_second_press_is_an_alert(bench: Bench) -> None:
    b = bench
    t, out = _open_window(b, 120)
    mark = b.vd.mark()
    b.vd.hold(HOLD_MS / 1000 + 0.2)  # released well before 3x hold
    t.join(WAIT)
    (res,) = out
    assert res.ok and res.mode == "window"
    assert res.press_to_store_ms is not None and 0 <= res.press_to_store_ms < 5000
    (test,) = b.rows("TEST")
    assert test["counter"] == res.counter and test["test"]
    assert not b.rows("ALERT")
    b.vd.wait_event(ev="haptic", pattern="double", since=mark)
    # SPEC §8.10.1 rule 2: the window took its one press; the next is a real alert.
    b.vd.hold(HOLD_MS / 1000 + 0.2)
    wait_for(lambda: b.rows("ALERT"), WAIT, "the second press stored as an ALERT")
    (alert,) = b.rows("ALERT")
    assert not alert["test"] and len(b.rows("TEST")) == 1
    wait_for(lambda: _alert_forwarded(b, alert["counter"]), WAIT, "the alert forwarded")
    assert test["counter"] not in _forwarded_counters(b)


@e2e
def test_long_hold_in_the_window_still_sends_a_real_alert(bench: Bench) -> None:
    b = bench
    t, out = _open_window(b, 120)
    b.vd.hold(HOLD_MS * 3 / 1000 + 0.5)  # past 3x hold_ms: somebody who needs help
    wait_for(lambda: b.rows("ALERT"), WAIT, "the long hold stored as an ALERT")
    t.join(WAIT)
    assert out and out[0].ok  # the TEST came too
    (alert,) = b.rows("ALERT")
    (test,) = b.rows("TEST")
    assert not alert["test"] and test["test"]
    wait_for(lambda: _alert_forwarded(b, alert["counter"]), WAIT, "the alert forwarded")
    assert test["counter"] not in _forwarded_counters(b)


@e2e
def test_expired_window_press_is_an_alert(bench: Bench) -> None:
    b = bench
    t, out = _open_window(b, 1, timeout=2.0)
    opened = time.monotonic()
    wait_for(lambda: time.monotonic() - opened > 1.5, 5, "the 1 s window to run out")
    b.vd.hold(HOLD_MS / 1000 + 0.2)
    wait_for(lambda: b.rows("ALERT"), WAIT, "the press after the window stored as an ALERT")
    t.join(WAIT)
    assert out and not out[0].ok and out[0].states == ("sent",)
    assert not b.rows("TEST")
    (alert,) = b.rows("ALERT")
    assert not alert["test"]


@e2e
def test_window_is_capped_by_the_device(bench: Bench) -> None:
    """A CONFIG asking more than 600 s (a gateway of another make) is capped on the device."""
    b = bench
    peer_seq = b.chain.registry.next_config_seq(b.dev, "test", "selftest window")
    dev = b.gw.verifier.device(b.dev)
    frame = codec.encode(
        {"type": "CONFIG", "device": b.dev, "counter": peer_seq, "test_window_s": 3600}, dev.keys
    )
    mark = b.vd.mark()
    from auxilio.testing.chain import Login

    gw_login = Login(b.chain.gateway_url, client_id="auxilio-selftest-peer")
    try:
        gw_login.publish(codec.topic("auxilio", b.dev, "down"), frame)
    finally:
        gw_login.close()
    ev = b.vd.wait_event(ev="state", name="test_window", since=mark, timeout=WAIT)
    assert ev["counter"] == 600


# --------------------------------------------------------------- scheduled ---


@e2e
def test_scheduled_selftest_is_silent_and_a_miss_is_recorded(
    tmp_path: Path, virtual_board: Any
) -> None:
    b = Bench(
        tmp_path,
        virtual_board,
        selftest_every_s=3.0,
        selftest_deadline_s=2.0,
        selftest_tick_s=0.5,
    )
    try:
        b.chain.registry.assign_case(b.dev, "PR-2026-00123", actor="test")
        mark = b.vd.mark()
        wait_for(lambda: b.rows("TEST"), WAIT, "the scheduled TEST stored")
        test = b.rows("TEST")[0]
        acked = b.vd.wait_event(ev="state", name="acked", counter=test["counter"], since=mark)
        # selftest = 2: nothing on the wearer's wrist for a scheduled test.
        assert not [
            e for e in b.vd.events(mark) if e.get("ev") == "haptic" and e["t"] <= acked["t"] + 0.5
        ]
        assert test["counter"] not in _forwarded_counters(b)
        # The bracelet goes dark: the next one is missed, recorded and forwarded as an event.
        b.vd.network(False)
        wait_for(lambda: b.events(ST.SELFTEST_MISSED), WAIT, "a SELFTEST_MISSED event")
        (missed, *_rest) = b.events(ST.SELFTEST_MISSED)
        assert missed["detail"]["scheduled"] is True
        wait_for(
            lambda: [f for f in b.forwarded() if f.get("type") == ST.SELFTEST_MISSED],
            WAIT,
            "the miss forwarded",
        )
        # It shows in the monitor's events list and in the programme report.
        reg = str(b.chain.registry_path)
        r = run_auxilio(["monitor", "--once", "--json", "--registry", reg])
        assert r.returncode == 0, r.stderr
        snap = json.loads(r.stdout)
        assert any(
            e["type"] == ST.SELFTEST_MISSED and e["device"] == b.name for e in snap["events"]
        ), snap["events"]
        r = run_auxilio(["report", "--json", "--registry", reg])
        assert r.returncode == 0, r.stderr
        rep = json.loads(r.stdout)
        assert [m["device"] for m in rep["selftest_missed"]] == [b.name]
        assert rep["selftest_missed"][0]["last_test"] is not None
    finally:
        b.close()


def test_desk_bounds_requests_per_device() -> None:
    """An operator login flooding the topic is refused before any registry write."""

    class NoRegistry:
        def get_device(self, device: int) -> None:
            raise AssertionError("the registry must not be asked")

    desk = ST.SelftestDesk(NoRegistry(), verifier=None)
    for i in range(ST.MAX_PENDING_PER_DEVICE):
        req = ST.Request(f"req-{i:08d}", 0x12345678, "now", 0)
        desk.pending[req.request] = ST.Pending(req, 0.0, 1.0)
    p, dev, res = desk.take(ST.Request("req-extra00", 0x12345678, "now", 0), 0.0)
    assert p is None and res["state"] == ST.FAILED and res["reason"] == "too_many_requests"
    # Expiry frees them: each becomes a miss.
    assert len(desk.expired(2.0)) == ST.MAX_PENDING_PER_DEVICE and not desk.pending


# ------------------------------------------------------------ store queries ---


def _store_queries(url: str) -> None:
    """Who is due a scheduled self-test, and which requests are still open, on one registry."""
    import datetime as dt

    from auxilio.gateway.store import Store
    from auxilio.registry import open_registry
    from auxilio.registry.enrol import enrol_device
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
    from sqlalchemy import insert, update

    reg = open_registry(url)
    try:
        pub = X25519PrivateKey.generate().public_key()
        dev = enrol_device(reg, pub, "bracelet", "bracelet-c3", actor="test").device_id
        spare = enrol_device(reg, pub, "bracelet", "bracelet-c3", actor="test").device_id
        reg.assign_case(dev, "PR-2026-00001", actor="test")
        t = reg.tables
        now = time.time()

        def at(s: float) -> dt.datetime:
            return dt.datetime.fromtimestamp(now + s, dt.timezone.utc)

        with reg.engine.begin() as conn:
            conn.execute(update(t.devices).values(last_seen=at(-100)))
        store = Store(reg)
        assert store.selftest_due(now, now) == [dev]  # never tested, never asked; spare is not
        with reg.engine.begin() as conn:
            conn.execute(
                insert(t.events).values(
                    device_id=dev,
                    type=ST.SELFTEST_REQUESTED,
                    at=at(-50),
                    detail={"request": "r1", "deadline": now + 100},
                )
            )
        assert store.selftest_due(now, now - 10) == [dev]  # asked 50 s ago, retry after 10 s
        assert store.selftest_due(now, now - 60) == []  # asked 50 s ago, retry after 60 s
        assert [e["detail"]["request"] for e in store.selftest_open(now - 1000)] == ["r1"]
        with reg.engine.begin() as conn:
            conn.execute(
                insert(t.alerts).values(
                    device_id=dev, key_epoch=1, counter=5, type="TEST", received_at=at(-40)
                )
            )
            conn.execute(
                insert(t.events).values(
                    device_id=dev,
                    type=ST.SELFTEST_REQUESTED,
                    at=at(-30),
                    detail={"request": "r2", "deadline": now + 100},
                )
            )
        assert store.selftest_due(now - 60, now - 60) == []  # tested since
        assert [e["detail"]["request"] for e in store.selftest_open(now - 1000)] == ["r2"]
        with reg.engine.begin() as conn:
            conn.execute(
                insert(t.events).values(
                    device_id=dev, type=ST.SELFTEST_MISSED, at=at(-1), detail={"request": "r2"}
                )
            )
        assert store.selftest_open(now - 1000) == []
        assert spare not in store.selftest_due(now + 10, now + 10)
    finally:
        reg.close()


def test_store_queries_sqlite(tmp_path: Path) -> None:
    _store_queries(str(tmp_path / "registry.db"))


@pytest.mark.postgres
def test_store_queries_postgres(postgres_url: str) -> None:
    _store_queries(postgres_url)
