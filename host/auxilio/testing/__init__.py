"""pytest plugin (entry point `auxilio`): fixtures for brokers and virtual boards.

Usable by this repository's tests and by downstream projects that pip-install
Auxilio. Fixtures: ``mqtt_broker`` (a real mosquitto on a free loopback port);
``c4`` (a registry and the real gateway on that broker, auxilio.testing.c4);
``virtual_board`` and ``virtual_fleet`` come from auxilio.testing.fixtures,
``virtual_tray`` (blank boards on a private virtual USB bus, for flashing)
from auxilio.testing.tray, with ``firmware_file`` and ``VirtualTechnician``.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from auxilio.broker.mosquitto import Mosquitto, mosquitto_binary
from auxilio.testing.postgres import postgres_cluster, postgres_url  # noqa: F401

if TYPE_CHECKING:
    from auxilio.testing.c4 import C4


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("auxilio", "Auxilio hardware tests (-m hardware)")
    group.addoption("--port", help="a real board's serial port for the hardware tests")
    group.addoption("--board", help="that board's name in boards/ (default devkit-esp32)")
    group.addoption("--firmware", help="a MicroPython image to flash in the hardware tests")


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist, each worker gets its own virtual-board directory.

    `auxilio vboard` with no --name picks "the" running board of the runtime
    directory; two workers sharing one would see each other's boards. Tests that
    set XDG_RUNTIME_DIR themselves still do; the others get their worker's.
    """
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if worker and not os.environ.get("AUXILIO_TEST_RUNTIME_SET"):
        os.environ["XDG_RUNTIME_DIR"] = tempfile.mkdtemp(prefix=f"auxilio-{worker}-")
        os.environ["AUXILIO_TEST_RUNTIME_SET"] = "1"


@pytest.fixture
def hardware(request: pytest.FixtureRequest) -> dict[str, str | None]:
    """{'port', 'board', 'firmware'} of a real board; skips the test without --port."""
    port = request.config.getoption("--port")
    if not port:
        pytest.skip("needs a real board: pytest -m hardware --port /dev/ttyUSB0 [--board NAME]")
    return {
        "port": port,
        "board": request.config.getoption("--board") or "devkit-esp32",
        "firmware": request.config.getoption("--firmware"),
    }


@pytest.fixture
def mqtt_broker() -> Iterator[Mosquitto]:
    """A fresh mosquitto on 127.0.0.1:<free port>, stopped after the test."""
    if mosquitto_binary() is None:
        pytest.skip("mosquitto is not installed")
    broker = Mosquitto()
    broker.start()
    try:
        yield broker
    finally:
        broker.close()


@pytest.fixture
def c4(mqtt_broker: Mosquitto, tmp_path: Path) -> Iterator[Callable[..., C4]]:
    """Factory: c4(registry=None, key=None, **gateway_kw) -> a started C4 on mqtt_broker."""
    from auxilio.testing.c4 import c4_factory

    make, started = c4_factory(mqtt_broker.url, tmp_path)
    try:
        yield make
    finally:
        for c in started:
            c.close()


try:  # virtual boards arrive with the emulator; keep the plugin importable without them
    from auxilio.testing.fixtures import virtual_board, virtual_fleet  # noqa: F401
    from auxilio.testing.tray import VirtualTechnician, firmware_file, virtual_tray  # noqa: F401
except ImportError:
    pass
