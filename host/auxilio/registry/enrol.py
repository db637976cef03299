"""Enrol a new device: fresh secret and MQTT password, sealed/hashed into the registry,
plaintext only into a 0600 provisioning file (never printed, never logged)."""

from __future__ import annotations

import json
import logging
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from auxilio.boards import board_for
from auxilio.broker.passwords import hash_password, new_password
from auxilio.errors import UsageError
from auxilio.keys import new_device_secret, seal
from auxilio.lifecycle import DEFAULT_REKEY_GRACE_S
from auxilio.private import write_private
from auxilio.protocol import codec
from auxilio.registry import validate as v
from auxilio.registry.schema import KINDS
from auxilio.registry.store import Registry

log = logging.getLogger(__name__)

# Attempts to draw an unused random device id before giving up (2^32 ids: a clash is rare).
RANDOM_ID_ATTEMPTS = 20


@dataclass(frozen=True)
class Enrolled:
    device_id: int
    label: str
    kind: str
    board: str
    secret_file: Path | None
    # The new MQTT password, for a broker that must be told it (broker/authority.py); never stored.
    password: str | None = field(default=None, repr=False, compare=False)


def _random_id(registry: Registry) -> int:
    for _ in range(RANDOM_ID_ATTEMPTS):
        candidate = secrets.randbelow(0xFFFFFFFF) + 1
        if registry.get_device(candidate) is None:
            return candidate
    raise UsageError("could not find a free device id")  # pragma: no cover


def check_secret_out(path: str | os.PathLike[str] | None) -> Path | None:
    """Refuse before touching the registry if the provisioning file cannot be created."""
    if path is None:
        return None
    p = Path(path)
    if p.exists() or p.is_symlink():
        raise UsageError(f"{p} already exists; refusing to overwrite a provisioning file")
    parent = p.parent
    if not parent.is_dir():
        raise UsageError(f"directory {parent} does not exist")
    # access() sees what open() would: modes, read-only mounts, immutable directories (root too).
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(
            f"cannot write {p}: directory {parent} is not writable; nothing was enrolled"
        )
    return p


@contextmanager
def reserved_secret_file(path: Path | None) -> Iterator[Path | None]:
    """Hold the provisioning file's name (created empty, 0600) while the registry changes.

    A device enrolled or re-keyed with its secret lost would be locked out, so
    the file is created first: if that fails, the registry is never touched;
    if the registry change fails, the empty file goes again.
    """
    if path is None:
        yield None
        return
    try:
        write_private(path, b"", exclusive=True)
    except FileExistsError:
        raise UsageError(f"{path} already exists; refusing to overwrite") from None
    except OSError as exc:
        raise UsageError(
            f"cannot write {path}: {exc.strerror or exc}; nothing was enrolled"
        ) from None
    try:
        yield path
    except BaseException:
        path.unlink(missing_ok=True)
        raise


def write_secret_file(path: Path, data: dict[str, Any]) -> None:
    """Fill the reserved provisioning file (mode 0600, replaced atomically, fsynced)."""
    write_private(path, json.dumps(data, indent=2) + "\n")


def provisioning_fields(
    registry: Registry, device_id: int, secret: bytes, password: str
) -> dict[str, Any]:
    """The enrolment fields of a device's config.json, with key epoch and counter floor.

    Both come from the registry as it is now (SPEC §12.1: a config written for a
    known secret starts above every counter the C4 has seen under that key).
    """
    rec = registry.require_device(device_id)
    return {
        "device": rec.label,
        "role": rec.kind,
        "secret": secret.hex(),
        "username": rec.label,
        "password": password,
        "key_epoch": rec.key_epoch,
        "counter_floor": registry.counter_floor(rec.id),
    }


def counter_floor_for(
    config: dict[str, Any], registry: Registry | str | os.PathLike[str] | None = None
) -> int:
    """The counter_floor a config with this known secret must carry (SPEC §12.1).

    The higher of the config's own floor and the registry's. ``registry``: an
    open Registry, or a path/URL opened read-only (None: $AUXILIO_REGISTRY or
    the default file). Raises NotFoundError when the registry or the device is
    not there, and UsageError when the config's key_epoch is not the
    registry's (a replaced secret: the C4 would refuse its frames).
    """
    if not isinstance(registry, Registry):
        from auxilio.registry.store import open_registry

        with open_registry(registry, readonly=True) as reg:
            return counter_floor_for(config, reg)
    rec = registry.require_device(config.get("device", ""))
    epoch = config.get("key_epoch")
    if epoch is not None and epoch != rec.key_epoch:
        raise UsageError(
            f"the config is for key epoch {epoch} but {rec.label} is at epoch "
            f"{rec.key_epoch} in the registry (re-keyed): use its newest provisioning file"
        )
    own = config.get("counter_floor", 0)
    own = own if isinstance(own, int) and not isinstance(own, bool) else 0
    return max(own, registry.counter_floor(rec.id))


def enrol_device(
    registry: Registry,
    public_key: Any,
    kind: str,
    board: str,
    *,
    device_id: int | str | None = None,
    fw_version: str | None = None,
    actor: str = "cli",
    secret_out: str | os.PathLike[str] | None = None,
) -> Enrolled:
    """Register a device with a new sealed secret; plaintext goes only to ``secret_out``.

    The provisioning file holds the fields of the device's config.json that come
    from enrolment: device, role, secret, username, password, key_epoch and
    counter_floor (provisioning_fields).
    """
    if kind not in KINDS:
        raise UsageError(f"kind must be one of {', '.join(KINDS)}")
    board_for(board, kind)  # a board in boards/ that can be this kind of device
    out = check_secret_out(secret_out)
    did = v.device_id(device_id) if device_id is not None else _random_id(registry)
    label = codec.device_str(did)
    secret = new_device_secret()
    password = new_password()
    with reserved_secret_file(out):
        registry.add_device(
            did,
            kind,
            board,
            seal(secret, public_key, did),
            fw_version=fw_version,
            actor=actor,
            mqtt_password_hash=hash_password(password),
        )
    if out is not None:
        write_secret_file(out, provisioning_fields(registry, did, secret, password))
    else:
        log.warning(
            "device %s enrolled without --secret-out: its secret stays sealed; run "
            "`auxilio devices rekey --secret-out FILE` to provision it",
            label,
        )
    return Enrolled(did, label, kind, board, out, password)


def rekey_device(
    registry: Registry,
    public_key: Any,
    device_id: int | str,
    *,
    actor: str,
    secret_out: str | os.PathLike[str],
    grace_s: float = DEFAULT_REKEY_GRACE_S,
) -> Enrolled:
    """Re-provision a device: new secret and MQTT password, key epoch + 1.

    Used for a found lost device, a revoked one coming back, or routine rotation.
    The plaintext goes only to ``secret_out`` (required: a re-key nobody can load
    onto the device would only lock it out). ``grace_s``: how long frames under
    the old key are still accepted (Registry.rekey; none for a lost or revoked device).
    """
    out = check_secret_out(secret_out)
    assert out is not None
    rec = registry.require_device(device_id)
    secret = new_device_secret()
    password = new_password()
    with reserved_secret_file(out):
        registry.rekey(
            rec.id,
            seal(secret, public_key, rec.id),
            actor,
            mqtt_password_hash=hash_password(password),
            grace_s=grace_s,
        )
    write_secret_file(out, provisioning_fields(registry, rec.id, secret, password))
    return Enrolled(rec.id, rec.label, rec.kind, rec.board, out, password)
