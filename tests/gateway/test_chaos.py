"""Issue 8 "It must show": seeded faults at every step lose no acked alert (CI size: 200 seeds).

Each test id is its seed; `make chaos` runs thousands (AUXILIO_CHAOS_RUNS, AUXILIO_CHAOS_FROM).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from auxilio.testing.mosquitto import Mosquitto, mosquitto_binary

from .chaos import Plan, run

pytestmark = pytest.mark.integration

RUNS = int(os.environ.get("AUXILIO_CHAOS_RUNS", "200"))
FIRST = int(os.environ.get("AUXILIO_CHAOS_FROM", "1"))


@pytest.fixture(scope="module")
def chaos_broker() -> Iterator[Mosquitto]:
    if mosquitto_binary() is None:
        pytest.skip("mosquitto is not installed")
    with Mosquitto() as broker:
        broker.start()
        yield broker


@pytest.mark.parametrize("seed", range(FIRST, FIRST + RUNS))
def test_seeded_faults_lose_no_acked_alert(seed: int, chaos_broker: Mosquitto) -> None:
    plan = Plan.from_seed(seed)
    out = run(plan, chaos_broker.url)
    assert out.pressed == out.acked, f"seed {seed}: not every pressed alert was acked: {plan}"
    assert not out.lost, f"seed {seed}: acked but never forwarded: {sorted(out.lost)} ({plan})"
    if plan.crash is not None and out.crashes:
        assert out.restarts >= 1


def test_the_seeds_cover_every_crash_point_and_fault() -> None:
    plans = [Plan.from_seed(s) for s in range(FIRST, FIRST + RUNS)]
    assert {p.crash for p in plans} >= {
        None,
        "before_commit",
        "after_commit",
        "during_ack",
        "after_forward",
        "before_mark",
    }
    assert {p.fault for p in plans} >= {"none", "404", "503", "drop", "consumer_dies"}
