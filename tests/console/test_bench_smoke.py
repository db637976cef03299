"""tests/bench/bench_console runs end to end and reports every figure (tiny sizes; no timing
assertions here: figures come from `make bench`)."""

from __future__ import annotations

import pytest

from tests.bench import bench_console


def test_bench_console_reports_every_figure(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bench_console, "SMALL", 200)
    monkeypatch.setattr(bench_console, "LARGE", 400)
    monkeypatch.setattr(bench_console, "DEVICES", 20)
    monkeypatch.setattr(bench_console, "RUNS", 2)
    f = bench_console.run()
    for size in ("small", "large"):
        for name in ("pk_select_ms", "snapshot_ms", "snapshot_devices_ms", "snapshot_vs_pk"):
            assert f[f"{name}_{size}"] > 0, (name, size)
    assert f["report_ms_large"] > 0 and f["snapshot_growth"] > 0
