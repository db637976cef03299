"""`vboard wait`: which event answers for which state (auxilio.emulator.waiting)."""

from __future__ import annotations

import pytest
from auxilio.emulator.waiting import reached, wait_state
from auxilio.errors import UsageError


def _st(name: str, counter: int = 0) -> dict[str, object]:
    return {"ev": "state", "name": name, "counter": counter}


def test_a_frame_state_belongs_to_the_last_frame_queued() -> None:
    evs = [_st("connected"), _st("queued", 1), _st("acked", 1), _st("queued", 2), _st("sent", 2)]
    assert reached(evs, "acked") is None  # frame 1's ACK never answers for frame 2
    assert reached(evs, "sent") == _st("sent", 2)
    assert reached([*evs, _st("acked", 2)], "acked") == _st("acked", 2)
    assert reached([], "acked") is None


def test_the_link_state_is_the_latest_link_event() -> None:
    evs = [_st("connected"), {"ev": "haptic", "pattern": "double"}, _st("disconnected")]
    assert reached(evs, "connected") is None
    assert reached(evs, "disconnected") == _st("disconnected")
    assert reached([*evs, _st("connected")], "connected") == _st("connected")


def test_unknown_state_and_no_board_are_one_line_errors(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    with pytest.raises(UsageError, match="unknown state 'ackd'"):
        wait_state(None, "ackd", 1)
    with pytest.raises(UsageError, match="timed out after 0.3 s waiting for connected"):
        wait_state(None, "connected", 0.3)
