"""Device lifecycle tunables shared by the registry, the CLI and the gateway (no heavy imports: the CLI reads them for --help)."""

from __future__ import annotations

# How long frames under the key a rekey replaced are still accepted (SPEC §12.1): long
# enough for alerts the broker or an SMSC still holds for a gateway that was down or
# busy, and for a device in hand to get its new config; `--grace 0` ends it at once.
DEFAULT_REKEY_GRACE_S = 300
# The longest a replaced key may stay valid (a week: a device in a drawer gets its new
# config within that, or is rekeyed again).
MAX_REKEY_GRACE_S = 7 * 24 * 3600
