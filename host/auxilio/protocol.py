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
