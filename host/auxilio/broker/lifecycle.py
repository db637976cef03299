"""Apply a registry lifecycle change at the broker right after its commit (issue 11 §5), and `broker sync`.

The registry is the truth and its change always stands: a broker that cannot be
told (down, unreachable, refusing the admin login) must never block a revoke. The
command then prints one warning line and exits with the broker error's code
(ConnectionFailed 4: unreachable; AuthenticationFailed 5: admin login refused;
1: the broker refused the change), so scripts see that the broker lags; a later
`auxilio broker sync` reconciles it.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import IO, Any

from auxilio.broker.authority import (
    AdminConfig,
    SyncReport,
    admin_path,
    apply_device,
    open_authority,
)
from auxilio.errors import AuxilioError
from auxilio.i18n import N_, _

log = logging.getLogger(__name__)

# Field staff read it after a lifecycle command (Spanish first, catalogue: make catalogue).
_PENDING = N_(
    "aviso: el cambio quedó en el registro, pero el broker no se actualizó ({reason}); "
    "ejecute `auxilio broker sync` cuando responda"
)


def load_admin(explicit: str | os.PathLike[str] | None) -> AdminConfig | None:
    """The broker admin file named by --broker-admin or $AUXILIO_BROKER_ADMIN; None: no broker.

    Read before the registry changes, so a missing or bad file changes nothing.
    """
    path = admin_path(explicit)
    return AdminConfig.load(path) if path is not None else None


def after_change(
    admin: AdminConfig | None,
    registry: Any,
    device: int | str,
    password: str | None = None,
    stream: IO[str] | None = None,
) -> int:
    """Mirror the device's committed state at the broker; 0, or the exit code of why not."""
    return after_changes(admin, registry, [(device, password)], stream)


def after_changes(
    admin: AdminConfig | None,
    registry: Any,
    changes: list[tuple[int | str, str | None]],
    stream: IO[str] | None = None,
) -> int:
    """The same for several devices (device, new plaintext password or None) over one admin
    session; the first failure stops it (one warning line: `broker sync` does the rest)."""
    if admin is None or not changes:
        return 0
    try:
        authority = open_authority(admin)
        try:
            for device, password in changes:
                apply_device(authority, registry, device, password=password)
        finally:
            authority.close()
    except AuxilioError as exc:
        (stream or sys.stderr).write(_(_PENDING).format(reason=exc) + "\n")
        return exc.exit_code
    return 0


def sync(admin: AdminConfig, registry: Any) -> SyncReport:
    """Make the broker's device logins equal to the registry's."""
    authority = open_authority(admin)
    try:
        report = authority.sync(registry)
    finally:
        authority.close()
    log.info("broker sync: %s", report.as_dict())
    return report
