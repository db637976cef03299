"""pytest fixtures for virtual boards and fleets (loaded by the `auxilio` pytest plugin).

Both are factories, so one test can start several boards with different
settings; everything they started is stopped (no orphan interpreters, no pty
links left) when the test ends.

    def test_alert(virtual_board, mqtt_broker):
        vd = virtual_board(firmware=True, broker_url=mqtt_broker.url)
        vd.hold()
        vd.wait_event(ev="haptic", pattern="double")
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from auxilio.emulator.fleet import VirtualFleet
from auxilio.emulator.vdevice import VirtualDevice


@pytest.fixture
def virtual_board(tmp_path: Path) -> Iterator[Callable[..., VirtualDevice]]:
    """Factory: virtual_board(board="bracelet-c3", firmware=False, broker_url=None, ...).

    firmware: False (a bare board: boot.py/main.py from `files`), True (the
    bundled firmware/), or a firmware directory. `files` maps device paths to
    bytes, written into the image before boot. The image is a fresh one in
    tmp_path unless `image=` names an existing file (then it is not formatted).
    Other keyword arguments go to VirtualDevice (config, pty_link, heapsize...).
    The returned VirtualDevice is started; `.board` is its VirtualBoard.
    """
    started: list[VirtualDevice] = []
    count = 0

    def make(
        board: str = "bracelet-c3",
        *,
        firmware: bool | str | Path = False,
        files: dict[str, bytes] | None = None,
        image: str | Path | None = None,
        wait: bool = True,
        **kwargs: Any,
    ) -> VirtualDevice:
        nonlocal count
        count += 1
        fresh = image is None
        img = Path(image) if image is not None else tmp_path / f"vboard-{count}.img"
        vd = VirtualDevice(
            board,
            img,
            firmware=None if firmware in (True, False) else firmware,  # type: ignore[arg-type]
            deploy=firmware is not False,
            format=fresh,
            name=kwargs.pop("name", f"vboard-{count}"),
            **kwargs,
        )
        started.append(vd)
        if files:
            if fresh:
                vd.image.create()
                vd.format = False
            vd.image.deploy(dict(files))
        vd.start(wait=False)
        if wait:
            if firmware is False:
                vd.board.wait_ready(60)
            else:
                vd.control.wait_connected(60)
        return vd

    try:
        yield make
    finally:
        for vd in started:
            vd.close()


@pytest.fixture
def virtual_fleet(tmp_path: Path) -> Iterator[Callable[..., VirtualFleet]]:
    """Factory: virtual_fleet(count, broker_url, heartbeat_s=None, per_interpreter=100, ...)."""
    started: list[VirtualFleet] = []

    def make(count: int, broker_url: str, **kwargs: Any) -> VirtualFleet:
        timeout = kwargs.pop("timeout", max(60.0, count * 0.5))
        kwargs.setdefault("workdir", tmp_path / f"fleet-{len(started)}")
        fleet = VirtualFleet(count, broker_url, **kwargs)
        started.append(fleet)
        fleet.start(timeout=timeout)
        return fleet

    try:
        yield make
    finally:
        for fleet in started:
            fleet.close()
