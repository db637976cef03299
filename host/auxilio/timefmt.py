"""Times as people read them: local time with its UTC offset, the same in every command.

Stored times are UTC (registry UTCDateTime); what field staff and operators
read is local, always with the offset so a log, a report and a screen can be
compared (`2026-11-28 13:00:05 -06:00`). Machine output (`--json`) stays
ISO-8601 with the offset too.
"""

from __future__ import annotations

import datetime as dt

NONE = "—"  # shown where there is no time


def local(t: dt.datetime | None) -> dt.datetime | None:
    return None if t is None else t.astimezone()


def stamp(t: dt.datetime | None) -> str:
    """Date, time and offset: '2026-11-28 13:00:05 -06:00'."""
    if t is None:
        return NONE
    lt = t.astimezone()
    off = lt.strftime("%z")
    return lt.strftime("%Y-%m-%d %H:%M:%S ") + off[:3] + ":" + off[3:]


def clock(t: dt.datetime | None, today: dt.date | None = None) -> str:
    """Short form for tables: '13:00:05' today, else '11-27 13:00:05' (offset in the header)."""
    if t is None:
        return NONE
    lt = t.astimezone()
    today = today or dt.datetime.now().astimezone().date()
    return lt.strftime("%H:%M:%S" if lt.date() == today else "%m-%d %H:%M:%S")


def offset_label() -> str:
    """The local offset for a column header: 'UTC-06:00'."""
    off = dt.datetime.now().astimezone().strftime("%z")
    return "UTC" + off[:3] + ":" + off[3:]


def iso(t: dt.datetime | None) -> str | None:
    """ISO-8601 in local time with the offset, for --json."""
    return None if t is None else t.astimezone().isoformat(timespec="seconds")
