"""`auxilio gateway status`: the gateway's backlog and troubles, read from the registry read-only."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import func, select

from auxilio.gateway.records import FORWARD_FAILING, FORWARD_RESTORED
from auxilio.gateway.store import Store


def gateway_status(registry: Any) -> dict[str, Any]:
    """Forward backlog, unacked frames, dead letters, the last forwarding event (JSON-safe)."""
    st = Store(registry)
    backlog, oldest = st.forward_backlog()
    t = registry.tables
    now = dt.datetime.now(dt.timezone.utc)
    with registry.engine.connect() as conn:
        unacked = conn.execute(
            select(func.count()).select_from(t.alerts).where(t.alerts.c.acked_at.is_(None))
        ).scalar_one()
        e = t.events
        last = (
            conn.execute(
                select(e.c.type, e.c.at, e.c.detail)
                .where(e.c.type.in_((FORWARD_FAILING, FORWARD_RESTORED)))
                .order_by(e.c.id.desc())
                .limit(1)
            )
            .mappings()
            .first()
        )
    return {
        "forward_backlog": backlog,
        "forward_oldest_age_s": round((now - oldest).total_seconds(), 1) if oldest else None,
        "forward_failing": bool(last and last["type"] == FORWARD_FAILING),
        "forward_last_event": None
        if last is None
        else {"type": last["type"], "at": last["at"].isoformat(), "detail": last["detail"]},
        "unacked_frames": int(unacked),
        "dead_letters": st.dead_letter_counts(),
    }


def render_status(s: dict[str, Any]) -> str:
    lines = [
        f"forward backlog   {s['forward_backlog']}"
        + (f" (oldest {s['forward_oldest_age_s']:.0f} s)" if s["forward_oldest_age_s"] else ""),
        f"forward failing   {'YES' if s['forward_failing'] else 'no'}",
        f"unacked frames    {s['unacked_frames']}",
        "dead letters      "
        + (", ".join(f"{k}={v}" for k, v in sorted(s["dead_letters"].items())) or "none"),
    ]
    return "\n".join(lines)
