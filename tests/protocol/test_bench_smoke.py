"""tests/bench/bench_protocol.py runs end to end (tiny time budget; no timing assertions here)."""

from __future__ import annotations

import pytest

from tests.bench import bench_protocol


def test_bench_protocol_reports_every_figure(
    micropython: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bench_protocol, "SECONDS_PER_FIGURE", 0.01)
    monkeypatch.setattr(bench_protocol, "ROUNDS", 1)
    figures = bench_protocol.run()
    names = {"encode_per_s", "verify_per_s", "encode_into_per_s", "verify_into_per_s"}
    for runtime in ("cpython", "micropython"):
        assert names <= set(figures[runtime])
        assert all(figures[runtime][n] > 0 for n in names)
    assert figures["bytes"]["ALERT"] == {"raw": 51, "base64": 68}
    assert figures["bytes"]["HEARTBEAT"]["raw"] <= 48
