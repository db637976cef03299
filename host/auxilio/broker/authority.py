"""Device logins at the broker behind one small interface, so the registry's lifecycle reaches it at once.

Issue 11 §2 and §5: adding, re-keying, revoking, retiring or losing a device takes
effect at the broker without a manual reload. The registry stays the single source
of truth; a ``BrokerAuthority`` only mirrors it:

- ``put_device(login)``: the device may log in as its printed id with this password
  and gets exactly its own topics (``device_rules``): write ``<prefix>/v1/<id>/up``
  and ``…/status``, read ``…/down``, nothing else.
- ``remove_device(label)``: it may no longer log in, and a live session is dropped.
- ``sync(registry)``: make the broker's device logins equal to the registry's (at
  start-up, after an outage, after a change behind our back). Idempotent.

Implementations: ``broker.dynsec`` (mosquitto 2's dynamic-security plugin over its
``$CONTROL`` topic) and ``broker.fileauth`` (password file + SIGHUP, for brokers without
the plugin). The embedded amqtt demo broker needs none: it reads the registry live
(``broker.embedded``). Which one a station talks to is named by the broker admin file
(``ADMIN_FILE``, written by `auxilio broker config`, mode 0600).

Another broker plugs in by implementing the three calls. EMQX 5, for example
(untested here: no EMQX on this machine): its built-in database authenticator with
``password_hash_algorithm = pbkdf2, mac_fun = sha512, iterations = 101`` accepts the
registry's hashes as they are (``POST /api/v5/authentication/password_based:
built_in_database/import_users`` with ``user_id``, ``password_hash`` and ``salt``,
hex-encoded), so a station never needs a device's plaintext there either;
per-device rules go to ``/api/v5/authorization/sources/built_in_database/rules/users``
(``topic``, ``action`` publish|subscribe, ``permission`` allow), with ``no_match = deny``;
``remove_device`` deletes the user and its rules and kicks the session with
``DELETE /api/v5/clients/{clientid}``. EMQX's HTTP authenticator/authorizer is the other
road: the broker asks a C4 service on every CONNECT/PUBLISH and that service answers
from the registry live, so nothing is pushed at all.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from auxilio.broker.config import CONNECTABLE_STATES
from auxilio.errors import UsageError, read_input
from auxilio.private import write_private
from auxilio.protocol import codec

log = logging.getLogger(__name__)

# The admin credentials file `auxilio broker config` writes beside gateway.json, and
# the environment variable that names it for `auxilio devices …` and `broker sync`.
ADMIN_FILE = "broker-admin.json"
ADMIN_ENV = "AUXILIO_BROKER_ADMIN"
DYNSEC, FILES = "dynsec", "files"
# Hosts where a plain mqtt:// admin session never leaves the machine.
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})
KINDS = (DYNSEC, FILES)
READ, WRITE = "read", "write"

Rule = tuple[str, str]  # (READ | WRITE, topic filter)


def device_rules(prefix: str, label: str) -> tuple[Rule, ...]:
    """What a device may do (SPEC §10): its own up/status (write) and down (read), nothing else."""
    base = f"{prefix}/v1/{label}"
    return ((WRITE, f"{base}/up"), (WRITE, f"{base}/status"), (READ, f"{base}/down"))


def gateway_rules(prefix: str) -> tuple[Rule, ...]:
    """The gateway: every uplink and status, every downlink, the attend and self-test
    requests and their answers."""
    return (
        (READ, f"{prefix}/v1/+/up"),
        (READ, f"{prefix}/v1/+/status"),
        (WRITE, f"{prefix}/v1/+/down"),
        (READ, f"{prefix}/c4/attend"),
        (WRITE, f"{prefix}/c4/attend/result/+"),
        (READ, f"{prefix}/c4/selftest"),
        (WRITE, f"{prefix}/c4/selftest/result/+"),
    )


def operator_rules(prefix: str) -> tuple[Rule, ...]:
    """Operator consoles: only attend and self-test requests, and the gateway's answers."""
    return (
        (WRITE, f"{prefix}/c4/attend"),
        (READ, f"{prefix}/c4/attend/result/+"),
        (WRITE, f"{prefix}/c4/selftest"),
        (READ, f"{prefix}/c4/selftest/result/+"),
    )


def is_device_username(name: str) -> bool:
    """A broker username that is a printed device id (with a valid check character)."""
    try:
        return codec.device_str(codec.device_int(name)) == name
    except (codec.FrameError, ValueError, TypeError):
        return False


def login_tag(password_hash: str) -> str:
    """A short digest naming one stored password hash (never the password).

    The dynsec plugin cannot show a client's hash; this tag, kept in the client's
    description, tells ``sync`` whether the broker holds the registry's current one.
    """
    return hashlib.sha256(password_hash.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class DeviceLogin:
    """One device's broker login: its printed id, the registry's hash, and the
    plaintext when the caller has just made it (add, rekey; never stored)."""

    label: str
    password_hash: str = field(repr=False)
    password: str | None = field(default=None, repr=False)


@dataclass
class SyncReport:
    """What sync changed at the broker (printed ids)."""

    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    unchanged: int = 0
    # Logins the broker could not be given from here (see broker.dynsec): they stay
    # refused until a sync on the broker host or a `devices rekey`.
    pending: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "added": self.added,
            "updated": self.updated,
            "removed": self.removed,
            "unchanged": self.unchanged,
            "pending": self.pending,
        }


class BrokerAuthority(Protocol):
    """The operations the registry lifecycle needs from a broker."""

    kind: str

    def put_device(self, login: DeviceLogin) -> None:
        """Let the device log in with this password and its own topics only."""

    def remove_device(self, label: str) -> None:
        """Refuse the device's login from now on and drop its live session."""

    def sync(self, registry: Any) -> SyncReport:
        """Make the broker's device logins equal to the registry's."""

    def close(self) -> None: ...


def wanted_logins(registry: Any) -> tuple[dict[str, str], set[str]]:
    """From the registry: {printed id: hash} of devices that may log in, and the rest's ids."""
    allowed: dict[str, str] = {}
    refused: set[str] = set()
    for rec in registry.list_devices():
        if rec.state in CONNECTABLE_STATES and rec.mqtt_password_hash:
            allowed[rec.label] = rec.mqtt_password_hash
        else:
            refused.add(rec.label)
    return allowed, refused


@dataclass(frozen=True)
class AdminConfig:
    """The broker admin file: which authority, and how to reach it."""

    kind: str
    prefix: str = codec.DEFAULT_PREFIX
    # The broker's config directory when this station can reach it (passwd, pid file).
    directory: Path | None = None
    url: str | None = None  # dynsec: the broker to send commands to
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    source: Path | None = None  # the file it came from, for messages

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> AdminConfig:
        """Read and check an admin file; every problem is one UsageError line."""
        p = Path(path)
        try:
            data = json.loads(read_input(p, "broker admin file").decode("utf-8"))
        except (ValueError, UnicodeDecodeError):
            raise UsageError(f"broker admin file {p} is not valid JSON") from None
        if not isinstance(data, dict) or data.get("authority") not in KINDS:
            raise UsageError(
                f"broker admin file {p}: 'authority' must be one of {', '.join(KINDS)}"
            )
        fields = ("prefix", "directory", "url", "username", "password")
        if any(data.get(k) is not None and not isinstance(data[k], str) for k in fields):
            raise UsageError(f"broker admin file {p}: {', '.join(fields)} must be strings")
        cfg = cls(
            kind=data["authority"],
            prefix=data.get("prefix") or codec.DEFAULT_PREFIX,
            directory=Path(data["directory"]) if data.get("directory") else None,
            url=data.get("url"),
            username=data.get("username"),
            password=data.get("password"),
            source=p,
        )
        if cfg.kind == DYNSEC and not (cfg.url and cfg.username and cfg.password):
            raise UsageError(f"broker admin file {p}: dynsec needs url, username and password")
        if cfg.kind == FILES and cfg.directory is None:
            raise UsageError(f"broker admin file {p}: files needs the broker 'directory'")
        if cfg.kind == DYNSEC:
            from auxilio.broker.url import parse_broker_url

            addr = parse_broker_url(cfg.url or "")
            # The admin session carries new device passwords (the plugin takes only
            # plaintext): never in clear beyond this host.
            if not addr.tls and addr.host not in LOOPBACK_HOSTS:
                raise UsageError(
                    f"broker admin file {p}: a broker on another host needs mqtts:// "
                    "(the admin session carries device passwords)"
                )
        return cfg

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"authority": self.kind, "prefix": self.prefix}
        if self.directory is not None:
            out["directory"] = str(self.directory)
        for k in ("url", "username", "password"):
            if getattr(self, k) is not None:
                out[k] = getattr(self, k)
        return out


def admin_path(explicit: str | os.PathLike[str] | None) -> Path | None:
    """--broker-admin FILE, else $AUXILIO_BROKER_ADMIN, else None (no broker to tell)."""
    chosen = explicit or os.environ.get(ADMIN_ENV)
    return Path(chosen) if chosen else None


def open_authority(cfg: AdminConfig) -> BrokerAuthority:
    """The implementation the admin file names (connections are made on first use)."""
    if cfg.kind == DYNSEC:
        from auxilio.broker.dynsec import DynsecAuthority

        return DynsecAuthority(cfg)
    from auxilio.broker.fileauth import FileAuthority

    return FileAuthority(cfg)


def conf_security(kind: str, directory: Path) -> list[str] | None:
    """mosquitto.conf lines for the authority's kind (None: the password file and ACL)."""
    if kind == DYNSEC:
        from auxilio.broker.dynsec import conf_lines

        return conf_lines(directory)
    return None


def write_admin(
    files: Any,
    registry: Any,
    kind: str,
    gateway: dict[str, str],
    operator: dict[str, str],
    *,
    prefix: str,
    url: str,
) -> Path:
    """Write the broker admin file beside gateway.json (mode 0600); for dynsec also the
    plugin's start-up state from the registry. Called by broker.config.write_config."""
    path = files.directory / ADMIN_FILE
    if kind == DYNSEC:
        from auxilio.broker import dynsec

        admin = dynsec.admin_credentials(path)
        if admin["username"] in (gateway["username"], operator["username"]):
            raise UsageError(f"the gateway/operator user may not be named {admin['username']}")
        services = dynsec.service_logins(gateway, operator, admin)
        dynsec.write_state(files, registry, services, prefix)
        cfg = AdminConfig(DYNSEC, prefix, files.directory, url, **admin)
    else:
        cfg = AdminConfig(FILES, prefix, files.directory)
    write_private(path, json.dumps(cfg.as_json(), indent=2) + "\n")
    return path


def apply_device(authority: BrokerAuthority, registry: Any, device: int | str, **kw: Any) -> str:
    """Mirror one device's registry row at the broker; returns "put" or "removed".

    ``password=``: the plaintext just generated by add/rekey (used by brokers whose API
    needs it, never kept).
    """
    rec = registry.require_device(device)
    if rec.state in CONNECTABLE_STATES and rec.mqtt_password_hash:
        authority.put_device(DeviceLogin(rec.label, rec.mqtt_password_hash, kw.get("password")))
        return "put"
    authority.remove_device(rec.label)
    return "removed"
