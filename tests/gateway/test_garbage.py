"""Garbage never crashes the gateway and is counted by reason (Hypothesis); CLI bad input is one line."""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from typing import Any

import pytest
from auxilio.protocol import codec
from auxilio.testing.mosquitto import free_port
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .conftest import wait_for

pytestmark = pytest.mark.integration

_SETTINGS = settings(
    max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def _drops(stats: Any) -> int:
    return sum(v for k, v in stats.items() if k.startswith("drop_"))


@st.composite
def _mutation(draw: Any, frame: bytes) -> bytes:
    b = bytearray(frame)
    kind = draw(st.sampled_from(["flip", "truncate", "extend", "splice"]))
    if kind == "flip":
        for i in draw(st.lists(st.integers(0, len(b) - 1), min_size=1, max_size=4, unique=True)):
            b[i] ^= draw(st.integers(1, 255))
    elif kind == "truncate":
        b = b[: draw(st.integers(0, len(b) - 1))]
    elif kind == "extend":
        b += draw(st.binary(min_size=1, max_size=40))
    else:
        i = draw(st.integers(0, len(b) - 1))
        b[i:] = draw(st.binary(max_size=64))
    return bytes(b)


def test_random_bytes_and_mutations_never_crash(gateway: Any, fleet: Any, caplog: Any) -> None:
    caplog.set_level(logging.DEBUG)
    sim = fleet.sim()
    _c, valid = sim.frame("ALERT")
    sent = {"n": 0}

    @_SETTINGS
    @given(data=st.one_of(st.binary(max_size=120), _mutation(valid)))
    def publish(data: bytes) -> None:
        if data == valid:
            return
        sim.publish(data)
        sent["n"] += 1

    publish()
    # All garbage goes through before this genuine frame, which must still be acked promptly.
    t0 = time.monotonic()
    c = sim.send("ALERT")
    assert sim.wait_ack(c) is not None
    assert time.monotonic() - t0 < 10
    wait_for(lambda: _drops(gateway.stats) == sent["n"], what="every garbage frame counted")
    assert gateway.stats["internal_error"] == 0
    assert gateway._worker is not None and gateway._worker.is_alive()
    reasons = {k for k, v in gateway.stats.items() if k.startswith("drop_") and v}
    assert reasons <= {
        f"drop_{r}"
        for r in (
            "truncated",
            "trailing_bytes",
            "bad_version",
            "unknown_type",
            "length_mismatch",
            "bad_tag",
            "bad_flags",
            "bad_payload",
            "topic_mismatch",
            "unknown_device",
            "downlink_on_uplink",
        )
    }
    assert "drop_bad_tag" in reasons
    secret = fleet.secrets[sim.device].hex()
    assert secret not in caplog.text
    assert "194326080" not in caplog.text  # no coordinates in any log line


def _cli(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "auxilio.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_bad_broker_url_one_line_exit_2(tmp_path: Any) -> None:
    r = _cli("gateway", "--broker", "http://nope", "--registry", str(tmp_path / "r.db"))
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("error: bad broker URL")


def test_unreachable_broker_retries_one_line_per_attempt(tmp_path: Any, gw_key_file: Any) -> None:
    port = free_port()
    p = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "auxilio.cli",
            "gateway",
            "--broker",
            f"mqtt://127.0.0.1:{port}",
            "--registry",
            str(tmp_path / "r.db"),
            "--keys",
            str(gw_key_file),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines = []
    try:
        assert p.stderr is not None
        while len(lines) < 2:
            line = p.stderr.readline()
            assert line, "gateway exited"
            lines.append(line)
    finally:
        p.terminate()
        p.wait(20)
    assert all("unreachable" in line and "retrying" in line for line in lines)
    assert "attempt 1" in lines[0] and "attempt 2" in lines[1]


def test_unknown_frame_type_for_codec_device_ids_in_topic(gateway: Any, fleet: Any) -> None:
    """Topics with a malformed device label are counted, never crash the loop."""
    sim = fleet.sim()
    _c, frame = sim.frame("ALERT")
    for bad in (
        "auxilio/v1/NOT-VALID/up",
        "auxilio/v1/0000-0000/up",
        f"auxilio/v1/{codec.device_str(1)}/up",
    ):
        sim.publish(frame, topic=bad)
    wait_for(lambda: gateway.stats["drop_topic_mismatch"] == 3, what="topic drops")
