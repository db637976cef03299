"""`auxilio decode`: verify and decode one frame with a device secret, print JSON."""

from __future__ import annotations

import argparse
import binascii
import json


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--secret", required=True, help="device secret, 64 hex digits")
    p.add_argument("frame", metavar="FRAME_HEX", help="the frame in hex (or base64 with --sms)")
    p.add_argument("--sms", action="store_true", help="FRAME is an SMS body (base64)")


def _unhex(text: str, what: str) -> bytes:
    from auxilio.errors import UsageError

    try:
        return binascii.unhexlify(text.strip().replace(" ", ""))
    except (binascii.Error, ValueError):
        raise UsageError(f"the {what} is not valid hex (bad_hex)") from None


def run(args: argparse.Namespace) -> int:
    from auxilio.errors import UsageError
    from auxilio.protocol import FrameError, decode, explain

    secret = _unhex(args.secret, "secret")
    try:
        if args.sms:
            from auxilio.protocol import sms

            frame = sms.sms_decode(args.frame)
        else:
            frame = _unhex(args.frame, "frame")
        fields = decode(frame, secret)
    except FrameError as exc:
        raise UsageError(explain(exc)) from None  # SPEC §11: words, then the stable code
    print(json.dumps(fields, sort_keys=True))
    return 0
