"""PostgreSQL roles: the gateway writes; operator consoles read, and write only outcomes (DESIGN §1).

SQLite has no roles: consoles open the file read-only instead
(``open_registry(url, readonly=True)``), and closing an alert goes through a
narrow writer whose SQLite authorizer allows inserts into ``outcomes`` only
(``auxilio.console.outcomes``). On PostgreSQL the console connects as its own
role, which may SELECT every table and INSERT into ``outcomes`` - nothing
else, never an UPDATE or DELETE; the audit row of a close is written by the
outcomes trigger with the registry owner's rights (migrations._m6_outcomes).
Its sessions are read-only by default (``default_transaction_read_only``):
only the close itself opens a read-write transaction, which the grants
still confine to that one table.
"""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy import text

from auxilio.errors import UsageError

_ROLE_RE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
CONSOLE_ROLE = "auxilio_console"
# The one table an operator console writes (issue 9 §1: outcomes are operator records).
CONSOLE_WRITES = "outcomes"


def create_console_role(
    registry: Any, name: str = CONSOLE_ROLE, password: str | None = None
) -> None:
    """Create (or refresh the grants of) a login role that reads every registry table and may
    only insert operator outcomes."""
    if registry.engine.dialect.name != "postgresql":
        raise UsageError(
            "roles exist only on a PostgreSQL registry (SQLite consoles open it read-only)"
        )
    if not _ROLE_RE.match(name):
        raise UsageError("role name must be lower-case letters, digits and '_' (max 63)")
    with registry.engine.begin() as conn:
        exists = conn.execute(
            text("SELECT 1 FROM pg_roles WHERE rolname = :n"), {"n": name}
        ).first()
        if not exists:
            conn.execute(text(f'CREATE ROLE "{name}" LOGIN'))
        if password is not None:
            # ALTER ROLE takes no bind parameters: a string literal, quotes doubled
            # (standard_conforming_strings is on by default since PostgreSQL 9.1).
            literal = "'" + password.replace("'", "''") + "'"
            conn.execute(text(f'ALTER ROLE "{name}" PASSWORD {literal}'))
        conn.execute(text(f'ALTER ROLE "{name}" SET default_transaction_read_only = on'))
        conn.execute(text(f'REVOKE ALL ON ALL TABLES IN SCHEMA public FROM "{name}"'))
        conn.execute(text(f'REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM "{name}"'))
        conn.execute(text(f'GRANT USAGE ON SCHEMA public TO "{name}"'))
        conn.execute(text(f'GRANT SELECT ON ALL TABLES IN SCHEMA public TO "{name}"'))
        conn.execute(text(f'GRANT INSERT ON {CONSOLE_WRITES} TO "{name}"'))
        seq = conn.execute(
            text("SELECT pg_get_serial_sequence(:t, 'id')"), {"t": CONSOLE_WRITES}
        ).scalar_one()
        conn.execute(text(f'GRANT USAGE ON SEQUENCE {seq} TO "{name}"'))
