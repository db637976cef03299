"""Files only their owner may read: secrets, provisioning files, registries, flash images.

The one private-file writer of the host tools. Files are created mode 0600
from the start (never created open and tightened after, which leaves a
window), and tightened if an older copy was more open. `write_private`
writes to a temp file beside the target and renames it over, so a reader (a
broker on SIGHUP, a device being provisioned) never sees half a file;
`exclusive=True` instead refuses to replace anything (keys, provisioning files).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import IO

PRIVATE = 0o600
PRIVATE_DIR = 0o700


def open_private(path: str | os.PathLike[str], mode: str = "wb") -> IO:
    """open() for a new or truncated file that is 0600 from its first byte."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    fd = os.open(path, flags, PRIVATE)
    os.chmod(path, PRIVATE)  # the file may have existed with a wider mode
    return os.fdopen(fd, mode)


def write_private(
    path: str | os.PathLike[str],
    data: bytes | str,
    mode: int = PRIVATE,
    *,
    exclusive: bool = False,
) -> None:
    """Write `data` to `path`, mode 0600 (or `mode`), fsynced.

    Default: atomically replace whatever is there. ``exclusive``: create the
    file, FileExistsError if it exists (O_EXCL: never clobber a key or a
    provisioning file that appeared meanwhile).
    """
    p = Path(path)
    raw = data.encode() if isinstance(data, str) else data
    target = p if exclusive else p.with_name(f".{p.name}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | (os.O_EXCL if exclusive else os.O_TRUNC)
    fd = os.open(target, flags, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        target.unlink(missing_ok=True)
        raise
    os.chmod(target, mode)  # the umask may have narrowed a wider `mode` (an ACL: 0644)
    if not exclusive:
        os.replace(target, p)


def ensure_private(path: str | os.PathLike[str]) -> None:
    """Create an empty 0600 file if there is none (never truncating one), else tighten it."""
    p = Path(path)
    if not p.exists():
        os.close(os.open(p, os.O_WRONLY | os.O_CREAT, PRIVATE))
    tighten(p)


def private_dir(path: str | os.PathLike[str]) -> Path:
    """A directory (and its missing parents) that only its owner may enter: 0700 when created."""
    p = Path(path)
    p.mkdir(mode=PRIVATE_DIR, parents=True, exist_ok=True)
    return p


def tighten(path: str | os.PathLike[str]) -> None:
    """Make an existing file 0600 if it is readable by others."""
    p = Path(path)
    if p.exists() and p.stat().st_mode & 0o077:
        os.chmod(p, PRIVATE)
