"""Host access to the shared codec (protocol/auxcodec.py), which devices run unchanged."""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType

from auxilio.paths import protocol_dir


def _load_codec() -> ModuleType:
    # The codec is a top-level MicroPython-compatible module, not part of this
    # package; load that one file so host and device execute the same bytes.
    name = "auxcodec"
    if name in sys.modules:
        return sys.modules[name]
    path = protocol_dir() / "auxcodec.py"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


codec = _load_codec()
FrameError = codec.FrameError
Keys = codec.Keys
encode = codec.encode
decode = codec.decode
device_str = codec.device_str
device_int = codec.device_int
topic = codec.topic
