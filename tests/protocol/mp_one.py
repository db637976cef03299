# Smallest vector runner for MicroPython: one frame per process, to prove the 32 KB heap budget.
#
# Prints "ok <hex of encode(decode(frame))>" then one "name=<JSON value>" line per
# decoded field (not one big JSON string: the printing must not be what needs
# the heap), or "err <reason>". The caller (test_vectors.py) compares.

import json

import auxcodec as codec


def run_file(path):
    """The vector in a file: 32 secret bytes, then the frame (no hex strings on the heap)."""
    with open(path, "rb") as f:
        data = f.read()
    run(data[:32], data[32:])


def run(secret, frame):
    try:
        fields = codec.decode(frame, secret)
    except codec.FrameError as e:
        print("err", e.reason)
        return
    print("ok", codec.encode(fields, secret).hex())
    for name in fields:
        print(name + "=" + json.dumps(fields[name]))
