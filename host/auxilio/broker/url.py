"""Broker URLs, the one parser for every host tool: mqtt[s]://[user:pass@]host[:port]."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from urllib.parse import quote, unquote, urlsplit

from auxilio.errors import UsageError

DEFAULT_PORT = 1883
DEFAULT_TLS_PORT = 8883


@dataclass(frozen=True)
class BrokerAddress:
    host: str
    port: int
    tls: bool
    username: str | None = None
    password: str | None = None

    @property
    def scheme(self) -> str:
        return "mqtts" if self.tls else "mqtt"

    def url(self, with_credentials: bool = True) -> str:
        cred = ""
        if with_credentials and self.username:
            cred = quote(self.username, safe="")
            if self.password is not None:
                cred += ":" + quote(self.password, safe="")
            cred += "@"
        return f"{self.scheme}://{cred}{self.host}:{self.port}"

    def __str__(self) -> str:  # never a password in a message or a log line
        return self.url(with_credentials=False)


def redact(url: str) -> str:
    """The URL with any password replaced, for error messages."""
    head, sep, tail = url.rpartition("@")
    if not sep or ":" not in head.split("//", 1)[-1]:
        return url
    scheme, _s, cred = head.partition("//")
    return f"{scheme}//{cred.split(':', 1)[0]}:***@{tail}"


def parse_broker_url(url: str) -> BrokerAddress:
    """mqtt://[user:pass@]host[:port] or mqtts://… ; anything else is a UsageError."""
    try:
        u = urlsplit(url)
        port = u.port
    except ValueError:
        raise UsageError(f"bad broker URL {redact(url)!r}") from None
    if u.scheme not in ("mqtt", "mqtts") or not u.hostname:
        raise UsageError(
            f"bad broker URL {redact(url)!r} (expected mqtt://host:port or mqtts://host:port)"
        )
    tls = u.scheme == "mqtts"
    return BrokerAddress(
        u.hostname,
        port or (DEFAULT_TLS_PORT if tls else DEFAULT_PORT),
        tls,
        unquote(u.username) if u.username else None,
        unquote(u.password) if u.password else None,
    )


def with_credentials(url: str, path: str | os.PathLike[str] | None) -> str:
    """Add the username/password from a credentials file ({"username", "password"}, as
    `auxilio broker config` writes for the gateway and operators) to a broker URL, so the
    password never appears on a command line."""
    if not path:
        return url
    try:
        data = json.loads(open(path).read())
        user, password = data["username"], data["password"]
    except (OSError, ValueError, KeyError, TypeError):
        raise UsageError(f"cannot read broker credentials from {path}") from None
    b = parse_broker_url(url)
    return BrokerAddress(b.host, b.port, b.tls, str(user), str(password)).url()
