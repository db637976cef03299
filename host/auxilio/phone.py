"""Phone numbers in one form: E.164 ('+525512340000'), as the registry keeps a device's SIM
number and the C4 compares an SMS sender with it (SPEC §10.4)."""

from __future__ import annotations

import re

_E164 = re.compile(r"^\+[1-9][0-9]{6,14}$")


def e164(number: str) -> str | None:
    """`number` in E.164 form, or None. Spaces, dashes, dots and brackets are dropped, and an
    international '00' prefix becomes '+'; a national number (no country code) is refused,
    since an SMS sender always arrives with its country code."""
    n = re.sub(r"[\s\-().]", "", number or "")
    if n.startswith("00"):
        n = "+" + n[2:]
    return n if _E164.match(n) else None
