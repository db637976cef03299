"""Mosquitto 2 password hashes ($7$ = PBKDF2-HMAC-SHA512) and random MQTT passwords.

The registry keeps only these hashes; the plaintext goes once into the device's
provisioning file. Format, as mosquitto_passwd writes it:
``$7$<iterations>$<base64 salt (12 bytes)>$<base64 PBKDF2-SHA512 (64 bytes)>``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import secrets

# mosquitto_passwd's default; higher costs CPU on every device (re)connect.
ITERATIONS = 101
SALT_LEN = 12
HASH_LEN = 64
# Random MQTT password strength: 24 bytes -> 32 URL-safe characters.
PASSWORD_BYTES = 24


def new_password() -> str:
    return secrets.token_urlsafe(PASSWORD_BYTES)


def hash_password(password: str, iterations: int = ITERATIONS, salt: bytes | None = None) -> str:
    salt = salt if salt is not None else os.urandom(SALT_LEN)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations, HASH_LEN)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def verify_password(password: str, encoded: str) -> bool:
    try:
        _, kind, iterations, salt64, hash64 = encoded.split("$")
        if kind != "7":
            return False
        salt, want = base64.b64decode(salt64), base64.b64decode(hash64)
        got = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, int(iterations), len(want))
    except (ValueError, binascii.Error):
        return False
    return hmac.compare_digest(got, want)
