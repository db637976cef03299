"""Random valid and mangled frames give the same bytes or the same reason on CPython and micropython."""

from __future__ import annotations

import json
import random
from pathlib import Path

import auxilio.protocol  # noqa: F401  (registers the codec as `auxcodec` for mp_fuzz)
from hypothesis import given, settings

from tests.conftest import PROTOCOL, run_micropython
from tests.protocol import mp_fuzz
from tests.protocol.strategies import SECRETS, fields

HERE = Path(__file__).resolve().parent
# One micropython run checks all cases; counts are modest for a small machine.
N_FIELDS = 400
MANGLE_SEED = 20261128


def _cases() -> list[dict]:
    cases: list[dict] = []

    @settings(max_examples=N_FIELDS, deadline=None, database=None)
    @given(f=fields(), secret=SECRETS)
    def collect(f: dict, secret: bytes) -> None:
        cases.append({"s": secret.hex(), "fields": f})

    collect()
    rng = random.Random(MANGLE_SEED)
    for case in list(cases):
        frame = bytes.fromhex(mp_fuzz.one(case).split(" ")[1])
        s = case["s"]
        b = bytearray(frame)
        b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
        cases.append({"s": s, "f": frame.hex()})  # valid: decode then re-encode
        cases.append({"s": s, "f": bytes(b).hex()})  # one bit flipped
        cases.append({"s": s, "f": frame[: rng.randrange(len(frame))].hex()})  # cut short
        cases.append({"s": s, "f": (frame + bytes([rng.randrange(256)])).hex()})  # trailing
        cases.append(
            {"s": s, "f": bytes(rng.randrange(256) for _ in range(rng.randrange(80))).hex()}
        )
    return cases


def test_cpython_and_micropython_agree_case_by_case(micropython: str, tmp_path: Path) -> None:
    cases = _cases()
    path = tmp_path / "cases.jsonl"
    path.write_text("".join(json.dumps(c) + "\n" for c in cases))
    cpython = [mp_fuzz.one(c) for c in cases]
    assert not [r for r in cpython if r.startswith("EXC")]
    assert sum(r.startswith("ok") for r in cpython) >= 2 * N_FIELDS * 0.9
    r = run_micropython(
        f"import mp_fuzz\nmp_fuzz.run({str(path)!r})\n", path=[PROTOCOL, HERE], timeout=300
    )
    assert r.returncode == 0, r.stderr
    mp = r.stdout.strip().splitlines()
    assert mp[-1] == "done"
    mp = mp[:-1]
    assert len(mp) == len(cases)
    diffs = [(i, a, b) for i, (a, b) in enumerate(zip(cpython, mp, strict=True)) if a != b]
    assert not diffs, diffs[:5]
