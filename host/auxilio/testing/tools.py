"""Run the command-line tools (esptool, mpremote, auxilio) as a user would, from tests."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import subprocess
import sys
import traceback
from collections.abc import Iterator, Mapping, Sequence
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


def run_auxilio(
    args: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    input: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """`auxilio ARGS` in this process (auxilio.cli.main): what it prints, logs included, and
    its exit code, as a subprocess would give them, without a Python start-up per call.

    env replaces os.environ for the call; a bug's traceback lands in stderr with exit 1,
    as it would from the console script. Not thread-safe (it swaps process-wide state).
    """
    from auxilio.cli import main

    out, err = io.StringIO(), io.StringIO()
    with _process_state(env, cwd, input), _cli_logging():
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                rc = main(list(args))
            except SystemExit as e:  # argparse: usage errors (2) and --help/--version (0)
                rc = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
            except Exception:  # noqa: BLE001 - a bug in Auxilio: show it as the console would
                traceback.print_exc()
                rc = 1
    return subprocess.CompletedProcess(["auxilio", *args], rc, out.getvalue(), err.getvalue())


@contextlib.contextmanager
def _process_state(
    env: Mapping[str, str] | None, cwd: str | os.PathLike[str] | None, stdin: str | None
) -> Iterator[None]:
    saved_env, saved_cwd, saved_stdin = dict(os.environ), os.getcwd(), sys.stdin
    try:
        if env is not None:
            os.environ.clear()
            os.environ.update(env)
        if cwd is not None:
            os.chdir(cwd)
        sys.stdin = io.StringIO(stdin or "")
        yield
    finally:
        sys.stdin = saved_stdin
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)


@contextlib.contextmanager
def _cli_logging() -> Iterator[None]:
    """Let main()'s logging.basicConfig install its handler (on the redirected stderr), as in
    a fresh process; afterwards the caller's handlers and level (pytest's) come back."""
    root = logging.getLogger()
    saved, level = root.handlers[:], root.level
    root.handlers.clear()
    try:
        yield
    finally:
        for h in root.handlers:
            h.close()
        root.handlers[:] = saved
        root.setLevel(level)
