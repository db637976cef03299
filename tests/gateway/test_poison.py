"""Issue 8 §1: one bad message never stops the gateway; every one is counted, PUBACKed, dead-lettered.

Repro: `mosquitto_pub -u operator … -t auxilio/c4/attend -m '{"alert": Infinity}'` made the
attend handler raise, the batch was never PUBACKed, the broker redelivered it forever and no
uplink was processed again - not even after a restart (persistent session).
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from auxilio.testing.chain import Login, ack_latency
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from .conftest import wait_for

pytestmark = pytest.mark.integration

# The repro's payloads, and their relatives: each must be refused with its reason.
POISON = [
    (b'{"alert": Infinity}', "attend_bad_number"),
    (b'{"alert": -Infinity}', "attend_bad_number"),
    (b'{"alert": NaN}', "attend_bad_number"),
    (b'{"alert": 1e999}', "attend_bad_alert_id"),
    (b'{"alert": 9223372036854775808}', "attend_bad_alert_id"),
    (b'{"alert": ' + b"[" * 1500 + b"]" * 1500 + b"}", "attend_too_large"),
    (b'{"alert": ' + b"[" * 240 + b"]" * 240 + b"}", "attend_bad_alert_id"),
    (b"\xff\xfe\x00", "attend_bad_json"),
    (b"", "attend_bad_json"),
    (b"null", "attend_bad_json"),
    (b'{"alert": true}', "attend_bad_alert_id"),
    (b'{"alert": "7"}', "attend_bad_alert_id"),
    (b'{"alert": 0}', "attend_bad_alert_id"),
    (b'{"alert": 5, "operator": ""}', "attend_bad_operator"),
    (b'{"alert": 5, "request": "x/../y"}', "attend_bad_request_id"),
    (b'{"alert": 5, "operator": "' + b"o" * 600 + b'"}', "attend_too_large"),
]


def _dead_letters(chain: Any) -> dict[str, int]:
    dl = chain.registry.tables.dead_letters
    with chain.registry.engine.connect() as conn:
        return {
            r[0]: r[1]
            for r in conn.execute(select(dl.c.reason, func.count()).group_by(dl.c.reason))
        }


def test_poison_attend_requests_are_dead_lettered_and_never_block(secure_chain: Any) -> None:
    chain = secure_chain
    gw = chain.start_gateway()
    dev = chain.device(0)
    baseline = ack_latency(dev)
    op = Login(chain.operator_url)
    try:
        for payload, _reason in POISON:
            op.publish("auxilio/c4/attend", payload)
        # An alert sent right behind the poison is still acked, in normal time.
        t0 = time.perf_counter()
        c = dev.send("ALERT")
        assert dev.wait_ack(c, timeout=10) is not None
        assert dev.ack_times[c] - t0 < max(3 * baseline, 0.5)
    finally:
        op.close()
    want: dict[str, int] = {}
    for _p, reason in POISON:
        want[reason] = want.get(reason, 0) + 1
    wait_for(lambda: _dead_letters(chain) == want, what="dead letters by reason")
    for reason, n in want.items():
        assert gw.stats["drop_" + reason] == n
    assert gw.stats["internal_error"] == 0
    # A restart finds nothing to redeliver: every poison message was PUBACKed.
    chain.stop_gateways()
    gw2 = chain.start_gateway()
    c = dev.send("ALERT")
    assert dev.wait_ack(c, timeout=10) is not None
    assert not any(k.startswith("drop_attend") for k in gw2.stats)
    assert _dead_letters(chain) == want


def test_bad_status_and_garbage_uplinks_are_dead_lettered(secure_chain: Any) -> None:
    chain = secure_chain
    gw = chain.start_gateway()
    dev = chain.device(0)
    status = dev.up.replace("/up", "/status")
    for payload in (b"\x00" * 40, b"maybe", b"online" * 10):
        dev.client.publish(status, payload, qos=1).wait_for_publish(10)
    for payload in (b"", b"\x01" * 31, b"\x02" + b"\x00" * 50, bytes(range(96))):
        dev.publish(payload)
    c = dev.send("ALERT")
    assert dev.wait_ack(c, timeout=10)["disposition"] == "received"
    wait_for(
        lambda: (
            _dead_letters(chain).get("bad_status") == 3
            and sum(v for k, v in _dead_letters(chain).items() if k != "bad_status") == 4
        ),
        what="dead letters",
    )
    assert gw.stats["internal_error"] == 0


@pytest.fixture(scope="module")
def module_chain(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from auxilio.testing.chain import SecureChain
    from auxilio.testing.mosquitto import mosquitto_binary

    if mosquitto_binary() is None:
        pytest.skip("mosquitto is not installed")
    chain = SecureChain(tmp_path_factory.mktemp("poison"), devices=[("bracelet", "bracelet-c3")])
    chain.start_gateway()
    op = Login(chain.operator_url)
    dev = chain.device(0)
    try:
        yield chain, op, dev, ack_latency(dev)
    finally:
        op.close()
        chain.close()


def _nested(children: st.SearchStrategy) -> st.SearchStrategy:
    return st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children)


def _as_request(value: object) -> bytes:
    import json

    return json.dumps({"alert": value}).encode()


CONTROL = st.one_of(
    st.binary(max_size=600),
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
        _nested,
        max_leaves=20,
    ).map(_as_request),
)


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    controls=st.lists(CONTROL, max_size=4), uplinks=st.lists(st.binary(max_size=120), max_size=4)
)
def test_random_control_and_uplink_garbage_with_an_alert_in_flight(
    module_chain: Any, controls: list[bytes], uplinks: list[bytes]
) -> None:
    chain, op, dev, baseline = module_chain
    gw = chain._gateways[0]
    c, alert = dev.frame("ALERT")
    t0 = time.perf_counter()
    dev.publish(alert)  # in flight while the garbage arrives
    for payload in controls:
        op.publish("auxilio/c4/attend", payload)
    for payload in uplinks:
        dev.publish(payload)
    assert dev.wait_ack(c, timeout=10) is not None, "the genuine alert was not acked"
    assert dev.ack_times[c] - t0 < max(3 * baseline, 0.5) + 0.05 * (len(controls) + len(uplinks))
    assert gw.stats["internal_error"] == 0
    assert gw.connected.is_set()
