# Auxilio protocol v1: frames as SMS bodies (SPEC §10.4), for MicroPython and CPython alike.
#
# Apart from auxcodec because only LTE boards (sending) and the C4's SMS ingest
# (receiving) need it: a Wi-Fi button never loads it, and the codec's heap
# budget (one frame in 32 KB, issue 2) stays for the frame format itself.
#
# RAM budget (device): the module (~0.6 KB of bytecode) and one base64 string
# per SMS.

from binascii import a2b_base64, b2a_base64

from auxcodec import FrameError


def sms_encode(frame):
    """§10.4: one SMS is the standard base64 of the frame, no line break."""
    return b2a_base64(frame)[:-1].decode()


def sms_decode(text):
    """§10.4, strictly: canonical standard base64; only surrounding white space is dropped."""
    try:
        if not isinstance(text, str):
            text = bytes(text).decode()
        s = text.strip()
        raw = a2b_base64(s)
    except Exception:
        raise FrameError("bad_encoding")
    # The one canonical body: catches white space or foreign characters inside,
    # misplaced padding and non-zero bits after the last byte alike.
    if not raw or sms_encode(raw) != s:
        raise FrameError("bad_encoding")
    return raw
