"""Device logins as mosquitto's password file, reloaded with SIGHUP: the authority for brokers without dynsec.

The pattern ACL `auxilio broker config` writes already confines every username to
its own topics (``%u``), so a login is one password-file line and nothing else
changes. mosquitto re-reads the file on SIGHUP and then re-checks every connected
client's credentials, disconnecting those that no longer pass (mosquitto 2.0
``mosquitto_security_apply``): a removed device's live session drops at once.

Only the broker host can do this (the file and the signal are local). A broker that
is not running needs no signal: it reads the file when it starts.
"""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path
from typing import Any

from auxilio.broker.authority import (
    FILES,
    AdminConfig,
    DeviceLogin,
    SyncReport,
    is_device_username,
    wanted_logins,
)
from auxilio.broker.config import MOSQUITTO_PID_FILE, PASSWD_FILE
from auxilio.errors import ConnectionFailed, UsageError
from auxilio.private import write_private

log = logging.getLogger(__name__)


class PasswordFile:
    """mosquitto's ``user:hash`` file, rewritten atomically with its owner and mode kept.

    Started as root, mosquitto reads it as its own user (NOTES.md): a rewrite must
    not hand the file back to root before the broker re-reads it.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    def read(self) -> dict[str, str]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise UsageError(f"cannot read {self.path}: {exc.strerror}") from None
        users: dict[str, str] = {}
        for line in text.splitlines():
            name, sep, encoded = line.strip().partition(":")
            if sep and name and not name.startswith("#"):
                users[name] = encoded.strip()
        return users

    def write(self, users: dict[str, str]) -> None:
        try:
            st: os.stat_result | None = self.path.stat()
        except FileNotFoundError:
            st = None
        data = "".join(f"{name}:{encoded}\n" for name, encoded in users.items())
        # Write beside, give it the old owner, then rename over: the broker never sees
        # a file it cannot read (write_private itself renames into the temp name).
        tmp = self.path.with_name(f".{self.path.name}.new")
        try:
            write_private(tmp, data, 0o600 if st is None else st.st_mode & 0o777)
            if st is not None and os.geteuid() == 0:
                os.chown(tmp, st.st_uid, st.st_gid)
            os.replace(tmp, self.path)
        except OSError as exc:
            raise UsageError(f"cannot write {self.path}: {exc.strerror}") from None


def running_broker(pid_file: Path) -> int | None:
    """The pid of the mosquitto that wrote pid_file, if it still runs (never another process)."""
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None  # stale: the broker died without removing it
    except PermissionError:
        pass  # alive, someone else's: reload() will say so
    comm = Path(f"/proc/{pid}/comm")
    # A recycled pid must never get our SIGHUP (its default action is to terminate).
    if comm.exists() and "mosquitto" not in comm.read_text():
        return None
    return pid


def reload_broker(pid_file: Path) -> bool:
    """SIGHUP the running broker; False when none runs (it reads the files at start)."""
    pid = running_broker(pid_file)
    if pid is None:
        log.info("no running broker at %s: the change applies when it starts", pid_file)
        return False
    try:
        os.kill(pid, signal.SIGHUP)
    except PermissionError:
        raise ConnectionFailed(
            f"cannot signal the broker (pid {pid}): permission denied; run as its user or root"
        ) from None
    except ProcessLookupError:
        return False
    return True


class FileAuthority:
    """BrokerAuthority over the password file of a local mosquitto (or one not yet started)."""

    kind = FILES

    def __init__(self, cfg: AdminConfig) -> None:
        assert cfg.directory is not None
        if not cfg.directory.is_dir():
            raise UsageError(f"broker directory {cfg.directory} not found")
        self.passwd = PasswordFile(cfg.directory / PASSWD_FILE)
        self.pid_file = cfg.directory / "data" / MOSQUITTO_PID_FILE

    def _commit(self, users: dict[str, str]) -> None:
        self.passwd.write(users)
        reload_broker(self.pid_file)

    def put_device(self, login: DeviceLogin) -> None:
        users = self.passwd.read()
        if users.get(login.label) != login.password_hash:
            users[login.label] = login.password_hash
            self._commit(users)

    def remove_device(self, label: str) -> None:
        users = self.passwd.read()
        users.pop(label, None)
        # Reload even when the line was already gone: a session that outlived an
        # earlier edit made behind our back is dropped all the same.
        self._commit(users)

    def sync(self, registry: Any) -> SyncReport:
        allowed, _refused = wanted_logins(registry)
        users = self.passwd.read()
        report = SyncReport()
        for name in [n for n in users if is_device_username(n) and n not in allowed]:
            del users[name]
            report.removed.append(name)
        for label, encoded in allowed.items():
            if label not in users:
                report.added.append(label)
            elif users[label] != encoded:
                report.updated.append(label)
            else:
                report.unchanged += 1
                continue
            users[label] = encoded
        if report.added or report.updated or report.removed:
            self._commit(users)
        return report

    def close(self) -> None:
        pass
