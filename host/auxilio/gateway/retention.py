"""Privacy at rest: erase the locations of old alerts, keep the alerts themselves (issue 8 §11).

A location is what a stalker wants. After `retention_days` (default 90) the
gateway erases, in place: the alert payload's fix (lat_e7, lon_e7,
accuracy_m, fix_age_s), the stored frame itself (its ciphertext decrypts
with the device key), the row seal (nothing left to seal), the evidence of
counter collisions, and dead-letter payloads. The alert row (device, time,
type, disposition, who attended it) and the audit trail stay.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import and_, or_, select, update

# Days a location is kept unless --retention-days says otherwise.
DEFAULT_RETENTION_DAYS = 90
# The gateway runs the purge at start and then this often.
RETENTION_EVERY_S = 3600.0
# Rows rewritten per transaction (keeps the registry's write lock short).
PURGE_CHUNK = 500
LOCATION_FIELDS = ("lat_e7", "lon_e7", "accuracy_m", "fix_age_s")


def purge_locations(registry: Any, days: int, now: float) -> int:
    """Erase what locates a person in records older than `days`; returns the rows changed."""
    if days <= 0:
        return 0
    cutoff = dt.datetime.fromtimestamp(now - days * 86400, dt.timezone.utc)
    t = registry.tables
    changed = 0
    a = t.alerts
    while True:
        with registry.engine.begin() as conn:
            rows = conn.execute(
                select(a.c.id, a.c.payload)
                .where(
                    a.c.received_at < cutoff, or_(a.c.raw.is_not(None), a.c.gw_seal.is_not(None))
                )
                .limit(PURGE_CHUNK)
            ).all()
            for rid, payload in rows:
                clean = dict(payload or {})
                for k in LOCATION_FIELDS:
                    if k in clean:
                        clean[k] = None
                clean["location_erased"] = True
                conn.execute(
                    update(a).where(a.c.id == rid).values(payload=clean, raw=None, gw_seal=None)
                )
        changed += len(rows)
        if len(rows) < PURGE_CHUNK:
            break
    e = t.events
    with registry.engine.begin() as conn:
        rows = conn.execute(
            select(e.c.id, e.c.detail).where(e.c.at < cutoff, e.c.type.in_(("COUNTER_COLLISION",)))
        ).all()
        for rid, detail in rows:
            d = dict(detail or {})
            if d.get("location_erased"):
                continue
            d.pop("raw_hex", None)
            fields = d.get("fields") or {}
            d["fields"] = {k: v for k, v in fields.items() if k not in LOCATION_FIELDS}
            d["location_erased"] = True
            conn.execute(update(e).where(e.c.id == rid).values(detail=d))
            changed += 1
        dl = t.dead_letters
        res = conn.execute(
            update(dl).where(and_(dl.c.at < cutoff, dl.c.payload.is_not(None))).values(payload=None)
        )
        changed += res.rowcount or 0
    return changed
