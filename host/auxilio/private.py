"""Files only their owner may read: secrets, provisioning files, registries, flash images.

Created mode 0600 from the start (never created open and tightened after, which
leaves a window), and tightened if an older copy was more open. Writes go to a
temp file beside the target and are renamed over it, so a reader (a broker on
SIGHUP, a device being provisioned) never sees half a file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import IO

PRIVATE = 0o600


def open_private(path: str | os.PathLike[str], mode: str = "wb") -> IO:
    """open() for a new or truncated file that is 0600 from its first byte."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    fd = os.open(path, flags, PRIVATE)
    os.chmod(path, PRIVATE)  # the file may have existed with a wider mode
    return os.fdopen(fd, mode)


def write_private(path: str | os.PathLike[str], data: bytes | str, mode: int = PRIVATE) -> None:
    """Atomically replace path with data, mode 0600 (or `mode`), fsynced."""
    p = Path(path)
    tmp = p.with_name(f".{p.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(tmp, mode)
    os.replace(tmp, p)


def tighten(path: str | os.PathLike[str]) -> None:
    """Make an existing file 0600 if it is readable by others."""
    p = Path(path)
    if p.exists() and p.stat().st_mode & 0o077:
        os.chmod(p, PRIVATE)
