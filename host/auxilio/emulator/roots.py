"""Device roots on the host: the directory one firmware `Device` boots from under the unix port.

A root holds what a flashed board's filesystem holds: `config.json` (identity
and settings, mode 0600: it carries the device secret), `board.json` (the
board file without its host-only sections), `data/` (outbox, counter), and
optionally the firmware itself. `app.run_fleet([root, ...])` runs one Device
per root. The demo, fleet mode and the benches write roots with these
functions; issue 11's provisioning library takes this over.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from pathlib import Path
from typing import Any

from auxilio.boards import Board, load_board
from auxilio.build import HOST_ONLY, PROTOCOL_MODULES
from auxilio.errors import UsageError
from auxilio.paths import find_micropython, firmware_dir, protocol_dir
from auxilio.private import write_private
from auxilio.protocol import codec

# Files of a firmware tree that go onto the device (sources or mpy-cross output).
FIRMWARE_SUFFIXES = (".py", ".mpy")
# Entry points a root run by app.run_fleet does without (the runner script replaces them).
ENTRY_POINTS = ("main.py", "main.mpy", "boot.py")
# A virtual device's Wi-Fi: the host HAL's link is always "associated" to it.
VIRTUAL_WIFI = {"ssid": "virtual", "password": "virtual"}


def firmware_files(fw: str | os.PathLike[str] | None = None) -> dict[str, bytes | Path]:
    """Device path -> host file for the firmware tree plus the codec, as deployed on a board."""
    fw = Path(fw) if fw else firmware_dir()
    if not (fw / "main.py").exists() and not (fw / "main.mpy").exists():
        raise UsageError(f"{fw} is not a firmware tree (no main.py)")
    files: dict[str, bytes | Path] = {}
    for path in sorted(fw.rglob("*")):
        if path.is_file() and path.suffix in FIRMWARE_SUFFIXES and "__pycache__" not in path.parts:
            rel = path.relative_to(fw).as_posix()
            if rel not in HOST_ONLY:
                files[rel] = path
    for name in PROTOCOL_MODULES:
        if name not in files and name.replace(".py", ".mpy") not in files:
            files[name] = protocol_dir() / name
    return files


def copy_firmware(dest: str | os.PathLike[str], fw: str | os.PathLike[str] | None = None) -> Path:
    """The firmware tree (without its entry points) into `dest`, for app.run_fleet."""
    d = Path(dest)
    for name, src in firmware_files(fw).items():
        if name in ENTRY_POINTS:
            continue
        target = d / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(src, Path):
            shutil.copyfile(src, target)
        else:
            target.write_bytes(src)
    return d


def device_config(
    device: int | str,
    secret: bytes | str,
    role: str,
    broker_url: str,
    *,
    password: str,
    prefix: str = codec.DEFAULT_PREFIX,
    counter_floor: int | None = None,
) -> dict[str, Any]:
    """A device's config.json: identity, broker login (username = printed id), Wi-Fi, prefix.

    ``counter_floor``: SPEC §12.1, for a known secret (from the registry).
    """
    label = device if isinstance(device, str) else codec.device_str(device)
    cfg: dict[str, Any] = {
        "device": label,
        "secret": secret if isinstance(secret, str) else secret.hex(),
        "role": role,
        "broker": broker_url,
        "username": label,
        "password": password,
        "tls_ca": None,
        "wifi": dict(VIRTUAL_WIFI),
        "prefix": prefix,
    }
    if counter_floor is not None:
        cfg["counter_floor"] = counter_floor
    return cfg


def random_config(role: str, broker_url: str, prefix: str = codec.DEFAULT_PREFIX) -> dict[str, Any]:
    """A fresh identity: random id, 32-byte secret and MQTT password (never logged)."""
    return device_config(
        secrets.randbelow(0xFFFFFFFE) + 1,
        secrets.token_bytes(32),
        role,
        broker_url,
        password=secrets.token_urlsafe(18),
        prefix=prefix,
    )


def write_device_root(
    root: str | os.PathLike[str],
    config: dict[str, Any],
    board: Board | str | dict[str, Any],
    *,
    firmware: bool | str | os.PathLike[str] = False,
) -> Path:
    """Write (or refresh) a root: config.json (0600), board.json, data/; `data/` is kept.

    ``firmware``: True copies the bundled firmware into the root (so the root
    alone is a sys.path entry), a path copies that tree; False leaves the
    firmware to a shared directory on sys.path (fleet mode).
    """
    r = Path(root)
    (r / "data").mkdir(parents=True, exist_ok=True)
    if firmware:
        copy_firmware(r, None if firmware is True else firmware)
    if isinstance(board, str):
        board = load_board(board)
    data = board.device_data() if isinstance(board, Board) else board
    (r / "board.json").write_text(json.dumps(data))
    write_private(r / "config.json", json.dumps(config))
    return r


def micropython_with_firmware() -> str | None:
    """The micropython binary when it and the firmware sources are both here, else None."""
    mp = find_micropython()
    if mp and (firmware_dir() / "app.py").exists():
        return mp
    return None
