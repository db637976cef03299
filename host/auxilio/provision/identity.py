"""A device's identity: printed id, 32-byte secret, broker login, key epoch and counter floor.

One maker of identities for provisioning, the demo, the emulator and the
tests (issue 11). The secret and the MQTT password live only in memory here
and in the device's config.json; `repr()` never shows them.

``key_id`` ties a device's config to one registry row without the secret:
`auxilio.keys.sealed_id` of the sealed secret the registry holds. A station, which cannot unseal, compares it with the
row to tell whether the device holds the secret the C4 knows (issue 11 §7).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field, replace
from typing import Any

from auxilio.broker.passwords import new_password
from auxilio.errors import UsageError
from auxilio.keys import SECRET_LEN
from auxilio.keys import sealed_id as key_id
from auxilio.protocol import FrameError, codec

# Device ids are u32; 0 and 0xFFFFFFFF are kept out of the random draw (SPEC §2 reserves
# neither, but an all-zeros or all-ones id is what a broken flash reads back).
_ID_MIN, _ID_MAX = 1, 0xFFFFFFFE
# The first counter of a fresh key (SPEC §12.1; Registry.counter_floor agrees).
FIRST_COUNTER = 1
# The enrolment fields of config.json, in the order they are written.
IDENTITY_KEYS = (
    "device",
    "secret",
    "username",
    "password",
    "key_epoch",
    "key_id",
    "counter_floor",
)


def random_device_id() -> int:
    return _ID_MIN + secrets.randbelow(_ID_MAX - _ID_MIN + 1)


@dataclass(frozen=True)
class Identity:
    """Who a device is and what it proves it with (frozen; `with_registry` makes a copy)."""

    device: int
    secret: bytes = field(repr=False)
    password: str | None = field(repr=False)  # None: no broker login (an open lab broker)
    key_epoch: int = 1
    counter_floor: int = FIRST_COUNTER
    key_id: str | None = None

    @property
    def label(self) -> str:
        """The printed id with its check character, e.g. '0938-NKRT'."""
        return codec.device_str(self.device)

    def with_registry(self, key_epoch: int, counter_floor: int, sealed: bytes) -> Identity:
        """This identity as registered: the row's epoch, floor and sealed-secret key id."""
        return replace(
            self, key_epoch=key_epoch, counter_floor=counter_floor, key_id=key_id(sealed)
        )

    def fields(self) -> dict[str, Any]:
        """The identity part of config.json (the username is the printed id: broker ACLs)."""
        out: dict[str, Any] = {
            "device": self.label,
            "secret": self.secret.hex(),
            "username": self.label,
            "key_epoch": self.key_epoch,
            "counter_floor": self.counter_floor,
        }
        if self.password:
            out["password"] = self.password
        if self.key_id is not None:
            out["key_id"] = self.key_id
        return out


def new_identity(device: int | str | None = None, *, password: str | None = None) -> Identity:
    """A fresh identity: a random id (unless given), a CSPRNG secret and MQTT password."""
    if device is None:
        did = random_device_id()
    else:
        try:
            did = codec.device_int(device)
        except FrameError as exc:
            raise UsageError(f"bad device id {device!r}: {exc}") from None
    return Identity(
        device=did,
        secret=secrets.token_bytes(SECRET_LEN),  # the OS CSPRNG (issue 11 §3)
        password=password if password is not None else new_password(),
    )


def identity_from_config(cfg: dict[str, Any]) -> Identity:
    """The identity a config.json (or a `devices add --secret-out` file) holds."""
    try:
        did = codec.device_int(cfg["device"])
        secret = bytes.fromhex(cfg["secret"])
    except (KeyError, TypeError, ValueError, FrameError):
        raise UsageError("the config has no valid device id and 64-hex-digit secret") from None
    if len(secret) != SECRET_LEN:
        raise UsageError("the config's secret is not 32 bytes")
    return Identity(
        device=did,
        secret=secret,
        password=cfg.get("password") or None,
        key_epoch=int(cfg.get("key_epoch") or 1),
        counter_floor=int(cfg.get("counter_floor") or FIRST_COUNTER),
        key_id=cfg.get("key_id"),
    )
