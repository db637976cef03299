"""Pure gateway logic: the replay window against a model, supervision deadlines, the durable webhook queue."""

from __future__ import annotations

import json
from pathlib import Path

from auxilio.gateway import replay
from auxilio.gateway.supervision import MISSED_FACTOR, Supervisor
from hypothesis import given, settings
from hypothesis import strategies as st


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(0, 300), max_size=120))
def test_replay_window_matches_a_model(counters: list[int]) -> None:
    hw, win = -1, 0
    seen: set[int] = set()
    for c in counters:
        verdict = replay.check(hw, win, c)
        if c in seen:
            assert verdict in (replay.SEEN, replay.BELOW)  # never accepted twice
        elif hw >= 0 and c <= hw - replay.WINDOW:
            assert verdict == replay.BELOW
        else:
            assert verdict == replay.NEW
        if verdict == replay.NEW:
            hw, win = replay.mark(hw, win, c)
            seen.add(c)
        assert hw == max(seen) if seen else hw == -1
        assert 0 <= win < 1 << 64
        # the bitmap holds exactly the seen counters inside the window
        for age in range(replay.WINDOW):
            assert bool(win >> age & 1) == ((hw - age) in seen)


def test_supervision_deadline_restore_and_offline_hint() -> None:
    s = Supervisor(grace_s=10)
    s.seen(1, "button", 1000.0, 60)
    bound = 60 * MISSED_FACTOR + 10
    assert s.due(1000 + bound - 0.1) == []
    assert s.due(1000 + bound + 0.1) == [1]
    assert s.due(1000 + bound + 50) == []  # reported once
    assert s.seen(1, "button", 1200.0, 60) is True  # restored
    s.status(1, False, 1210.0)  # LWT offline: one interval + grace
    assert s.due(1210 + 60 + 10 + 0.1) == [1]
    assert Supervisor.interval("bracelet", None, None) == 900
    assert Supervisor.interval("button", None, None) == 60
    assert Supervisor.interval("button", 30, 120) == 30  # the heartbeat's own interval wins
    assert Supervisor.interval("bracelet", None, 120) == 120  # then CONFIG (registry)


def test_broker_url_credentials_and_redaction(tmp_path: Path) -> None:
    import pytest
    from auxilio.broker.url import parse_broker_url, with_credentials
    from auxilio.errors import UsageError

    cred = tmp_path / "gateway.json"
    cred.write_text(json.dumps({"username": "gateway", "password": "s3cr:t@x"}))
    url = with_credentials("mqtt://127.0.0.1:1884", cred)
    b = parse_broker_url(url)
    assert (b.host, b.port, b.username, b.password, b.tls) == (
        "127.0.0.1",
        1884,
        "gateway",
        "s3cr:t@x",
        False,
    )
    assert parse_broker_url("mqtts://h").port == 8883
    with pytest.raises(UsageError) as e:
        parse_broker_url("http://user:hunter2@host:1")
    assert "hunter2" not in str(e.value)
    with pytest.raises(UsageError):
        with_credentials("mqtt://h:1", tmp_path / "missing.json")
