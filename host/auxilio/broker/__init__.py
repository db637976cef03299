"""Broker side: mosquitto config with per-device users and pattern ACLs, a runner, an embedded fallback."""

from __future__ import annotations

from auxilio.broker.config import BrokerFiles, render_acl, write_config
from auxilio.broker.passwords import hash_password, new_password, verify_password

__all__ = [
    "BrokerFiles",
    "hash_password",
    "new_password",
    "render_acl",
    "verify_password",
    "write_config",
]
