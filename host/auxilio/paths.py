"""Where the shared assets (codec, firmware, board data) live, installed or in a checkout."""

from __future__ import annotations

from pathlib import Path


def _asset_dir(name: str) -> Path:
    here = Path(__file__).resolve().parent
    # Checkout (editable install): host/auxilio/../../<name>
    repo = here.parent.parent / name
    if repo.is_dir():
        return repo
    # Wheel install: auxilio/assets/<name>
    return here / "assets" / name


def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent.parent


def protocol_dir() -> Path:
    return _asset_dir("protocol")


def firmware_dir() -> Path:
    return _asset_dir("firmware")


def boards_dir() -> Path:
    return _asset_dir("boards")


def vectors_dir() -> Path:
    return protocol_dir() / "vectors"


def find_micropython() -> str | None:
    """The MicroPython unix port executable: beside this Python (the venv), else on PATH."""
    import shutil
    import sys

    here = Path(sys.executable).parent / "micropython"
    if here.exists():
        return str(here)
    return shutil.which("micropython")


def runtime_dir() -> Path:
    """Per-user directory for running emulators' state files and virtual USB ports.

    AUXILIO_RUNTIME_DIR when set (tests isolate themselves with it), else
    $XDG_RUNTIME_DIR/auxilio-vboards-UID, else the same under the temp dir.
    """
    import os
    import tempfile

    override = os.environ.get("AUXILIO_RUNTIME_DIR")
    if override:
        return Path(override)
    base = os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
    return Path(base) / f"auxilio-vboards-{os.getuid()}"
