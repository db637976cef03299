"""The gateway's seal over each stored frame: only rows the gateway stored itself can be attended.

A console, a script or an attacker with write access to the registry could
insert an `alerts` row. The gateway signs `attending` only for a row whose
seal verifies under a key derived from its own private key (which nobody
else holds), and whose raw frame still verifies under the device's key
(issue 8 §3). The seal binds the row's name (device, key epoch, counter) to
the exact frame bytes.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

_INFO = b"auxilio gateway row seal v1"
SEAL_LEN = 16  # truncated HMAC-SHA256, as the frame tags (SPEC §7)


class RowSealer:
    """HMAC over (device, key epoch, counter, raw frame) with a key only the gateway can derive."""

    def __init__(self, private_key: Any) -> None:
        raw = private_key.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
        self._key = HKDF(SHA256(), 32, salt=None, info=_INFO).derive(raw)

    def seal(self, device: int, epoch: int, counter: int, raw: bytes) -> bytes:
        msg = struct.pack(">IIIB", device, epoch, counter, len(raw)) + bytes(raw)
        return hmac.digest(self._key, msg, hashlib.sha256)[:SEAL_LEN]

    def check(self, device: int, epoch: int, counter: int, raw: bytes, seal: bytes | None) -> bool:
        if not seal or not raw:
            return False
        return hmac.compare_digest(self.seal(device, epoch, counter, raw), bytes(seal))
