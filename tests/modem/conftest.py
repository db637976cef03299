"""Fixtures for the LTE tests: one broker and one LteRig per test."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from auxilio.testing.mosquitto import Mosquitto

from tests.firmware.fwkit import broker
from tests.modem.ltekit import LteRig


@pytest.fixture
def mq() -> Iterator[Mosquitto]:
    b = broker()
    try:
        yield b
    finally:
        b.close()


@pytest.fixture
def lte_rig(mq: Mosquitto, tmp_path: Path) -> Iterator[Callable[..., LteRig]]:
    """Factory: lte_rig(profile="sim7080g", board="bracelet-c3", timing=FAST, **modem_kw)."""
    rigs: list[LteRig] = []

    def make(*args: object, **kw: object) -> LteRig:
        r = LteRig(mq, tmp_path / f"rig{len(rigs)}", *args, **kw)  # type: ignore[arg-type]
        rigs.append(r)
        return r

    try:
        yield make
    finally:
        for r in rigs:
            r.close()
