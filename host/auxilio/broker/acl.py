"""The mosquitto password and ACL files, read back: the embedded broker enforces the same rules.

Only the subset `auxilio broker config` writes is understood: ``user NAME``,
``topic read|write|readwrite TOPIC`` and ``pattern read|write|readwrite TOPIC`` with
``%u`` (username) and ``%c`` (client id). As in mosquitto, ``topic`` lines apply to
the preceding ``user`` and patterns to every user; a subscription filter is allowed
only when a read rule covers all of it, and each delivered message is checked again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from auxilio.broker.passwords import verify_password
from auxilio.errors import UsageError

READ, WRITE = "read", "write"
_ACCESS = {"read": {READ}, "write": {WRITE}, "readwrite": {READ, WRITE}}


def topic_matches(pattern: str, topic: str) -> bool:
    """Does a concrete topic match an ACL topic (with + and #)?"""
    p, t = pattern.split("/"), topic.split("/")
    for i, level in enumerate(p):
        if level == "#":
            return True
        if i >= len(t) or (level != "+" and level != t[i]):
            return False
    return len(p) == len(t)


def filter_covered(pattern: str, sub: str) -> bool:
    """Is every topic a subscription filter can match also matched by the ACL topic?"""
    p, s = pattern.split("/"), sub.split("/")
    for i, level in enumerate(p):
        if level == "#":
            return True
        if i >= len(s) or s[i] == "#":
            return False
        if level != "+" and level != s[i]:
            return False  # includes s[i] == "+" under a literal level
    return len(p) == len(s)


def _safe_for_pattern(name: str) -> bool:
    # mosquitto refuses %u/%c substitution for names that would change a topic's shape.
    return bool(name) and not any(c in name for c in "+#/")


@dataclass
class Acl:
    users: dict[str, list[tuple[set[str], str]]] = field(default_factory=dict)
    patterns: list[tuple[set[str], str]] = field(default_factory=list)

    @classmethod
    def parse(cls, text: str) -> Acl:
        acl, user = cls(), None
        for n, raw in enumerate(text.splitlines(), 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            parts = line.split(None, 2)
            if parts[0] == "user" and len(parts) == 2:
                user = parts[1]
                acl.users.setdefault(user, [])
            elif parts[0] in ("topic", "pattern") and len(parts) == 3 and parts[1] in _ACCESS:
                rule = (_ACCESS[parts[1]], parts[2])
                if parts[0] == "pattern":
                    acl.patterns.append(rule)
                elif user is not None:
                    acl.users[user].append(rule)
                else:
                    raise UsageError(f"ACL line {n}: topic before any user")
            else:
                raise UsageError(f"ACL line {n}: not understood: {line[:60]}")
        return acl

    def _rules(self, username: str | None, client_id: str | None) -> list[tuple[set[str], str]]:
        if username is None:
            return []
        rules = list(self.users.get(username, []))
        for access, topic in self.patterns:
            if ("%u" in topic and not _safe_for_pattern(username)) or (
                "%c" in topic and not _safe_for_pattern(client_id or "")
            ):
                continue
            rules.append((access, topic.replace("%u", username).replace("%c", client_id or "")))
        return rules

    def may_publish(self, username: str | None, client_id: str | None, topic: str) -> bool:
        return any(
            WRITE in a and topic_matches(t, topic) for a, t in self._rules(username, client_id)
        )

    def may_receive(self, username: str | None, client_id: str | None, topic: str) -> bool:
        return any(
            READ in a and topic_matches(t, topic) for a, t in self._rules(username, client_id)
        )

    def may_subscribe(self, username: str | None, client_id: str | None, sub: str) -> bool:
        return any(
            READ in a and filter_covered(t, sub) for a, t in self._rules(username, client_id)
        )


def read_password_file(path: str | Path) -> dict[str, str]:
    users: dict[str, str] = {}
    for line in Path(path).read_text().splitlines():
        if line.strip() and ":" in line:
            name, encoded = line.split(":", 1)
            users[name] = encoded.strip()
    return users


def check_password(users: dict[str, str], username: str | None, password: str | None) -> bool:
    encoded = users.get(username or "")
    return encoded is not None and password is not None and verify_password(password, encoded)
