"""The C4 gateway: verify uplink frames, store them durably, ACK, supervise devices, forward to dispatch."""

from __future__ import annotations

from auxilio.gateway.service import Gateway

__all__ = ["Gateway"]
