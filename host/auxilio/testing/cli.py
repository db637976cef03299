"""Run `auxilio ARGS...` from a test: in this process (fast), or as a real process (exit codes, signals).

Both give a `CliRun` (exit code, stdout, stderr). `CliRun.error_line()` asserts
the contract for a user mistake: a non-zero exit, exactly one `error: ...`
line on stderr, no traceback, and returns that line.
"""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

# A real `auxilio` process gets this long before the test fails.
PROCESS_TIMEOUT_S = 120


@dataclass
class CliRun:
    """What one `auxilio` invocation did."""

    rc: int
    out: str
    err: str

    def error_line(self) -> str:
        """The one `error:` line of a refused command (asserting the one-line contract)."""
        assert self.rc not in (0, None), f"exit {self.rc}: {self.out}{self.err}"
        assert "Traceback" not in self.err, self.err
        errors = [ln for ln in self.err.splitlines() if ln.startswith("error: ")]
        assert len(errors) == 1, self.err
        return errors[0]

    def ok(self) -> CliRun:
        """Assert a zero exit; returns self for chaining."""
        assert self.rc == 0, f"exit {self.rc}: {self.err}"
        assert "Traceback" not in self.err, self.err
        return self


@contextlib.contextmanager
def _environment(
    env: Mapping[str, str] | None, cwd: str | os.PathLike[str] | None
) -> Iterator[None]:
    saved_env = dict(os.environ)
    saved_cwd = os.getcwd()
    try:
        if env is not None:
            os.environ.update(env)
        if cwd is not None:
            os.chdir(cwd)
        yield
    finally:
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)


def run_cli(
    *args: str,
    env: Mapping[str, str] | None = None,
    stdin: str | None = None,
    cwd: str | os.PathLike[str] | None = None,
) -> CliRun:
    """`auxilio ARGS` through `auxilio.cli.main` in this process; `env` is added to os.environ."""
    from auxilio.cli import main

    out, err = io.StringIO(), io.StringIO()
    saved_stdin = sys.stdin
    with _environment(env, cwd), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        sys.stdin = io.StringIO(stdin or "")
        try:
            rc = main(list(args))
        except SystemExit as exc:  # argparse: --help, usage errors
            rc = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        finally:
            sys.stdin = saved_stdin
    return CliRun(int(rc), out.getvalue(), err.getvalue())


def run_cli_process(
    *args: str,
    env: Mapping[str, str] | None = None,
    stdin: str | None = None,
    cwd: str | os.PathLike[str] | None = None,
    timeout: float = PROCESS_TIMEOUT_S,
) -> CliRun:
    """`auxilio ARGS` as a real process (this venv's console script); `env` added to the environment."""
    exe = Path(sys.executable).parent / "auxilio"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "auxilio.cli"]
    kw = {"input": stdin} if stdin is not None else {"stdin": subprocess.DEVNULL}
    r = subprocess.run(
        [*cmd, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        cwd=cwd,
        **kw,
    )
    return CliRun(r.returncode, r.stdout, r.stderr)
