"""`auxilio decode`: JSON equal to the vector fields, one-line errors with exit 2, never a traceback."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from auxilio.cli import main
from auxilio.protocol import REASON_TEXT, sms

from tests.protocol.vectors import INVALID, VALID

SPEC = next(v for v in VALID if v["name"] == "spec_example_alert")


def _auxilio(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "auxilio.cli", *args], capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize("v", VALID, ids=lambda v: v["name"])
def test_decode_prints_vector_fields(v: dict, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["decode", "--secret", v["secret_hex"], v["frame_hex"]]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out) == v["fields"] and err == ""


@pytest.mark.parametrize("v", INVALID, ids=lambda v: v["name"])
def test_decode_invalid_vector_one_line_exit_2(v: dict, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["decode", "--secret", v["secret_hex"], v["frame_hex"]]) == 2
    out, err = capsys.readouterr()
    # One line: the reason in words, then its stable SPEC §11 code.
    assert out == "" and err.count("\n") == 1 and err.endswith(f" ({v['error']})\n")
    assert err.startswith("error: ") and REASON_TEXT[v["error"]] in err


def test_decode_real_process_valid_and_sms() -> None:
    r = _auxilio("decode", "--secret", SPEC["secret_hex"], SPEC["frame_hex"])
    assert r.returncode == 0 and json.loads(r.stdout) == SPEC["fields"]
    body = sms.sms_encode(bytes.fromhex(SPEC["frame_hex"]))
    r = _auxilio("decode", "--sms", "--secret", SPEC["secret_hex"], body)
    assert r.returncode == 0 and json.loads(r.stdout) == SPEC["fields"]


def test_decode_real_process_invalid_exit_2() -> None:
    v = next(v for v in INVALID if v["name"] == "invalid_flipped_ciphertext_bit")
    r = _auxilio("decode", "--secret", v["secret_hex"], v["frame_hex"])
    assert r.returncode == 2 and r.stdout == ""
    assert (
        r.stderr
        == "error: the tag does not verify: wrong key, or the frame was altered (bad_tag)\n"
    )


BAD_INPUT = {
    "frame_not_hex": ["decode", "--secret", "00" * 32, "zz01"],
    "frame_odd_hex": ["decode", "--secret", "00" * 32, "010"],
    "frame_non_ascii": ["decode", "--secret", "00" * 32, "01ñ0"],
    "secret_not_hex": ["decode", "--secret", "xyz", SPEC["frame_hex"]],
    "secret_31_bytes": ["decode", "--secret", "00" * 31, SPEC["frame_hex"]],
    "secret_33_bytes": ["decode", "--secret", "00" * 33, SPEC["frame_hex"]],
    "secret_empty": ["decode", "--secret", "", SPEC["frame_hex"]],
    "sms_not_base64": ["decode", "--sms", "--secret", "00" * 32, "!!!"],
    "unknown_option": ["decode", "--frobnicate", "--secret", "00" * 32, SPEC["frame_hex"]],
    "unknown_top_option": ["--frobnicate"],
    "missing_secret": ["decode", SPEC["frame_hex"]],
    "missing_frame": ["decode", "--secret", "00" * 32],
}


@pytest.mark.parametrize("args", BAD_INPUT.values(), ids=BAD_INPUT.keys())
def test_bad_input_one_line_nonzero_no_traceback(args: list[str]) -> None:
    r = _auxilio(*args)
    assert r.returncode != 0
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("error: "), r.stderr
    assert "Traceback" not in r.stderr and r.stdout == ""


def test_wrong_key_length_reason() -> None:
    r = _auxilio("decode", "--secret", "00" * 31, SPEC["frame_hex"])
    assert (r.returncode, r.stderr) == (2, f"error: {REASON_TEXT['bad_key']} (bad_key)\n")
