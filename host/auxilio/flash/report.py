"""Flash and factory-test reports: one CSV and one JSON file per run, in reports/.

A tray of twenty boards leaves an audit trail: which port and USB serial
number, which chip and MAC, which image (sha256) and app version, the result,
how long it took and why it failed. The history of earlier reports tells a
re-run which boards are already done with this image.
"""

from __future__ import annotations

import csv
import json
import os
import time
from pathlib import Path
from typing import Any

from auxilio import __version__

DEFAULT_DIR = Path("reports")
FLASH_COLUMNS = (
    "port",
    "serial",
    "board",
    "chip",
    "mac",
    "image_sha256",
    "app_version",
    "result",
    "seconds",
    "error",
)


def _stamp() -> str:
    # UTC, sortable, unique per process: two runs in the same second do not collide.
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + f"-{os.getpid()}"


def write(
    kind: str,
    rows: list[dict[str, Any]],
    columns: tuple[str, ...],
    meta: dict[str, Any],
    directory: Path | None = None,
) -> tuple[Path, Path]:
    """reports/<kind>-<UTC time>-<pid>.csv and .json; returns both paths."""
    d = Path(directory or DEFAULT_DIR)
    d.mkdir(parents=True, exist_ok=True)
    base = d / f"{kind}-{_stamp()}"
    csv_path, json_path = base.with_suffix(".csv"), base.with_suffix(".json")
    with open(csv_path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k, "") for k in columns})
    doc = {"kind": kind, "auxilio": __version__, **meta, "rows": rows}
    tmp = json_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=1, sort_keys=True))
    os.replace(tmp, json_path)
    return csv_path, json_path


def last_flash(directory: Path | None = None) -> dict[str, dict[str, Any]]:
    """Board key (USB serial, else port) -> its latest flash row (skipped rows say nothing new)."""
    d = Path(directory or DEFAULT_DIR)
    latest: dict[str, dict[str, Any]] = {}
    if not d.is_dir():
        return latest
    for path in sorted(d.glob("flash-*.json")):
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        for row in doc.get("rows", []):
            if row.get("result") not in ("ok", "failed", "interrupted"):
                continue
            latest[row.get("serial") or row.get("port", "")] = dict(row, report=path.name)
    return latest
