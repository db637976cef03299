"""Host access to the shared protocol modules (protocol/auxcodec.py, protocol/auxsms.py),
which devices run unchanged."""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType

from auxilio.paths import protocol_dir


def _load(name: str) -> ModuleType:
    # The protocol modules are top-level MicroPython-compatible modules, not part
    # of this package; load those files so host and device execute the same bytes.
    if name in sys.modules:
        return sys.modules[name]
    path = protocol_dir() / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


codec = _load("auxcodec")
sms = _load("auxsms")  # SPEC §10.4 bodies; imports auxcodec, loaded just above
FrameError = codec.FrameError
Keys = codec.Keys
encode = codec.encode
decode = codec.decode
device_str = codec.device_str
device_int = codec.device_int
topic = codec.topic

# SPEC §11 reason codes in words, for people: `auxilio decode` prints the words,
# then the code (scripts and the vectors keep matching the code).
REASON_TEXT = {
    "truncated": "the frame is shorter than a header and tag, or than its length byte says",
    "bad_version": "the frame is not protocol version 1",
    "unknown_type": "the frame type is unknown",
    "length_mismatch": "the length byte does not fit the frame type",
    "trailing_bytes": "there are bytes after the end of the frame",
    "bad_tag": "the tag does not verify: wrong key, or the frame was altered",
    "bad_flags": "the flags are not valid for this frame",
    "bad_payload": "a payload field is not valid",
    "bad_key": "the device secret must be 32 bytes (64 hex digits)",
    "bad_field": "a field is missing or out of range",
    "bad_device_id": "the device id is not valid",
    "bad_encoding": "the SMS body is not base64",
}


def explain(exc: Exception) -> str:
    """A FrameError as words, its detail, then its code: '... wrong key, or ... (bad_tag)'."""
    reason = getattr(exc, "reason", None) or "bad_frame"
    text = REASON_TEXT.get(reason, reason.replace("_", " "))
    detail = str(exc).partition(": ")[2]
    if detail and detail not in text:
        text += ": " + detail
    return f"{text} ({reason})"
