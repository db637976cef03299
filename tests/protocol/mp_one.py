# Smallest vector runner for MicroPython: one frame per process, to prove the 32 KB heap budget.
#
# Prints "ok <hex of encode(decode(frame))>" then the decoded fields as JSON,
# or "err <reason>". The caller (test_vectors.py) compares with the vector.

import json

import auxcodec as codec


def run(secret_hex, frame_hex):
    secret = bytes.fromhex(secret_hex)
    try:
        fields = codec.decode(bytes.fromhex(frame_hex), secret)
    except codec.FrameError as e:
        print("err", e.reason)
        return
    print("ok", codec.encode(fields, secret).hex())
    print(json.dumps(fields))
