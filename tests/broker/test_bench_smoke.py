"""tests/bench/bench_lifecycle runs end to end and reports every figure (tiny sizes; no timing
asserted: figures belong to `make bench`)."""

from __future__ import annotations

import pytest
from auxilio.testing.mosquitto import mosquitto_binary

from tests.bench import bench_lifecycle

pytestmark = pytest.mark.integration


@pytest.mark.skipif(mosquitto_binary() is None, reason="needs mosquitto")
def test_bench_lifecycle_reports_every_figure(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bench_lifecycle, "REVOKES", 1)
    monkeypatch.setattr(bench_lifecycle, "FLEET", 40)
    monkeypatch.setattr(bench_lifecycle, "CALLS", 5)
    f = bench_lifecycle.run()
    for key in (
        "cli_show_ms",
        "revoke_cmd_ms",
        "revoke_login_refused_ms",
        "revoke_alert_rejected_ms",
        "read_1_us",
        "read_32_us",
        "commit_1_us",
        "read_1_over_commit",
        "read_32_over_commit",
    ):
        assert f[key] > 0, key
    assert f["revoke_cmd_ms"] <= f["revoke_login_refused_ms"] <= f["revoke_alert_rejected_ms"]
