"""Load the golden vectors (protocol/vectors/*.json) for the protocol tests."""

from __future__ import annotations

import json
from pathlib import Path

VECTORS_DIR = Path(__file__).resolve().parents[2] / "protocol" / "vectors"


def load_vectors() -> list[dict]:
    """Every vector, one object or a list of objects per file, sorted by name."""
    out: list[dict] = []
    for path in sorted(VECTORS_DIR.glob("*.json")):
        data = json.loads(path.read_text())
        out.extend(data if isinstance(data, list) else [data])
    return sorted(out, key=lambda v: v["name"])


VECTORS = load_vectors()
VALID = [v for v in VECTORS if v["valid"]]
INVALID = [v for v in VECTORS if not v["valid"]]
