"""A real mosquitto for tests: the broker package's runner, under the name tests import."""

from __future__ import annotations

from auxilio.broker.mosquitto import (
    START_TIMEOUT_S,
    Mosquitto,
    free_port,
    mosquitto_binary,
    wait_port,
)

__all__ = ["START_TIMEOUT_S", "Mosquitto", "free_port", "mosquitto_binary", "wait_port"]
