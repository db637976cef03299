"""`auxilio demo --protocol` (interim demo): every walk-through check holds on both runtimes; no secrets or positions in logs."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest
from auxilio import walkthrough


def test_walkthrough_checks_hold_on_both_runtimes(
    micropython: str, caplog: pytest.LogCaptureFixture
) -> None:
    lines: list[str] = []
    with caplog.at_level(logging.DEBUG):
        result = walkthrough.run(write=lines.append)
    assert result.micropython
    names = {name for name, _ in result.checks}
    assert {
        "cpython_decode",
        "micropython_decode",
        "micropython_byte_identical",
        "cpython_rejects_tampered",
        "micropython_rejects_tampered",
    } <= names
    assert result.ok, result.checks
    logged = "\n".join(r.getMessage() for r in caplog.records)
    for leak in ("194326000", "19.4326", "991332000", "99.1332"):
        assert leak not in logged


@pytest.mark.parametrize(
    "args", [["demo", "--protocol"], ["demo", "--protocol", "--no-micropython"]]
)
def test_demo_command_exits_0(args: list[str]) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "auxilio.cli", "-v", "-v", *args],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    for leak in ("19.4326", "99.1332"):  # stderr carries the log
        assert leak not in r.stderr


def test_tampering_is_detected_even_without_micropython() -> None:
    result = walkthrough.run(write=lambda _line: None, use_micropython=False)
    assert not result.micropython
    assert dict(result.checks)["cpython_rejects_tampered"]
