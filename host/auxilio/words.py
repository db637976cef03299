"""Registry codes as field staff and C4 operators read them: one term per concept (issue 9 §4).

The registry and `--json` keep the codes (`spare`, `bracelet`); every screen
and report shows these words, through auxilio.i18n (Spanish first).
"""

from __future__ import annotations

from auxilio.i18n import _, register

KIND_WORDS = {"bracelet": "pulsera", "button": "botón"}
STATE_WORDS = {
    "spare": "repuesto",
    "assigned": "asignado",
    "lost": "perdido",
    "revoked": "revocado",
    "retired": "retirado",
}
register({es: en for en, es in (KIND_WORDS | STATE_WORDS).items()})


def word(code: str | None) -> str:
    """A device kind or lifecycle state as the operator's word (unknown codes pass through)."""
    if not code:
        return ""
    es = KIND_WORDS.get(code) or STATE_WORDS.get(code)
    return _(es) if es else code
