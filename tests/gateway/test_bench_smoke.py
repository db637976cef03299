"""tests/bench gateway figures run end to end and report every figure (tiny sizes; no timing
assertions here: figures come from `make bench`)."""

from __future__ import annotations

import pytest
from auxilio.testing.mosquitto import mosquitto_binary

from tests.bench import bench_gateway, bench_gateway_acks

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(mosquitto_binary() is None, reason="mosquitto is not installed"),
]


def test_bench_gateway_acks_reports_every_figure(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bench_gateway_acks, "BURST_DEVICES", 5)
    monkeypatch.setattr(bench_gateway_acks, "BURST_FRAMES", 20)
    monkeypatch.setattr(bench_gateway_acks, "RTT_SAMPLES", 20)
    f = bench_gateway_acks.run()
    for name in (
        "bare_rtt",
        "bare_burst_echo",
        "burst_commit_to_ack",
        "burst_publish_to_ack",
        "burst_fwd_commit_to_ack",
        "burst_fwd_publish_to_ack",
        "restart_to_ack",
        "restart_subscribed_to_ack",
        "crash_restart_to_ack",
        "crash_subscribed_to_ack",
    ):
        # An ACK never arrives before its commit: one clock for both processes.
        assert 0 < f[f"{name}_ms_p50"] <= f[f"{name}_ms_p99"], name
    for burst in ("burst", "burst_fwd"):
        assert f[f"{burst}_acks_received"] == f[f"{burst}_disposition_received"] == 20
        assert f[f"{burst}_batches"] >= 1 and 0 <= f[f"{burst}_max_ack_backlog"] <= 20
    # Every stored-unacked frame acked after the restart, no device re-sending.
    assert f["restart_stored_unacked"] == f["restart_acks_received"] == 20
    assert f["crash_exit"] == -9 and f["crash_acks_before_restart"] == 0
    assert 1 <= f["crash_stored_unacked"] <= 20 and f["crash_acks_received"] == 20
    assert f["target_all_acked_after_restart"] is True
    assert f["restart_gateway_up_ms"] > 0 and f["crash_gateway_up_ms"] > 0


def test_bench_gateway_reports_forwarder_figures(
    micropython: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in (
        ("ALERTS", 20),
        ("WARMUP", 2),
        ("IDLE_ALERTS", 2),
        ("IDLE_WARMUP", 1),
        ("IDLE_GAP_MS", 5),
        ("RTT_SAMPLES", 20),
        ("FIRMWARE_ALERTS", 2),
        ("THROUGHPUT_FRAMES", 300),
        ("FORWARD_ROUNDS", 1),
    ):
        monkeypatch.setattr(bench_gateway, name, value)
    f = bench_gateway.run()
    assert f["alerts"] == 20 and f["throughput_frames"] == 300
    assert len(f["bare_echo_frames_per_s_runs"]) == 1 + len(bench_gateway.FORWARD_SINKS)
    assert f["throughput_ratio"] > 0 and len(f["throughput_ratio_rounds"]) == 1
    for sink in ("jsonl", "webhook"):
        assert 0 < f[f"fwd_{sink}_alert_rtt_ms_p50"] <= f[f"fwd_{sink}_alert_rtt_ms_p99"]
        assert f[f"fwd_{sink}_alert_p50_over_bare_p50"] > 0
        assert f[f"fwd_{sink}_frames_per_s"] > 0 and f[f"fwd_{sink}_throughput_ratio"] > 0
        assert f[f"fwd_{sink}_over_nofwd_throughput_ratio"] > 0
        assert isinstance(f[f"target_fwd_{sink}_throughput_loss_le_10pct"], bool)
        # The forwarder delivered everything once the load was over.
        assert len(f[f"fwd_{sink}_backlog_after_load"]) == 1
        assert f[f"fwd_{sink}_drain_s"][0] is not None


def test_bench_selftest_reports_every_figure(monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.bench import bench_selftest

    monkeypatch.setattr(bench_selftest, "SAMPLES", 3)
    monkeypatch.setattr(bench_selftest, "WINDOW_SAMPLES", 1)
    monkeypatch.setattr(bench_selftest, "RTT_SAMPLES", 10)
    f = bench_selftest.run()
    for name in ("bare_rtt", "selftest_now", "selftest_gateway", "window_decided_to_received"):
        assert 0 < f[f"{name}_ms_p50"] <= f[f"{name}_ms_p99"], name
    assert f["selftest_over_bare_p50"] > 1
