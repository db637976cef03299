"""Shared helpers for the flashing tests: run esptool / auxilio, run work on several boards at once."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import pytest
from auxilio.testing.tools import run_tool, tool_path

ESPTOOL = tool_path("esptool")
AUXILIO = tool_path("auxilio")
# pyserial's RFC 2217 client uses threading APIs Python 3.12 deprecates.
QUIET = pytest.mark.filterwarnings("ignore::DeprecationWarning:serial.rfc2217")
# An unmodified esptool over RFC 2217 spends ~0.2 s per command in pyserial's client.
ESPTOOL_TIMEOUT_S = 240

T = TypeVar("T")
R = TypeVar("R")


def esptool(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return run_tool([ESPTOOL, "--port", url, *args], ESPTOOL_TIMEOUT_S)


def auxilio(
    *args: str, timeout: float = 300, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    return run_tool([AUXILIO, *args], timeout, input)


def ok(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 0, f"{proc.args}: {proc.stdout[-2500:]} {proc.stderr[-1500:]}"
    return proc.stdout


def parallel(fn: Callable[[T], R], items: Iterable[T]) -> list[R]:
    """fn over items on threads (the work waits on serial links); the first failure is raised."""
    items = list(items)
    with ThreadPoolExecutor(max_workers=max(1, len(items))) as pool:
        return list(pool.map(fn, items))
