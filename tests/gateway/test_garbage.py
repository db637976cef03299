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


def _read_lines(stream: Any, seconds: float) -> list[str]:
    """Lines a process writes within a bounded window (non-blocking reads)."""
    import os
    import select
    import time

    fd = stream.fileno()
    os.set_blocking(fd, False)
    data = b""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        r, _w, _x = select.select([fd], [], [], 0.1)
        if r:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            data += chunk
    return data.decode(errors="replace").splitlines()


def test_unreachable_broker_logged_once_per_state_change(tmp_path: Any, gw_key_file: Any) -> None:
    """Retries back off and stay quiet: one line when the link goes down, none per attempt."""
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
    )
    try:
        # 4 s covers the attempts at 0, ~0.5, ~1.5 and ~3.5 s of the backoff.
        lines = _read_lines(p.stderr, 4.0)
    finally:
        p.terminate()
        p.wait(20)
    unreachable = [x for x in lines if "unreachable" in x]
    assert len(unreachable) == 1, lines
    assert "127.0.0.1:" in unreachable[0] and "backoff" in unreachable[0]


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
