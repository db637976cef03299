"""bench_ram32 without node or npm says why its figures are missing instead of failing."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.bench import bench_ram32


def test_missing_node_or_npm_is_a_reason_not_a_failure(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(bench_ram32.shutil, "which", lambda name: None)
    assert bench_ram32.run() == {"available": False, "reason": "node is not installed"}
    monkeypatch.setattr(
        bench_ram32.shutil, "which", lambda name: "/usr/bin/node" if name == "node" else None
    )
    monkeypatch.setattr(
        bench_ram32, "_npm_dir", lambda: tmp_path / "npm"
    )  # nothing installed there
    assert bench_ram32.run() == {"available": False, "reason": "npm is not installed"}
