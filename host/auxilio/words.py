"""Registry codes as field staff and C4 operators read them: one term per concept (issue 9 §4).

The registry and `--json` keep the codes (`spare`, `bracelet`); every screen
and report shows these words, through auxilio.i18n (Spanish first).
"""

from __future__ import annotations

from auxilio.i18n import N_, _

KIND_WORDS = {"bracelet": N_("pulsera"), "button": N_("botón")}
STATE_WORDS = {
    "provisioning": N_("en aprovisionamiento"),
    "spare": N_("repuesto"),
    "assigned": N_("asignado"),
    "lost": N_("perdido"),
    "revoked": N_("revocado"),
    "retired": N_("retirado"),
}

# Audit actions (registry.store, console outcomes, the gateway's attend), as the
# history in `devices show` names them; the log itself keeps the codes.
ACTION_WORDS = {
    "add": N_("alta"),
    "assign": N_("asignación"),
    "unassign": N_("fin de asignación"),
    "spare": N_("vuelta a repuesto"),
    "mark-lost": N_("marcado como perdido"),
    "revoked": N_("revocación"),
    "retired": N_("retiro"),
    "rekey": N_("cambio de clave"),
    "mqtt-password": N_("contraseña MQTT"),
    "set-sim": N_("número de SIM"),
    "config": N_("configuración"),
    "attend-request": N_("solicitud de atención"),
    "attend": N_("atención"),
    "close": N_("cierre"),
    "close-amend": N_("corrección del cierre"),
    "export-csv": N_("exportación CSV"),
    "import-csv": N_("importación CSV"),
    "provision-begin": N_("inicio de aprovisionamiento"),
    "provision-commit": N_("aprovisionamiento confirmado"),
    "provision-abandon": N_("aprovisionamiento deshecho"),
}


def action_word(code: str) -> str:
    """An audit action as the operator reads it (an unknown code passes through)."""
    es = ACTION_WORDS.get(code)
    return _(es) if es else code


def word(code: str | None) -> str:
    """A device kind or lifecycle state as the operator's word (unknown codes pass through)."""
    if not code:
        return ""
    es = KIND_WORDS.get(code) or STATE_WORDS.get(code)
    return _(es) if es else code
