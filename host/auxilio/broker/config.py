"""Write mosquitto.conf, the password file and the ACL from the registry (issue 4 §8).

Each device in service (spare, assigned, lost) gets a user named by its printed id
with the hash stored at `devices add`; revoked and retired devices get none, so they
cannot even connect. Pattern ACLs confine each device to its own topics (SPEC §10):
it may write only ``<prefix>/v1/<itself>/up`` and ``…/status`` and read only
``…/down``. One gateway user reads every ``up``/``status`` and writes every ``down``.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from auxilio.broker.passwords import hash_password, new_password
from auxilio.errors import UsageError
from auxilio.private import write_private
from auxilio.protocol import codec

log = logging.getLogger(__name__)

CONF_FILE = "mosquitto.conf"
PASSWD_FILE = "passwd"
ACL_FILE = "acl"
# In data/ (the broker user's): mosquitto writes it after dropping privileges, and the
# files authority (broker/fileauth.py) SIGHUPs the broker it names, however it was
# started (PID_FILE below is only `auxilio broker run`'s own).
MOSQUITTO_PID_FILE = "mosquitto.pid"
# The gateway's own MQTT credentials (plaintext, mode 0600), kept across regenerations
# so rewriting the config never locks out a running gateway.
GATEWAY_FILE = "gateway.json"
DEFAULT_GATEWAY_USER = "gateway"
# Operator consoles (`auxilio monitor`, `auxilio attend`) may only nudge the gateway
# on the attend control topic; the gateway re-checks the registry before it signs.
OPERATOR_FILE = "operator.json"
DEFAULT_OPERATOR_USER = "operator"
DEFAULT_PORT = 1883
DEFAULT_TLS_PORT = 8883
# States whose devices may connect; a lost device still reports (its alerts are
# recorded and flagged by the gateway), revoked and retired ones may not.
CONNECTABLE_STATES = ("spare", "assigned", "lost")
# How often mosquitto writes its persistence file (seconds). Devices retry until a
# genuine ACK anyway, so this only bounds what a broker crash makes them resend.
AUTOSAVE_INTERVAL_S = 5
# Per-client queue while a client (e.g. the gateway) is offline; mosquitto's default
# of 1000 could drop a burst of alerts during a gateway restart.
MAX_QUEUED_MESSAGES = 100000
# Largest MQTT packet the broker accepts from any client (issue 8 §2). Frames are at
# most 96 bytes and attend requests 512; a few KB leaves room for topics and CONNECT
# while stopping a login from pushing megabytes at the gateway.
MAX_PACKET_SIZE = 4096
_PREFIX_RE = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
_USER_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


@dataclass
class BrokerFiles:
    """What write_config produced."""

    directory: Path
    conf: Path
    passwd: Path
    acl: Path
    gateway: Path
    operator: Path
    devices: list[str] = field(default_factory=list)  # printed ids with a broker user
    skipped: list[str] = field(default_factory=list)  # in service but no password hash
    run_as: str | None = None  # the `user` line of mosquitto.conf
    blocked: Path | None = None  # why run_as became root: a directory mosquitto cannot enter
    authority: str = "files"  # who holds the logins (broker/authority.py)
    admin: Path | None = None  # the broker admin file (broker/authority.py ADMIN_FILE)

    def as_dict(self) -> dict[str, Any]:
        return {
            "directory": str(self.directory),
            "conf": str(self.conf),
            "passwd": str(self.passwd),
            "acl": str(self.acl),
            "gateway": str(self.gateway),
            "operator": str(self.operator),
            "devices": len(self.devices),
            "skipped": self.skipped,
            "run_as": self.run_as,
            "authority": self.authority,
            "admin": str(self.admin) if self.admin else None,
        }


def render_acl(
    prefix: str = codec.DEFAULT_PREFIX,
    gateway_user: str = DEFAULT_GATEWAY_USER,
    operator_user: str = DEFAULT_OPERATOR_USER,
) -> str:
    """The ACL file: gateway and operator users plus patterns where %u is the device's printed id."""
    return (
        "# Written by `auxilio broker config`; regenerate rather than edit.\n"
        "# The gateway reads every uplink and status, writes every downlink, reads\n"
        "# the operators' attend and self-test requests and answers each one.\n"
        f"user {gateway_user}\n"
        f"topic read {prefix}/v1/+/up\n"
        f"topic read {prefix}/v1/+/status\n"
        f"topic write {prefix}/v1/+/down\n"
        f"topic read {prefix}/c4/attend\n"
        f"topic write {prefix}/c4/attend/result/+\n"
        f"topic read {prefix}/c4/selftest\n"
        f"topic write {prefix}/c4/selftest/result/+\n"
        "\n"
        "# Operator consoles: only attend and self-test requests, and the gateway's answers.\n"
        f"user {operator_user}\n"
        f"topic write {prefix}/c4/attend\n"
        f"topic read {prefix}/c4/attend/result/+\n"
        f"topic write {prefix}/c4/selftest\n"
        f"topic read {prefix}/c4/selftest/result/+\n"
        "\n"
        "# Every device: only its own topics (username = printed device id).\n"
        f"pattern write {prefix}/v1/%u/up\n"
        f"pattern write {prefix}/v1/%u/status\n"
        f"pattern read {prefix}/v1/%u/down\n"
    )


def render_conf(
    directory: Path,
    *,
    port: int = DEFAULT_PORT,
    bind: str = "127.0.0.1",
    tls_cert: Path | None = None,
    tls_key: Path | None = None,
    tls_ca: Path | None = None,
    tls_port: int = DEFAULT_TLS_PORT,
    tls_bind: str | None = None,
    run_as: str | None = None,
    log_file: Path | None = None,
    security: list[str] | None = None,
) -> str:
    """``security``: the login/ACL lines (default: the password file and pattern ACL)."""
    lines = [
        "# Written by `auxilio broker config`; regenerate rather than edit.",
        f"# {dt.datetime.now(dt.timezone.utc).isoformat(timespec='seconds')}",
        "per_listener_settings false",
        "allow_anonymous false",
        f"max_packet_size {MAX_PACKET_SIZE}",
        *(
            security
            or [f"password_file {directory / PASSWD_FILE}", f"acl_file {directory / ACL_FILE}"]
        ),
        f"pid_file {directory / 'data' / MOSQUITTO_PID_FILE}",
        # Nagle + delayed ACK adds ~88 ms per QoS1 round trip (NOTES.md, DESIGN §3).
        "set_tcp_nodelay true",
        "persistence true",
        f"persistence_location {directory / 'data'}/",
        f"autosave_interval {AUTOSAVE_INTERVAL_S}",
        f"max_queued_messages {MAX_QUEUED_MESSAGES}",
        f"log_dest file {log_file}" if log_file else "log_dest stderr",
        "log_type error",
        "log_type warning",
        "log_type notice",
        "connection_messages true",
    ]
    if run_as:
        lines.append(f"user {run_as}")
    # A login can never take another's session (issue 8 §2): the client id is
    # the username, so a device or operator login that claims the gateway's
    # client id only gets its own session. A listener option in mosquitto 2.
    same_id = "use_username_as_clientid true"
    lines += ["", f"listener {port} {bind}", same_id]
    if tls_cert is not None and tls_key is not None:
        lines += [
            "",
            f"listener {tls_port} {tls_bind or bind}",
            same_id,
            f"certfile {tls_cert}",
            f"keyfile {tls_key}",
            "tls_version tlsv1.2",
        ]
        if tls_ca is not None:
            lines.append(f"cafile {tls_ca}")
    return "\n".join(lines) + "\n"


def _gateway_credentials(path: Path, user: str) -> dict[str, str]:
    try:
        data = json.loads(path.read_text())
        if (
            data.get("username") == user
            and isinstance(data.get("password"), str)
            and data["password"]
        ):
            return {"username": user, "password": data["password"]}
    except (OSError, ValueError):
        pass
    return {"username": user, "password": new_password()}


def _check_file(p: str | os.PathLike[str] | None, what: str) -> Path | None:
    if p is None:
        return None
    path = Path(p).resolve()
    if not path.is_file():
        raise UsageError(f"{what} {p} not found")
    return path


def write_config(
    out_dir: str | os.PathLike[str],
    registry: Any,
    *,
    port: int = DEFAULT_PORT,
    bind: str = "127.0.0.1",
    tls_cert: str | os.PathLike[str] | None = None,
    tls_key: str | os.PathLike[str] | None = None,
    tls_ca: str | os.PathLike[str] | None = None,
    tls_port: int = DEFAULT_TLS_PORT,
    tls_bind: str | None = None,
    prefix: str = codec.DEFAULT_PREFIX,
    gateway_user: str = DEFAULT_GATEWAY_USER,
    run_as: str | None = None,
    log_file: str | os.PathLike[str] | None = None,
    authority: str = "files",
) -> BrokerFiles:
    """Generate the broker files in ``out_dir`` from the registry's devices.

    ``authority``: "files" (password file + pattern ACL, reloaded by SIGHUP) or
    "dynsec" (mosquitto's dynamic-security plugin, changed live); see broker/authority.py.
    """
    from auxilio.broker import authority as auth

    if authority not in auth.KINDS:
        raise UsageError(f"authority must be one of {', '.join(auth.KINDS)}")
    security = auth.conf_security(authority, Path(out_dir).resolve())  # checks the plugin
    if not _PREFIX_RE.match(prefix):
        raise UsageError("topic prefix must be 1-32 letters, digits, '_' or '-'")
    if not _USER_RE.match(gateway_user):
        raise UsageError("gateway user must be 1-64 letters, digits, '_', '.' or '-'")
    for name, value in (("port", port), ("TLS port", tls_port)):
        if not 1 <= int(value) <= 65535:
            raise UsageError(f"{name} must be 1-65535")
    if (tls_cert is None) != (tls_key is None):
        raise UsageError("a TLS listener needs both --tls-cert and --tls-key")
    cert, key, ca = (
        _check_file(tls_cert, "TLS certificate"),
        _check_file(tls_key, "TLS key"),
        _check_file(tls_ca, "TLS CA file"),
    )
    directory = Path(out_dir).resolve()
    try:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "data").mkdir(exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create {directory}: {exc.strerror}") from None

    files = _files(directory)
    if run_as is None:
        # mosquitto started as root drops to its own user, which must then reach
        # the password file: in a directory it cannot enter (any `mktemp -d`)
        # mosquitto fails with "Unable to open pwfile". Stay root there.
        files.blocked = blocked_path(directory / PASSWD_FILE, broker_user(None))
        if files.blocked is not None:
            run_as = "root"  # the CLI says so (BrokerFiles.blocked)
    files.run_as = run_as
    gw = _gateway_credentials(files.gateway, gateway_user)
    op = _gateway_credentials(files.operator, DEFAULT_OPERATOR_USER)
    lines = _password_lines(files, registry, gw, op)

    url = f"mqtt://{'127.0.0.1' if bind in ('0.0.0.0', '::') else bind}:{port}"
    write_private(
        files.gateway, json.dumps({**gw, "url": url, "prefix": prefix}, indent=2) + "\n", 0o600
    )
    write_private(
        files.operator, json.dumps({**op, "url": url, "prefix": prefix}, indent=2) + "\n", 0o600
    )
    write_private(files.passwd, "\n".join(lines) + "\n", 0o600)
    write_private(files.acl, render_acl(prefix, gateway_user), 0o644)
    write_private(
        files.conf,
        render_conf(
            directory,
            port=port,
            bind=bind,
            tls_cert=cert,
            tls_key=key,
            tls_ca=ca,
            tls_port=tls_port,
            tls_bind=tls_bind,
            run_as=run_as,
            log_file=Path(log_file).resolve() if log_file else None,
            security=security,
        ),
        0o644,
    )
    _hand_to_broker_user(files, run_as)
    # Issue 11 §2: the admin file lifecycle commands use to reach the broker at once.
    files.authority = authority
    files.admin = auth.write_admin(files, registry, authority, gw, op, prefix=prefix, url=url)
    if files.skipped:
        log.warning(
            "broker config: %d device(s) have no MQTT password and were left out",
            len(files.skipped),
        )
    return files


def _files(directory: Path) -> BrokerFiles:
    return BrokerFiles(
        directory=directory,
        conf=directory / CONF_FILE,
        passwd=directory / PASSWD_FILE,
        acl=directory / ACL_FILE,
        gateway=directory / GATEWAY_FILE,
        operator=directory / OPERATOR_FILE,
    )


def _password_lines(
    files: BrokerFiles, registry: Any, gw: dict[str, str], op: dict[str, str]
) -> list[str]:
    """The password file: gateway, operator, then every connectable device with a hash."""
    lines = [
        f"{gw['username']}:{hash_password(gw['password'])}",
        f"{op['username']}:{hash_password(op['password'])}",
    ]
    for rec in registry.list_devices():
        if rec.state not in CONNECTABLE_STATES:
            continue
        if not rec.mqtt_password_hash:
            files.skipped.append(rec.label)
            continue
        if rec.label in (gw["username"], op["username"]):
            raise UsageError("gateway/operator user name collides with a device id")
        lines.append(f"{rec.label}:{rec.mqtt_password_hash}")
        files.devices.append(rec.label)
    return lines


def refresh_users(out_dir: str | os.PathLike[str], registry: Any) -> BrokerFiles:
    """Rewrite only the password file of an existing config from the registry (new devices).

    Listeners, TLS and ACL stay as `auxilio broker config` wrote them, and the
    gateway and operator keep their passwords (from gateway.json and
    operator.json). Like a full regeneration it drops users added by hand.
    A running mosquitto needs SIGHUP to apply it (reload_broker).
    """
    directory = Path(out_dir).resolve()
    files = _files(directory)
    try:
        gw = json.loads(files.gateway.read_text())
        op = json.loads(files.operator.read_text())
        creds = [{"username": str(c["username"]), "password": str(c["password"])} for c in (gw, op)]
    except (OSError, ValueError, KeyError, TypeError):
        raise UsageError(
            f"{directory} is not a broker config (no gateway.json/operator.json): "
            "run `auxilio broker config --out DIR` first"
        ) from None
    lines = _password_lines(files, registry, creds[0], creds[1])
    write_private(files.passwd, "\n".join(lines) + "\n")
    files.run_as = _conf_user(files.conf)
    _hand_to_broker_user(files, files.run_as)
    return files


def _conf_user(conf: Path) -> str | None:
    """The `user` a mosquitto.conf names (None: mosquitto's default)."""
    try:
        for line in conf.read_text().splitlines():
            key, _sep, value = line.strip().partition(" ")
            if key == "user" and value.strip():
                return value.strip()
    except OSError:
        pass
    return None


# The user mosquitto switches to when started as root, unless its config says `user`.
MOSQUITTO_DEFAULT_USER = "mosquitto"
# The pid file `auxilio broker run` keeps in the config directory (SIGHUP reloads users).
PID_FILE = "broker.pid"


def broker_user(run_as: str | None) -> str:
    return run_as or MOSQUITTO_DEFAULT_USER


def blocked_path(target: Path, user: str) -> Path | None:
    """The first directory above `target` that `user` cannot enter, when we run as root.

    None when not root (mosquitto keeps our user), when the user is root or
    does not exist, or when every directory on the way is searchable by it.
    """
    if os.geteuid() != 0 or user == "root":
        return None
    import pwd

    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        return None
    groups = set(os.getgrouplist(user, pw.pw_gid))
    for d in reversed(Path(target).resolve().parents):
        try:
            st = d.stat()
        except OSError:
            return d
        if st.st_uid == pw.pw_uid:
            bit = 0o100
        elif st.st_gid in groups:
            bit = 0o010
        else:
            bit = 0o001
        if not st.st_mode & bit:
            return d
    return None


def reload_broker(out_dir: str | os.PathLike[str]) -> int | None:
    """SIGHUP the `auxilio broker run` serving this directory; its pid, or None if none runs."""
    import signal

    try:
        pid = int((Path(out_dir) / PID_FILE).read_text().strip())
        # A stale file may name a pid since reused by another program, which SIGHUP
        # would kill: signal only a live `auxilio ... broker run` process.
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        if b"broker" not in argv or b"run" not in argv:
            return None
        os.kill(pid, signal.SIGHUP)
    except (OSError, ValueError):
        return None
    return pid


def _hand_to_broker_user(files: BrokerFiles, run_as: str | None) -> None:
    """As root, mosquitto drops to its own user before reading the password file.

    Give that user the files it must read or write (password file, ACL, persistence
    dir); when run_as is root (or we are not root) nothing needs changing.
    """
    if os.geteuid() != 0 or run_as == "root":
        return
    import pwd

    try:
        pw = pwd.getpwnam(run_as or "mosquitto")
    except KeyError:
        return
    for p in (files.passwd, files.acl, files.directory / "data"):
        os.chown(p, pw.pw_uid, pw.pw_gid)
