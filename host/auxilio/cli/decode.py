"""`auxilio decode`: verify and decode one frame with a device secret, print JSON."""

from __future__ import annotations

import argparse
import binascii
import json
import sys


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--secret", required=True, help="device secret, 64 hex digits")
    p.add_argument("frame", metavar="FRAME_HEX", help="the frame in hex (or base64 with --sms)")
    p.add_argument("--sms", action="store_true", help="FRAME is an SMS body (base64)")


def _unhex(text: str, what: str) -> bytes | None:
    try:
        return binascii.unhexlify(text.strip().replace(" ", ""))
    except (binascii.Error, ValueError):
        sys.stderr.write(f"error: bad_hex: {what} is not valid hex\n")
        return None


def run(args: argparse.Namespace) -> int:
    from auxilio.protocol import FrameError, decode

    secret = _unhex(args.secret, "secret")
    if secret is None:
        return 2
    try:
        if args.sms:
            from auxilio.protocol import sms

            frame = sms.sms_decode(args.frame)
        else:
            frame = _unhex(args.frame, "frame")
            if frame is None:
                return 2
        fields = decode(frame, secret)
    except FrameError as exc:
        sys.stderr.write(f"error: {exc.reason}\n")
        return 2
    print(json.dumps(fields, sort_keys=True))
    return 0
