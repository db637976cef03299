"""Input validation for registry fields: one clear message per mistake, and no names.

Privacy rule (DESIGN §6, issue 4): a bracelet is linked to a person only through a
pseudonymous case reference that C4's own systems resolve. The registry accepts only
the structured form ``<UNIT>-<YEAR>-<NUMBER>`` (e.g. ``PR-2026-00123``: unit letters,
a four-digit year, a 3-8 digit number), which cannot hold a personal name.
"""

from __future__ import annotations

import datetime as dt
import math
import re
import unicodedata

from auxilio.errors import UsageError
from auxilio.protocol import FrameError, codec

# ASCII only: `\d` alone would also match Arabic-Indic or full-width digits.
CASE_REF_RE = re.compile(r"^[A-Z]{2,4}-[0-9]{4}-[0-9]{3,8}$")
SECTOR_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._-]{0,39}$")
BOARD_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
FW_RE = re.compile(r"^\d{1,3}(\.\d{1,3}){1,2}$")
ACTOR_RE = re.compile(r"^[\w.@:+-]{1,64}$")
SITE_MAX = 120


def device_id(value: int | str) -> int:
    """A device id from its printed form ('0938-NKRT') or an int; UsageError if bad."""
    try:
        return codec.device_int(value)
    except FrameError as exc:
        text = str(exc)
        detail = f" ({text.split(': ', 1)[1]})" if ": " in text else ""
        raise UsageError(f"bad device id {value!r}{detail}") from None


def case_ref(value: str) -> str:
    """The case reference in its one stored form: NFKC-normalised, upper-case ASCII.

    NFKC first, because a reference typed on a phone or with an East Asian input
    method arrives as full-width characters (`ＰＲ－２０２６－００１２３`): it
    is the same reference, and it must be stored as the same text C4's own
    systems hold, or one case would exist twice and never match. Anything
    still not ASCII after NFKC (other scripts' digits, look-alike letters) is
    refused rather than guessed at.
    """
    v = unicodedata.normalize("NFKC", value or "").strip().upper()
    if not CASE_REF_RE.match(v):
        raise UsageError("case reference must look like PR-2026-00123 (pseudonymous, never a name)")
    return v


def site(value: str) -> str:
    v = (value or "").strip()
    if not v or len(v) > SITE_MAX or any(ord(c) < 32 for c in v):
        raise UsageError(f"site name must be 1-{SITE_MAX} printable characters")
    if v[0] in "=+-@":
        # A leading formula character turns an exported CSV cell into a spreadsheet formula.
        raise UsageError("site name must not start with '=', '+', '-' or '@'")
    return v


def sector(value: str) -> str:
    v = (value or "").strip()
    if not SECTOR_RE.match(v):
        raise UsageError("C4 sector must be 1-40 letters, digits, space, '.', '_' or '-'")
    return v


def coordinate(value: float | str, name: str, limit: float) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise UsageError(f"{name} must be a number") from None
    if not math.isfinite(v) or not -limit <= v <= limit:
        raise UsageError(f"{name} must be between -{limit:g} and {limit:g}")
    return v


def board(value: str) -> str:
    v = (value or "").strip()
    if not BOARD_RE.match(v):
        raise UsageError("board name must be lower-case letters, digits, '_', '.' or '-'")
    return v


def fw_version(value: str | None) -> str | None:
    if value is None or value == "":
        return None
    v = value.strip()
    if not FW_RE.match(v):
        raise UsageError("firmware version must look like 1.2.3")
    return v


def actor(value: str) -> str:
    v = (value or "").strip()
    if not ACTOR_RE.match(v):
        raise UsageError("actor must be 1-64 characters without spaces")
    return v


def timestamp(value: dt.datetime | str | None, name: str) -> dt.datetime | None:
    """An aware UTC datetime from a datetime or ISO 8601 text (naive = UTC)."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        try:
            value = dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            raise UsageError(f"{name} must be an ISO 8601 date or time") from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.timezone.utc)
    return value.astimezone(dt.timezone.utc)


def rekey_grace(value: float | int | str) -> float:
    """Seconds the replaced key stays valid after a rekey (SPEC §12.1): 0 to a week."""
    from auxilio.lifecycle import MAX_REKEY_GRACE_S

    try:
        grace = float(value)
    except (TypeError, ValueError):
        raise UsageError("grace must be a number of seconds") from None
    if not 0 <= grace <= MAX_REKEY_GRACE_S:  # also refuses NaN
        raise UsageError(f"grace must be 0-{MAX_REKEY_GRACE_S} seconds")
    return grace
