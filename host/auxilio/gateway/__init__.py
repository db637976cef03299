"""The C4 gateway: verify uplink frames, store them durably, ACK, supervise devices, forward to dispatch."""

from __future__ import annotations

from auxilio.gateway.service import Gateway, parse_broker_url

__all__ = ["Gateway", "parse_broker_url"]
