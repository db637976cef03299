"""Filesystem states for tests: a file or directory nobody may write, root included."""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


@contextlib.contextmanager
def read_only(path: str | os.PathLike[str]) -> Iterator[Path]:
    """`path` unwritable for the duration, as a read-only mount or a foreign owner makes it.

    Root ignores permission bits, so as root the inode is made immutable
    (`chattr +i`: even root gets EPERM); elsewhere the write bits are cleared.
    Skips the test when neither is possible here. Always undone on exit.
    """
    p = Path(path)
    if os.geteuid() == 0:
        chattr = shutil.which("chattr")
        if chattr is None:
            pytest.skip("as root a read-only file needs chattr (e2fsprogs)")
        r = subprocess.run([chattr, "+i", str(p)], capture_output=True, text=True)
        if r.returncode != 0:
            pytest.skip(f"chattr +i is not supported here: {r.stderr.strip()}")
        try:
            yield p
        finally:
            subprocess.run([chattr, "-i", str(p)], check=True)
        return
    mode = stat.S_IMODE(p.stat().st_mode)
    p.chmod(mode & ~0o222)
    try:
        yield p
    finally:
        p.chmod(mode)
