"""Run the command-line tools (esptool, mpremote, auxilio) as a user would, from tests."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def tool_path(name: str) -> str:
    """A console script installed next to this Python (the venv's esptool, mpremote, auxilio)."""
    return str(Path(sys.executable).parent / name)


def run_tool(
    cmd: list[str], timeout: float, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Text output captured; stdin closed, or fed `input` (answers to prompts)."""
    kw = {"input": input} if input is not None else {"stdin": subprocess.DEVNULL}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
