"""Modem profiles (boards/modems/<name>.json): loading, the device copy, and a board's profile."""

from __future__ import annotations

import json
import logging
from functools import lru_cache
from pathlib import Path
from typing import Any

from auxilio.errors import NotFoundError, UsageError
from auxilio.paths import boards_dir

log = logging.getLogger(__name__)

# What the firmware reads from the profile: the "at" section plus these names.
DEVICE_KEYS = ("name", "model")
DEVICE_FILE = "modem.json"  # next to board.json on the device


def modems_dir() -> Path:
    return boards_dir() / "modems"


def names() -> list[str]:
    """Every profile name (file stem) in boards/modems/."""
    return sorted(p.stem for p in modems_dir().glob("*.json"))


@lru_cache(maxsize=16)
def _load(name: str) -> dict[str, Any]:
    path = modems_dir() / f"{name}.json"
    if not path.is_file():
        raise NotFoundError(f"no modem profile {name!r} (known: {', '.join(names()) or 'none'})")
    try:
        data = json.loads(path.read_text())
    except ValueError as exc:
        raise UsageError(f"modem profile {path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("at"), dict):
        raise UsageError(f"modem profile {path} has no 'at' section")
    return data


def load_profile(name: str) -> dict[str, Any]:
    """The whole profile (a fresh copy: callers may change it)."""
    return json.loads(json.dumps(_load(name)))


def device_profile(name: str) -> dict[str, Any]:
    """The part that goes onto the device as modem.json (no currents, no sources)."""
    data = _load(name)
    out = {k: data[k] for k in DEVICE_KEYS if k in data}
    out.update(data["at"])
    return out


def board_profile(board: dict[str, Any]) -> str | None:
    """The modem profile a board's data names, or None (no modem)."""
    modem = board.get("modem")
    if isinstance(modem, dict) and modem.get("profile"):
        return str(modem["profile"])
    return None


def device_files(board: dict[str, Any], profile: str | None = None) -> dict[str, bytes]:
    """{"modem.json": ...} for a board with a modem (or the profile given), else {}."""
    name = profile or board_profile(board)
    if name is None:
        return {}
    return {DEVICE_FILE: json.dumps(device_profile(name), separators=(",", ":")).encode()}


def with_profile(board: dict[str, Any], profile: str) -> dict[str, Any]:
    """A copy of the board data whose modem uses another profile (tests, bench)."""
    _load(profile)
    data = json.loads(json.dumps(board))
    modem = data.get("modem")
    if not isinstance(modem, dict):
        raise UsageError(f"board {data.get('name')!r} has no modem to give profile {profile!r}")
    modem["profile"] = profile
    modem["model"] = _load(profile).get("model", profile)
    return data
