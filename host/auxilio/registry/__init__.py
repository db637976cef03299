"""Device registry: devices and sealed keys, assignments, alerts, events, append-only audit.

SQLite by default (a file path), PostgreSQL by URL, through one SQLAlchemy Core code
path with versioned migrations. See ``store.open_registry``.
"""

from __future__ import annotations

from auxilio.registry.migrations import SchemaTooNew
from auxilio.registry.schema import KINDS, LATEST_VERSION, STATES
from auxilio.registry.store import (
    DEFAULT_REGISTRY,
    TRANSITIONS,
    DeviceRecord,
    Registry,
    RegistryError,
    open_registry,
    resolve_url,
    utcnow,
)

__all__ = [
    "DEFAULT_REGISTRY",
    "KINDS",
    "LATEST_VERSION",
    "STATES",
    "TRANSITIONS",
    "DeviceRecord",
    "Registry",
    "RegistryError",
    "SchemaTooNew",
    "open_registry",
    "resolve_url",
    "utcnow",
]
