"""Device logins in mosquitto 2's dynamic-security plugin: its start-up file from the registry, and live commands.

What mosquitto 2.0.11 (Debian 12) accepts, read from the plugin's documentation and
checked against the real broker in tests/broker/test_dynsec.py:

- Its JSON file holds each client's PBKDF2-SHA512 hash as ``salt`` (12 bytes),
  ``password`` (64 bytes, both base64) and ``iterations``: the same numbers as the
  registry's ``$7$`` hashes, so `broker config` writes every login without knowing a
  single device password. The plugin reads the file only at start (SIGHUP does not
  reload it) and rewrites it after every command, so a restart keeps live changes.
- Its ``$CONTROL/dynamic-security/v1`` commands take plaintext passwords only
  (``createClient``, ``setClientPassword``): there is no way to install a hash live.
  `devices add` and `rekey` have the plaintext for a moment and send it (over TLS in
  production); nothing keeps it.
- ``disableClient`` and ``deleteClient`` kick the client's live session at once.
- ACL topics have no ``%u`` substitution, so each device gets its own role.

``sync`` needs the closest right thing for a login whose plaintext nobody has (a
client deleted behind our back, a device added while the broker was down): the
client is created without a password, so the plugin defers to mosquitto's
``password_file``, where the registry's hash goes, and mosquitto re-reads that on
SIGHUP. The plugin still decides the ACL (the client has its role), and a disabled
client is refused before the file is consulted. That needs the broker's host; from
elsewhere such logins are reported as pending.

Responses arrive on ``…/v1/response`` (QoS 0, to every subscriber), matched by
``correlationData``. Commands travel in packets under the broker's 4 KB limit.
"""

from __future__ import annotations

import base64
import binascii
import fcntl
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from auxilio.broker.authority import (
    DYNSEC,
    READ,
    WRITE,
    AdminConfig,
    DeviceLogin,
    Rule,
    SyncReport,
    device_rules,
    gateway_rules,
    is_device_username,
    login_tag,
    operator_rules,
    wanted_logins,
)
from auxilio.broker.client import AuthenticationFailed, is_auth_refusal, make_client
from auxilio.broker.config import MAX_PACKET_SIZE, MOSQUITTO_PID_FILE, PASSWD_FILE
from auxilio.broker.fileauth import PasswordFile, reload_broker
from auxilio.broker.passwords import hash_password
from auxilio.broker.url import parse_broker_url
from auxilio.errors import AuxilioError, ConnectionFailed, UsageError
from auxilio.private import write_private

log = logging.getLogger(__name__)

CONTROL_TOPIC = "$CONTROL/dynamic-security/v1"
RESPONSE_TOPIC = CONTROL_TOPIC + "/response"
# Where Debian and most builds install the plugin (the first that exists is used).
PLUGIN_PATHS = (
    "/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so",
    "/usr/lib/aarch64-linux-gnu/mosquitto_dynamic_security.so",
    "/usr/lib/mosquitto_dynamic_security.so",
    "/usr/local/lib/mosquitto_dynamic_security.so",
)
DYNSEC_FILE = "dynamic-security.json"  # in the data/ directory the broker user owns
ADMIN_USER = "auxilio-admin"
GATEWAY_ROLE, OPERATOR_ROLE, ADMIN_ROLE = "auxilio-gateway", "auxilio-operator", "auxilio-admin"
DEVICE_ROLE_PREFIX = "auxilio-device-"
# How long to wait for the broker's CONNACK/SUBACK, and for each command batch's answer.
CONNECT_TIMEOUT_S = 5.0
COMMAND_TIMEOUT_S = 5.0
# Largest command payload per PUBLISH: the broker drops any packet over MAX_PACKET_SIZE
# (issue 8 §2); leave room for the fixed header, topic and packet id.
MAX_COMMAND_BYTES = MAX_PACKET_SIZE - 256
# Answers that mean "already as wanted": each batch below is written to converge
# whatever the broker held before, so it can simply be sent again.
_ALREADY = {
    "createRole": {"Role already exists"},
    "createClient": {"Client already exists"},
    "deleteClient": {"Client not found"},
    "deleteRole": {"Role not found"},
    "removeClientRole": {"Role not found"},
    "getClient": {"Client not found"},
    "getRole": {"Role not found"},
}
_DENY_ALL = [
    {"acltype": t, "allow": False}
    for t in ("publishClientSend", "publishClientReceive", "subscribe", "unsubscribe")
]


class DynsecError(AuxilioError):
    """The plugin refused a command (its own words in the message)."""


# ------------------------------------------------------------- data ---


def plugin_password(encoded: str) -> dict[str, Any]:
    """A ``$7$`` hash (broker.passwords) as the plugin's salt/password/iterations fields."""
    try:
        _, kind, iterations, salt64, hash64 = encoded.split("$")
        salt, digest = base64.b64decode(salt64), base64.b64decode(hash64)
        rounds = int(iterations)
    except (ValueError, binascii.Error):
        raise UsageError("a stored MQTT password hash is not in mosquitto's $7$ form") from None
    # mosquitto 2.0 keeps exactly 12 salt and 64 hash bytes (struct mosquitto_pw).
    if kind != "7" or len(salt) != 12 or len(digest) != 64 or rounds < 1:
        raise UsageError("a stored MQTT password hash is not a 12-byte-salt PBKDF2-SHA512")
    return {"salt": salt64, "password": hash64, "iterations": rounds}


def role_name(label: str) -> str:
    return DEVICE_ROLE_PREFIX + label


def _acl(acltype: str, topic: str) -> dict[str, Any]:
    return {"acltype": acltype, "topic": topic, "priority": 0, "allow": True}


def role_acls(rules: Iterable[Rule]) -> list[dict[str, Any]]:
    """Allow rules in the plugin's terms; with the default deny, nothing else is allowed.

    A read rule without wildcards is a literal subscription, so a device may subscribe
    to its own ``down`` and not to ``+/down``; every delivery is checked again
    (publishClientReceive).
    """
    out: list[dict[str, Any]] = []
    for access, topic in rules:
        if access == WRITE:
            out.append(_acl("publishClientSend", topic))
            continue
        assert access == READ
        kind = "Pattern" if ("+" in topic or "#" in topic) else "Literal"
        out += [
            _acl("subscribe" + kind, topic),
            _acl("unsubscribe" + kind, topic),
            _acl("publishClientReceive", topic),
        ]
    return out


def _admin_rules() -> list[dict[str, Any]]:
    topic = "$CONTROL/dynamic-security/#"
    return [_acl(t, topic) for t in ("publishClientSend", "publishClientReceive")] + [
        _acl("subscribePattern", topic)
    ]


def describe(tag: str, via_file: bool = False) -> str:
    """The client description sync reads back: which hash, and who checks it."""
    return f"auxilio pw={tag} via={'passwd' if via_file else 'dynsec'}"


def _parse_description(text: str | None) -> tuple[str | None, bool]:
    parts = dict(p.split("=", 1) for p in (text or "").split()[1:] if "=" in p)
    return parts.get("pw"), parts.get("via") == "passwd"


def _service_roles(prefix: str) -> dict[str, list[dict[str, Any]]]:
    return {
        GATEWAY_ROLE: role_acls(gateway_rules(prefix)),
        OPERATOR_ROLE: role_acls(operator_rules(prefix)),
        ADMIN_ROLE: _admin_rules(),
    }


def render_state(
    prefix: str,
    devices: dict[str, str],
    services: list[tuple[str, str, str]],
) -> dict[str, Any]:
    """The plugin's file: services [(username, password hash, role)] and devices {id: hash}."""
    clients = [
        {
            "username": user,
            "textname": f"auxilio {role.removeprefix('auxilio-')}",
            **plugin_password(encoded),
            "roles": [{"rolename": role}],
        }
        for user, encoded, role in services
    ]
    roles = [{"rolename": r, "acls": acls} for r, acls in _service_roles(prefix).items()]
    for label, encoded in devices.items():
        clients.append(
            {
                "username": label,
                "textname": "auxilio device",
                "textdescription": describe(login_tag(encoded)),
                **plugin_password(encoded),
                "roles": [{"rolename": role_name(label)}],
            }
        )
        roles.append({"rolename": role_name(label), "acls": role_acls(device_rules(prefix, label))})
    return {
        "defaultACLAccess": {a["acltype"]: False for a in _DENY_ALL},
        "clients": clients,
        "groups": [],
        "roles": roles,
    }


def plugin_path() -> str:
    for p in PLUGIN_PATHS:
        if Path(p).is_file():
            return p
    raise UsageError(
        "mosquitto's dynamic-security plugin is not installed "
        f"(looked for {PLUGIN_PATHS[0]}); use --authority files"
    )


def conf_lines(directory: Path) -> list[str]:
    """mosquitto.conf lines that load the plugin (and the password file it defers to)."""
    return [
        f"plugin {plugin_path()}",
        f"plugin_opt_config_file {directory / 'data' / DYNSEC_FILE}",
        f"password_file {directory / PASSWD_FILE}",
    ]


def write_state(
    files: Any,
    registry: Any,
    services: list[tuple[str, str, str]],
    prefix: str,
) -> None:
    """Write the plugin's file from the registry for the broker's next start.

    A running broker keeps its own state (and overwrites the file on its next
    change): `auxilio broker sync` is the way to reconcile a live one.
    """
    allowed, _refused = wanted_logins(registry)
    data_dir = files.directory / "data"
    path = data_dir / DYNSEC_FILE
    write_private(path, json.dumps(render_state(prefix, allowed, services), indent=1) + "\n")
    st = data_dir.stat()
    if os.geteuid() == 0:
        os.chown(path, st.st_uid, st.st_gid)  # the broker user rewrites it
    PasswordFile(files.passwd).write({})  # the fallback starts empty (see module doc)


def admin_credentials(path: Path) -> dict[str, str]:
    """The admin login kept across regenerations, like gateway.json (new when absent)."""
    from auxilio.broker.passwords import new_password

    try:
        old = AdminConfig.load(path)
        if old.kind == DYNSEC and old.username and old.password:
            return {"username": old.username, "password": old.password}
    except UsageError:
        pass
    return {"username": ADMIN_USER, "password": new_password()}


def service_logins(
    gateway: dict[str, str], operator: dict[str, str], admin: dict[str, str]
) -> list[tuple[str, str, str]]:
    return [
        (gateway["username"], hash_password(gateway["password"]), GATEWAY_ROLE),
        (operator["username"], hash_password(operator["password"]), OPERATOR_ROLE),
        (admin["username"], hash_password(admin["password"]), ADMIN_ROLE),
    ]


# ----------------------------------------------------------- client ---


class DynsecAdmin:
    """One admin session with the plugin: send command batches, wait for each answer."""

    def __init__(self, url: str, username: str, password: str) -> None:
        # str(addr) never shows the password (BrokerAddress.__str__).
        self.addr = replace(parse_broker_url(url), username=username, password=password)
        self._c = make_client(self.addr, username)
        self._c.connect_timeout = CONNECT_TIMEOUT_S
        self._cond = threading.Condition()
        self._answers: dict[str, dict[str, Any]] = {}
        self._connack: Any = None
        self._ready = False  # subscribed to the answers on the current connection
        self._granted: Any = None
        self._c.on_connect = self._on_connect
        self._c.on_subscribe = self._on_subscribe
        self._c.on_message = self._on_message
        self._c.on_disconnect = self._on_disconnect
        self._nonce = uuid.uuid4().hex[:12]
        self._seq = 0

    # paho callbacks (its network thread)
    def _on_connect(self, client: Any, _u: Any, _f: Any, rc: Any, _p: Any = None) -> None:
        with self._cond:
            self._connack = rc
            self._cond.notify_all()
        if not rc.is_failure:
            client.subscribe(RESPONSE_TOPIC, qos=1)

    def _on_subscribe(self, _c: Any, _u: Any, _mid: Any, codes: Any, _p: Any = None) -> None:
        with self._cond:
            self._granted = codes[0] if codes else None
            self._ready = True
            self._cond.notify_all()

    def _on_disconnect(self, *_a: Any) -> None:
        with self._cond:
            self._ready = False
            self._cond.notify_all()

    def _on_message(self, _c: Any, _u: Any, msg: Any) -> None:
        try:
            responses = json.loads(msg.payload)["responses"]
        except (ValueError, KeyError, TypeError):
            return
        with self._cond:
            for r in responses if isinstance(responses, list) else ():
                cid = r.get("correlationData") if isinstance(r, dict) else None
                if isinstance(cid, str) and cid.startswith(self._nonce):
                    self._answers[cid] = r
            self._cond.notify_all()

    def connect(self) -> DynsecAdmin:
        try:
            self._c.connect(self.addr.host, self.addr.port, keepalive=30)
        except OSError as exc:
            raise ConnectionFailed(
                f"broker {self.addr} does not answer: {exc.strerror or exc}"
            ) from None
        self._c.loop_start()
        try:
            self._wait_ready()
        except AuxilioError:
            self.close()
            raise
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + CONNECT_TIMEOUT_S
        with self._cond:
            while not self._ready:
                if self._connack is not None and self._connack.is_failure:
                    rc, self._connack = self._connack, None
                    if is_auth_refusal(rc):
                        raise AuthenticationFailed(
                            f"broker {self.addr} refused the broker admin login ({rc}); "
                            "check the broker admin file"
                        )
                    raise ConnectionFailed(f"broker {self.addr} refused the admin session ({rc})")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise ConnectionFailed(
                        f"broker {self.addr} does not answer (no CONNACK/SUBACK)"
                    )
                self._cond.wait(left)
            if getattr(self._granted, "is_failure", False):
                raise DynsecError(
                    f"broker {self.addr} does not let this login read {RESPONSE_TOPIC}: "
                    "not the dynamic-security admin, or the plugin is not loaded"
                )

    def run(self, commands: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Send the commands in order (several packets if needed); their answers in order.

        An answer with an error not in _ALREADY raises DynsecError. A batch whose
        connection drops before its answers (e.g. another admin session took the
        client id) is sent again once: every batch here converges when repeated.
        """
        out: list[dict[str, Any]] = []
        for chunk in _chunks(commands):
            try:
                answers = self._send(chunk)
            except ConnectionFailed:
                self._wait_ready()
                answers = self._send(chunk)
            for cmd, ans in zip(chunk, answers, strict=True):
                err = ans.get("error")
                if err and err not in _ALREADY.get(cmd["command"], ()):
                    target = cmd.get("username") or cmd.get("rolename") or ""
                    raise DynsecError(f"broker refused {cmd['command']} {target}: {err}".strip())
            out += answers
        return out

    def _send(self, chunk: list[dict[str, Any]]) -> list[dict[str, Any]]:
        ids = []
        for cmd in chunk:
            self._seq += 1
            cmd["correlationData"] = f"{self._nonce}-{self._seq}"
            ids.append(cmd["correlationData"])
        payload = json.dumps({"commands": chunk}, separators=(",", ":"))
        deadline = time.monotonic() + COMMAND_TIMEOUT_S
        with self._cond:
            while not self._ready:  # e.g. reconnecting after a takeover
                left = deadline - time.monotonic()
                if left <= 0:
                    raise ConnectionFailed(f"lost the admin session with broker {self.addr}")
                self._cond.wait(left)
        self._c.publish(CONTROL_TOPIC, payload, qos=1)
        with self._cond:
            while not all(i in self._answers for i in ids):
                left = deadline - time.monotonic()
                if left <= 0 or not self._ready:
                    raise ConnectionFailed(
                        f"no answer from the dynamic-security plugin on broker {self.addr} "
                        f"within {COMMAND_TIMEOUT_S:.0f} s (is it loaded?)"
                    )
                self._cond.wait(left)
            return [self._answers.pop(i) for i in ids]

    def close(self) -> None:
        try:
            self._c.disconnect()
        finally:
            self._c.loop_stop()


def _chunks(commands: list[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    # Room for the wrapper and each command's correlationData (~40 bytes).
    chunk: list[dict[str, Any]] = []
    size = 20
    for cmd in commands:
        n = len(json.dumps(cmd, separators=(",", ":"))) + 48
        if n + 20 > MAX_COMMAND_BYTES:
            raise UsageError(f"dynamic-security command {cmd['command']} is too large")
        if chunk and size + n > MAX_COMMAND_BYTES:
            yield chunk
            chunk, size = [], 20
        chunk.append(cmd)
        size += n
    if chunk:
        yield chunk


# -------------------------------------------------------- authority ---


def _role_upsert(name: str, acls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    # createRole is refused when the role exists; modifyRole then sets exactly these ACLs.
    return [
        {"command": "createRole", "rolename": name},
        {"command": "modifyRole", "rolename": name, "acls": acls},
    ]


class DynsecAuthority:
    """BrokerAuthority over the plugin's control topic, with an admin login."""

    kind = DYNSEC

    def __init__(self, cfg: AdminConfig) -> None:
        self.cfg = cfg
        self._admin: DynsecAdmin | None = None
        self._lock_fd: int | None = None
        self._mutex = threading.Lock()  # one batch at a time on the shared session

    # One admin session per station at a time: with use_username_as_clientid, a
    # second one with the same login would take over the first's client id.
    def _session(self) -> DynsecAdmin:
        if self._admin is None:
            self._lock()
            assert self.cfg.url and self.cfg.username and self.cfg.password
            self._admin = DynsecAdmin(self.cfg.url, self.cfg.username, self.cfg.password)
            try:
                self._admin.connect()
            except AuxilioError:
                self._admin = None
                self._unlock()
                raise
        return self._admin

    def _lock(self) -> None:
        if self.cfg.source is None:
            return
        try:
            fd = os.open(f"{self.cfg.source}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        except OSError:
            return  # a read-only place: go on without (a takeover is retried)
        fcntl.flock(fd, fcntl.LOCK_EX)
        self._lock_fd = fd

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _run(self, commands: list[dict[str, Any]]) -> list[dict[str, Any]]:
        with self._mutex:
            return self._session().run(commands)

    @property
    def _fallback(self) -> PasswordFile | None:
        """The broker's password file, when this station is the broker's host."""
        d = self.cfg.directory
        return PasswordFile(d / PASSWD_FILE) if d is not None and d.is_dir() else None

    def _device_client(self, login: DeviceLogin, via_file: bool) -> list[dict[str, Any]]:
        label, role = login.label, role_name(login.label)
        create: dict[str, Any] = {
            "command": "createClient",
            "username": label,
            "textname": "auxilio device",
            "textdescription": describe(login_tag(login.password_hash), via_file),
        }
        if not via_file:
            assert login.password is not None
            create["password"] = login.password
        # Delete and create in one packet: the plugin runs a packet's commands in one
        # go, so no CONNECT sees the client half made. deleteClient kicks the old session.
        # The role is linked by addClientRole, never by createClient's "roles": in 2.0.11
        # the latter leaves the role unaware of the client, and deleting the role later
        # leaves the client pointing at freed memory (getClient: "Internal error").
        return [
            *_role_upsert(role, role_acls(device_rules(self.cfg.prefix, label))),
            {"command": "deleteClient", "username": label},
            create,
            {"command": "addClientRole", "username": label, "rolename": role},
        ]

    def put_device(self, login: DeviceLogin) -> None:
        if login.password is None:
            self._ensure(login)
            return
        self._run(self._device_client(login, via_file=False))
        fb = self._fallback
        if fb is not None:
            users = fb.read()
            if users.pop(login.label, None) is not None:
                fb.write(users)  # the plugin checks this login now; the line is dead

    def _ensure(self, login: DeviceLogin) -> None:
        """A state change that keeps the device connectable (mark-lost): leave a login that
        already holds this hash alone (no kick), repairing only its role; else restore it."""
        role = role_name(login.label)
        got = self._run(
            [
                {"command": "getClient", "username": login.label},
                {"command": "getRole", "rolename": role},
            ]
        )
        c = got[0].get("data", {}).get("client")
        tag, _via = _parse_description(c.get("textdescription") if c else None)
        if c is None or tag != login_tag(login.password_hash):
            self._put_from_hashes([login])
            return
        acls = got[1].get("data", {}).get("role", {}).get("acls")
        fixes = self._repair(login.label, c, {role: acls} if acls is not None else {}, SyncReport())
        if fixes:
            self._run(fixes)

    def _put_from_hashes(self, logins: list[DeviceLogin]) -> None:
        """Logins known only by hash: client without password + password-file line + SIGHUP."""
        fb = self._fallback
        if fb is None:
            names = ", ".join(x.label for x in logins)
            raise DynsecError(
                f"mosquitto's dynamic-security API takes only plaintext passwords: the "
                f"login of {names} can be restored from its stored hash only on the "
                "broker's host (`auxilio broker sync` there), or by `devices rekey`"
            )
        self._run([c for x in logins for c in self._device_client(x, via_file=True)])
        self._write_fallback(fb, {**fb.read(), **{x.label: x.password_hash for x in logins}})

    def _write_fallback(self, fb: PasswordFile, users: dict[str, str]) -> None:
        fb.write(users)
        assert self.cfg.directory is not None
        reload_broker(self.cfg.directory / "data" / MOSQUITTO_PID_FILE)

    def _disable(self, label: str, held: Iterable[str] = ()) -> list[dict[str, Any]]:
        """Refuse the login, drop its session, unlink its roles (its own and ``held``).

        A disabled client rather than none: the plugin refuses it before any
        password-file line could let it in.
        """
        roles = dict.fromkeys([role_name(label), *held])
        return [
            {"command": "createClient", "username": label, "textname": "auxilio device"},
            {"command": "disableClient", "username": label},
            *({"command": "removeClientRole", "username": label, "rolename": r} for r in roles),
            {"command": "deleteRole", "rolename": role_name(label)},
        ]

    def remove_device(self, label: str) -> None:
        self._run(self._disable(label))
        fb = self._fallback
        if fb is not None:
            users = fb.read()
            if users.pop(label, None) is not None:
                fb.write(users)

    def _broker_state(self) -> tuple[dict[str, dict[str, Any]], dict[str, list[Any]]]:
        answers = self._run(
            [
                {"command": "listClients", "verbose": True, "count": -1, "offset": 0},
                {"command": "listRoles", "verbose": True, "count": -1, "offset": 0},
            ]
        )
        clients = {c["username"]: c for c in answers[0].get("data", {}).get("clients", [])}
        roles = {
            r["rolename"]: r.get("acls", []) for r in answers[1].get("data", {}).get("roles", [])
        }
        return clients, roles

    def sync(self, registry: Any) -> SyncReport:
        allowed, refused = wanted_logins(registry)
        clients, roles = self._broker_state()
        fb = self._fallback
        report = SyncReport()
        fixes: list[dict[str, Any]] = [{"command": "setDefaultACLAccess", "acls": _DENY_ALL}]
        for name, acls in _service_roles(self.cfg.prefix).items():
            if not _same_acls(roles.get(name), acls):
                fixes += _role_upsert(name, acls)
        passwd_lines: dict[str, str] = {}
        for label, encoded in allowed.items():
            c = clients.get(label)
            tag, via_file = _parse_description(c.get("textdescription") if c else None)
            if c is None or tag != login_tag(encoded):
                # Missing, or holding a password the registry replaced (a rekey the
                # broker missed): only the stored hash can restore it.
                if fb is None:
                    report.pending.append(label)
                    if c is not None:
                        fixes += self._disable(label)  # the old password must not work
                else:
                    (report.updated if c is not None else report.added).append(label)
                    fixes += self._device_client(DeviceLogin(label, encoded), via_file=True)
                    passwd_lines[label] = encoded
                continue
            if via_file:
                passwd_lines[label] = encoded
            fixes += self._repair(label, c, roles, report)
        for label in sorted(
            refused | ({n for n in clients if is_device_username(n)} - set(allowed))
        ):
            c = clients.get(label)
            if c is not None and c.get("disabled") and not c.get("roles"):
                continue
            fixes += self._disable(label, [r.get("rolename") for r in (c or {}).get("roles", [])])
            if c is not None:
                report.removed.append(label)
        for name in sorted(set(roles) - {role_name(x) for x in allowed}):
            if name.startswith(DEVICE_ROLE_PREFIX):  # a device role nobody should hold
                fixes += [
                    {"command": "removeClientRole", "username": u, "rolename": name}
                    for u, c in clients.items()
                    if name in {r.get("rolename") for r in c.get("roles", [])}
                ]
                fixes.append({"command": "deleteRole", "rolename": name})
        self._run(fixes)
        if fb is not None and fb.read() != passwd_lines:
            self._write_fallback(fb, passwd_lines)
        return report

    def _repair(
        self, label: str, c: dict[str, Any], roles: dict[str, list[Any]], report: SyncReport
    ) -> list[dict[str, Any]]:
        """Commands that give a client with the right password its role, ACLs and no more."""
        want = role_acls(device_rules(self.cfg.prefix, label))
        role_ok = _same_acls(roles.get(role_name(label)), want)
        linked = [r.get("rolename") for r in c.get("roles", [])] == [role_name(label)]
        if role_ok and linked and not c.get("groups") and not c.get("disabled"):
            report.unchanged += 1
            return []
        report.updated.append(label)
        held = [r.get("rolename") for r in c.get("roles", [])]
        return [
            *([] if role_ok else _role_upsert(role_name(label), want)),
            *(
                {"command": "removeClientRole", "username": label, "rolename": r}
                for r in held
                if r != role_name(label)
            ),
            *(
                {"command": "removeGroupClient", "groupname": g.get("groupname"), "username": label}
                for g in c.get("groups", [])
            ),
            *(
                []
                if role_name(label) in held
                else [{"command": "addClientRole", "username": label, "rolename": role_name(label)}]
            ),
            {"command": "enableClient", "username": label},
        ]

    def close(self) -> None:
        if self._admin is not None:
            self._admin.close()
            self._admin = None
        self._unlock()


def _same_acls(have: list[Any] | None, want: list[dict[str, Any]]) -> bool:
    if have is None:
        return False

    def key(a: dict[str, Any]) -> tuple[Any, ...]:
        return (a.get("acltype"), a.get("topic"), bool(a.get("allow")), int(a.get("priority", 0)))

    return sorted(map(key, have)) == sorted(map(key, want))
