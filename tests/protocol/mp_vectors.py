# Vector runner that executes under MicroPython (and CPython): checks every vector, prints encodings.
#
# Driven from pytest (test_vectors.py) through the real `micropython` binary.
# Loads one vector file at a time and collects garbage in between so it runs
# inside a 32 KB heap. Output, one line per vector:
#   ok <name> <hex of encode(fields)>   valid vector decoded to exactly its fields
#   ok <name> -                         invalid vector rejected with its reason
#   FAIL <name> <why>
# and a last line "done <count>".

import gc
import json
import os

import auxcodec as codec


def _same(got, want):
    # Strict: True must not pass for 1, nor 1 for 1.0.
    if len(got) != len(want):
        return False
    for k in want:
        if k not in got:
            return False
        a = got[k]
        b = want[k]
        if type(a) is not type(b) or a != b:
            return False
    return True


def check(v):
    secret = bytes.fromhex(v["secret_hex"])
    frame = bytes.fromhex(v["frame_hex"])
    name = v["name"]
    if v["valid"]:
        try:
            got = codec.decode(frame, secret)
        except codec.FrameError as e:
            return "FAIL " + name + " decode raised " + e.reason
        if not _same(got, v["fields"]):
            return "FAIL " + name + " fields differ"
        enc = codec.encode(v["fields"], secret)
        if v.get("encode_roundtrip", True) and enc != frame:
            return "FAIL " + name + " encode differs"
        return "ok " + name + " " + enc.hex()
    try:
        codec.decode(frame, secret)
    except codec.FrameError as e:
        if e.reason != v["error"]:
            return "FAIL " + name + " reason " + e.reason + " != " + v["error"]
        return "ok " + name + " -"
    return "FAIL " + name + " accepted"


def run(vdir):
    n = 0
    # ilistdir streams entries (a sorted listdir of every name costs ~3 KB of heap).
    for entry in os.ilistdir(vdir):
        fn = entry[0]
        if not fn.endswith(".json"):
            continue
        with open(vdir + "/" + fn) as f:
            v = json.load(f)
        print(check(v))
        v = None
        gc.collect()
        n += 1
    print("done", n)
