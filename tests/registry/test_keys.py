"""Sealing device secrets to the gateway key: round trip, wrong key/device/tamper fail, key files."""

from __future__ import annotations

import stat

import pytest
from auxilio import keys
from auxilio.errors import UsageError
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey


def test_seal_round_trip() -> None:
    priv = X25519PrivateKey.generate()
    secret = keys.new_device_secret()
    blob = keys.seal(secret, priv.public_key(), 0x1234)
    assert secret not in blob
    assert blob[0] == keys.SEAL_VERSION
    assert keys.unseal(blob, priv, 0x1234) == secret
    # Fresh ephemeral key and nonce each time.
    assert keys.seal(secret, priv.public_key(), 0x1234) != blob


def test_wrong_key_wrong_device_and_tamper_fail() -> None:
    priv, other = X25519PrivateKey.generate(), X25519PrivateKey.generate()
    blob = keys.seal(keys.new_device_secret(), priv.public_key(), 7)
    with pytest.raises(keys.SealError, match="different gateway key"):
        keys.unseal(blob, other, 7)
    with pytest.raises(keys.SealError):
        keys.unseal(blob, priv, 8)
    for i in (0, 5, 20, 50, len(blob) - 1):
        bad = bytearray(blob)
        bad[i] ^= 0x01
        with pytest.raises(keys.SealError):
            keys.unseal(bytes(bad), priv, 7)
    with pytest.raises(keys.SealError):
        keys.unseal(blob[:40], priv, 7)


def test_init_keys_mode_and_no_overwrite(tmp_path) -> None:
    priv_path, pub_path = keys.init_keys(tmp_path / "k")
    assert stat.S_IMODE(priv_path.stat().st_mode) == 0o600
    before = priv_path.read_bytes()
    with pytest.raises(UsageError):
        keys.init_keys(tmp_path / "k")
    assert priv_path.read_bytes() == before
    priv = keys.load_private_key(priv_path)
    pub = keys.load_public_key(pub_path)
    blob = keys.seal(b"s" * 32, pub, 1)
    assert keys.unseal(blob, priv, 1) == b"s" * 32


def test_parse_public_key_forms() -> None:
    pub = X25519PrivateKey.generate().public_key()
    text = keys.public_key_text(pub)
    raw = keys.parse_public_key(text)
    assert keys.fingerprint(raw) == keys.fingerprint(pub)
    assert keys.fingerprint(keys.parse_public_key(text.split(":", 1)[1])) == keys.fingerprint(pub)
    for bad in ("", "x25519:nothex!", "abcd"):
        with pytest.raises(UsageError):
            keys.parse_public_key(bad)
