"""Gateway keypair and sealing of device secrets to it (DESIGN §6: a stolen provisioning laptop yields nothing).

Provisioning stations hold only the gateway's X25519 *public* key. Each new device
secret is sealed to it (ephemeral X25519, HKDF-SHA256, AES-256-GCM), stored sealed
in the registry, and only the gateway, which holds the private key, can unseal it.

Sealed blob, version 1 (93 bytes for a 32-byte secret)::

    version(1)=0x01 | key id(8) | ephemeral public key(32) | nonce(12) | AES-GCM ciphertext+tag

The key id is the first 8 bytes of SHA-256 over the recipient's raw public key, so a
blob sealed to another gateway key fails with a clear message instead of "corrupt".
The associated data binds the header and the device id: a sealed secret copied onto
another device's row does not unseal.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import os
import struct
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from auxilio.errors import AuxilioError, NotFoundError, UsageError
from auxilio.private import private_dir, write_private

log = logging.getLogger(__name__)

SEAL_VERSION = 1
# HKDF "info": domain separation so this key can never be confused with another use.
_HKDF_INFO = b"auxilio/seal/v1"
_KID_LEN = 8
_NONCE_LEN = 12
_HEADER = struct.Struct(">B8s")  # version, key id
SECRET_LEN = 32  # device secret length, protocol §7
PRIVATE_KEY_FILE = "gateway.key"
PUBLIC_KEY_FILE = "gateway.pub"
# Where `auxilio keys init` writes by default, relative to the working directory.
DEFAULT_KEYS_DIR = "var/keys"


class SealError(AuxilioError):
    """A sealed secret cannot be opened: wrong gateway key, wrong device, or corrupt."""


def keys_dir(path: str | os.PathLike[str] | None = None) -> Path:
    """The keys directory: explicit, else $AUXILIO_KEYS_DIR, else var/keys."""
    return Path(path or os.environ.get("AUXILIO_KEYS_DIR") or DEFAULT_KEYS_DIR)


def new_device_secret() -> bytes:
    """A fresh random 32-byte device secret."""
    return os.urandom(SECRET_LEN)


# Hex digits of a sealed secret's fingerprint: 64 bits tell two sealings apart beyond doubt.
SEALED_ID_HEX = 16


def sealed_id(blob: bytes) -> str:
    """Fingerprint of one sealed secret (SHA-256 prefix, hex), stored on the device as key_id.

    A station cannot unseal, so this is how it tells whether a device holds the
    secret a registry row was sealed from: the device's config carries the
    fingerprint of the blob written with it (issue 11 §7). It says nothing about
    the secret itself.
    """
    return hashlib.sha256(bytes(blob)).hexdigest()[:SEALED_ID_HEX]


def _raw_public(key: X25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(public_key: X25519PublicKey) -> bytes:
    return hashlib.sha256(_raw_public(public_key)).digest()[:_KID_LEN]


def fingerprint(public_key: X25519PublicKey) -> str:
    """Short printable id of a gateway public key, for humans to compare."""
    return key_id(public_key).hex(":")


def _derive(shared: bytes, eph_pub: bytes, recipient_pub: bytes) -> bytes:
    return HKDF(
        algorithm=hashes.SHA256(), length=32, salt=eph_pub + recipient_pub, info=_HKDF_INFO
    ).derive(shared)


def _aad(header: bytes, device_id: int) -> bytes:
    return header + struct.pack(">I", device_id)


def seal(secret: bytes, public_key: X25519PublicKey, device_id: int) -> bytes:
    """Seal a device secret to the gateway public key; only the private key opens it."""
    if not 0 <= device_id <= 0xFFFFFFFF:
        raise UsageError("device id out of range")
    eph = X25519PrivateKey.generate()
    eph_pub = _raw_public(eph.public_key())
    recipient = _raw_public(public_key)
    key = _derive(eph.exchange(public_key), eph_pub, recipient)
    header = _HEADER.pack(SEAL_VERSION, key_id(public_key))
    nonce = os.urandom(_NONCE_LEN)
    ct = AESGCM(key).encrypt(nonce, secret, _aad(header, device_id))
    return header + eph_pub + nonce + ct


def unseal(blob: bytes, private_key: X25519PrivateKey, device_id: int) -> bytes:
    """Open a sealed secret; raises SealError (never returns garbage)."""
    min_len = _HEADER.size + 32 + _NONCE_LEN + 16
    if not isinstance(blob, (bytes, bytearray, memoryview)) or len(blob) < min_len:
        raise SealError("sealed secret is truncated")
    blob = bytes(blob)
    version, kid = _HEADER.unpack_from(blob)
    if version != SEAL_VERSION:
        raise SealError(f"sealed secret has unknown version {version}")
    if kid != key_id(private_key.public_key()):
        raise SealError("sealed secret was sealed to a different gateway key")
    off = _HEADER.size
    eph_pub = blob[off : off + 32]
    nonce = blob[off + 32 : off + 32 + _NONCE_LEN]
    ct = blob[off + 32 + _NONCE_LEN :]
    recipient = _raw_public(private_key.public_key())
    try:
        key = _derive(
            private_key.exchange(X25519PublicKey.from_public_bytes(eph_pub)), eph_pub, recipient
        )
        return AESGCM(key).decrypt(nonce, ct, _aad(blob[: _HEADER.size], device_id))
    except (InvalidTag, ValueError):
        raise SealError("sealed secret does not open (wrong device or corrupt)") from None


# ------------------------------------------------------------------ key files ---


def init_keys(directory: str | os.PathLike[str] | None = None) -> tuple[Path, Path]:
    """Create the gateway keypair; refuses to overwrite. Returns (private, public) paths."""
    d = keys_dir(directory)
    priv_path, pub_path = d / PRIVATE_KEY_FILE, d / PUBLIC_KEY_FILE
    if priv_path.exists() or pub_path.exists():
        raise UsageError(f"gateway keys already exist in {d}; refusing to overwrite")
    try:
        private_dir(d)
    except OSError as exc:
        raise UsageError(f"cannot create keys directory {d}: {exc.strerror}") from None
    key = X25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    # O_EXCL: never clobber a key that appeared meanwhile; 0600 from creation on,
    # so the private key is never readable by others, not even for an instant.
    try:
        write_private(priv_path, pem, exclusive=True)
    except FileExistsError:
        raise UsageError(f"{priv_path} already exists; refusing to overwrite") from None
    pub_path.write_text(public_key_text(key.public_key()) + "\n")
    log.info("gateway keypair created in %s (fingerprint %s)", d, fingerprint(key.public_key()))
    return priv_path, pub_path


def public_key_text(public_key: X25519PublicKey) -> str:
    """The one-line form handed to provisioning stations: 'x25519:<base64 raw key>'."""
    return "x25519:" + base64.b64encode(_raw_public(public_key)).decode()


def parse_public_key(text: str) -> X25519PublicKey:
    """Accept 'x25519:<base64>', bare base64 or hex of the raw key, or a PEM public key."""
    t = text.strip()
    try:
        if t.startswith("-----BEGIN"):
            key = serialization.load_pem_public_key(t.encode())
            if not isinstance(key, X25519PublicKey):
                raise UsageError("public key is not an X25519 key")
            return key
        if t.startswith("x25519:"):
            t = t[len("x25519:") :]
        raw = bytes.fromhex(t) if len(t) == 64 else base64.b64decode(t, validate=True)
        return X25519PublicKey.from_public_bytes(raw)
    except (ValueError, binascii.Error):
        raise UsageError("not a valid X25519 public key") from None


def load_public_key(path: str | os.PathLike[str] | None = None) -> X25519PublicKey:
    """Load the gateway public key from a file (default: keys dir/gateway.pub)."""
    p = Path(path) if path else keys_dir() / PUBLIC_KEY_FILE
    try:
        text = p.read_text()
    except FileNotFoundError:
        raise NotFoundError(
            f"gateway public key {p} not found (run `auxilio keys init` on the gateway)"
        ) from None
    except OSError as exc:
        raise UsageError(f"cannot read {p}: {exc.strerror}") from None
    return parse_public_key(text)


def load_private_key(path: str | os.PathLike[str] | None = None) -> X25519PrivateKey:
    """Load the gateway private key (default: keys dir/gateway.key). Gateway only."""
    p = Path(path) if path else keys_dir() / PRIVATE_KEY_FILE
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise NotFoundError(f"gateway private key {p} not found") from None
    except OSError as exc:
        raise UsageError(f"cannot read {p}: {exc.strerror}") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise UsageError(f"{p} is not a PEM private key") from None
    if not isinstance(key, X25519PrivateKey):
        raise UsageError(f"{p} is not an X25519 private key")
    return key
