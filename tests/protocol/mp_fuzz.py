# Cross-runtime fuzz runner for MicroPython (and CPython): decode or encode one JSON case per input line.
#
# Input lines: {"s": secret_hex, "f": frame_hex}  -> "ok <hex of encode(decode(frame))>" | "err <reason>"
#              {"s": secret_hex, "fields": {...}} -> "ok <hex of encode(fields)>" | "err <reason>"
# Anything but FrameError prints "EXC <type> <message>" (a codec bug on that runtime).

import json

import auxcodec as codec


def one(case):
    secret = bytes.fromhex(case["s"])
    try:
        if "f" in case:
            fields = codec.decode(bytes.fromhex(case["f"]), secret)
        else:
            fields = case["fields"]
        return "ok " + codec.encode(fields, secret).hex()
    except codec.FrameError as e:
        return "err " + e.reason
    except Exception as e:  # noqa: BLE001 - reporting, not handling
        return "EXC " + type(e).__name__ + " " + str(e)


def run(path):
    with open(path) as f:
        for line in f:
            if line.strip():
                print(one(json.loads(line)))
    print("done")
