"""Closing an alert: the console's one write, an operator outcome in `outcomes` (audited by trigger).

Outcomes are operator records, kept apart from what the gateway owns (DESIGN
§1, issue 9 §1): closing never needs write access to alerts. On PostgreSQL the
console role may INSERT into `outcomes` and nothing else (registry.roles). On
SQLite there are no roles; the honest equivalent is this narrow writer: its
connections carry a SQLite authorizer that lets through reads, an INSERT into
`outcomes`, and the audit row that the `outcomes_audit` trigger writes, and
refuses every other write at statement preparation. It keeps a bug in a
console from touching alerts; it is no boundary against someone who can open
the file with another program (use PostgreSQL for separation by privilege).

Closing does not require the alert to have been attended: a false alarm is
often closed without the wearer ever being told "help is coming", and the
registry should say so rather than force an attend. Each row records whether
the gateway had the alert attended at the close (`attended`), the audit entry
says `unattended` when not, and `auxilio report` counts them. A close is
final; a correction is a new row (`--amend`, the next revision), never an
UPDATE.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, func, insert, select, text
from sqlalchemy.exc import DBAPIError, IntegrityError

from auxilio import timefmt
from auxilio.errors import AuxilioError, ConnectionFailed, NotFoundError, UsageError
from auxilio.i18n import N_, _
from auxilio.registry import open_registry, resolve_url, schema, utcnow
from auxilio.registry import validate as v
from auxilio.registry.store import (
    SQLITE_BUSY_TIMEOUT_S,
    _sqlite_begin,
    _sqlite_pragmas,
    create_registry_engine,
)

log = logging.getLogger(__name__)

OUTCOMES = schema.OUTCOMES
# A note is one line for the record (what happened, who was sent), never a name.
NOTE_MAX = 500
# The SQLite trigger that may write audit rows on the writer's behalf (migrations._m5_outcomes).
_AUDIT_TRIGGER = "outcomes_audit"

# Registry codes -> the operator's words.
OUTCOME_WORDS = {
    "resolved": N_("resuelta"),
    "false_alarm": N_("falsa alarma"),
    "no_contact": N_("sin contacto"),
    "test": "prueba",
}


def outcome_word(code: str | None) -> str:
    """An outcome code as the operator reads it."""
    if not code:
        return ""
    return _(OUTCOME_WORDS[code]) if code in OUTCOME_WORDS else code


@dataclass(frozen=True)
class Outcome:
    """One outcomes row: the current one of an alert is its highest revision."""

    alert_id: int
    revision: int
    outcome: str
    note: str
    operator: str
    closed_at: dt.datetime
    attended: bool

    def public(self) -> dict[str, Any]:
        return {
            "alert": self.alert_id,
            "revision": self.revision,
            "outcome": self.outcome,
            "note": self.note,
            "operator": self.operator,
            "closed_at": timefmt.iso(self.closed_at),
            "attended": self.attended,
        }

    def message(self) -> str:
        """One line for the operator."""
        when = timefmt.stamp(self.closed_at)
        if self.revision == 1:
            line = _("alerta {id} cerrada: {outcome} (operadora {op}, {when})").format(
                id=self.alert_id, outcome=outcome_word(self.outcome), op=self.operator, when=when
            )
        else:
            line = _("alerta {id} corregida: {outcome} (revisión {rev}, operadora {op}, {when})")
            line = line.format(
                id=self.alert_id,
                outcome=outcome_word(self.outcome),
                rev=self.revision,
                op=self.operator,
                when=when,
            )
        if not self.attended:
            line += " · " + _("cerrada sin atender: la usuaria no recibió el aviso de ayuda")
        return line


def _row(m: Any) -> Outcome:
    return Outcome(
        alert_id=int(m["alert_id"]),
        revision=int(m["revision"]),
        outcome=m["outcome"],
        note=m["note"] or "",
        operator=m["operator"],
        closed_at=m["closed_at"],
        attended=bool(m["attended"]),
    )


def current_outcomes(conn: Any, alert_ids: list[int]) -> dict[int, Outcome]:
    """The latest outcome of each alert that has one (one query, by the (alert, revision) key)."""
    if not alert_ids:
        return {}
    o = schema.outcomes
    latest = (
        select(o.c.alert_id, func.max(o.c.revision).label("rev"))
        .where(o.c.alert_id.in_(alert_ids))
        .group_by(o.c.alert_id)
        .subquery()
    )
    q = select(o).join(latest, (o.c.alert_id == latest.c.alert_id) & (o.c.revision == latest.c.rev))
    return {r["alert_id"]: _row(r) for r in conn.execute(q).mappings()}


def history(registry: Any, alert_id: int) -> list[Outcome]:
    """Every outcome row of one alert, oldest first."""
    o = schema.outcomes
    with registry.reader.connect() as conn:
        rows = conn.execute(
            select(o).where(o.c.alert_id == alert_id).order_by(o.c.revision)
        ).mappings()
        return [_row(r) for r in rows]


# ----------------------------------------------------------------- writer ---

_SQLITE_READS = frozenset(
    getattr(sqlite3, n)
    for n in (
        "SQLITE_READ",
        "SQLITE_SELECT",
        "SQLITE_TRANSACTION",
        "SQLITE_SAVEPOINT",
        "SQLITE_FUNCTION",
        "SQLITE_RECURSIVE",
    )
    if hasattr(sqlite3, n)
)


def _outcomes_only(action: int, arg1: str | None, _arg2: Any, _db: Any, source: str | None) -> int:
    """SQLite authorizer: reads, an INSERT into outcomes, and its trigger's audit row; no other write."""
    if action in _SQLITE_READS:
        return sqlite3.SQLITE_OK
    if action == sqlite3.SQLITE_INSERT:
        if arg1 == "outcomes" and source is None:
            return sqlite3.SQLITE_OK
        if arg1 == "audit" and source == _AUDIT_TRIGGER:
            return sqlite3.SQLITE_OK
    return sqlite3.SQLITE_DENY


def _install_authorizer(dbapi_conn: Any, _record: Any) -> None:
    # Runs after the registry's own connect hook (pragmas, WAL), which needs PRAGMA writes.
    dbapi_conn.set_authorizer(_outcomes_only)


def open_readonly(url: str | os.PathLike[str] | None) -> Any:
    """The registry as a console opens it: read-only, never created, never migrated."""
    try:
        return open_registry(url, readonly=True)
    except NotFoundError as exc:
        raise NotFoundError(
            f"{exc} (a console never creates one: pass --registry or set AUXILIO_REGISTRY)"
        ) from None


def note_text(note: str | None) -> str:
    n = (note or "").strip()
    if len(n) > NOTE_MAX or not n.isprintable():
        raise UsageError(
            _("la nota debe tener como mucho {n} caracteres imprimibles en una línea").format(
                n=NOTE_MAX
            )
        )
    return n


def outcome_code(outcome: str) -> str:
    if outcome not in OUTCOMES:
        raise UsageError(
            _("resultado desconocido {o!r}; uno de: {all}").format(
                o=outcome, all=", ".join(OUTCOMES)
            )
        )
    return outcome


def alert_number(value: int | str) -> int:
    try:
        n = int(value)
    except (TypeError, ValueError):
        n = 0
    if not 1 <= n < 1 << 63:
        raise UsageError(_("el número de alerta debe ser positivo y menor que 2^63"))
    return n


class Closer:
    """A registry connection that writes operator outcomes and nothing else.

    ``url`` is the registry as the console names it (a file path or a URL;
    on PostgreSQL the console role's login). The registry must exist at the
    current schema version: a console never creates or migrates one.
    """

    def __init__(self, url: str | os.PathLike[str] | None) -> None:
        open_readonly(url).close()  # missing, too old or too new: one line
        u = resolve_url(url)
        self.sqlite = u.get_backend_name() == "sqlite"
        if not self.sqlite:
            self.engine: Engine = create_registry_engine(u)
            return
        if not Path(u.database or "").is_file():
            raise NotFoundError(f"registry {u.database} does not exist")
        # The registry's own SQLite engine set-up, without its create-and-tighten
        # step: a console never creates the gateway's file nor changes its mode.
        self.engine = create_engine(
            u, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S, "check_same_thread": False}
        )
        event.listen(self.engine, "connect", _sqlite_pragmas)
        event.listen(self.engine, "connect", _install_authorizer)  # after the pragmas
        event.listen(self.engine, "begin", _sqlite_begin)

    def close_alert(
        self,
        alert_id: int | str,
        outcome: str,
        operator: str,
        note: str | None = "",
        amend: bool = False,
    ) -> Outcome:
        """Record what became of an ALERT (with --amend: correct the last record)."""
        alert_id = alert_number(alert_id)
        outcome = outcome_code(outcome)
        operator = v.actor(operator)
        note = note_text(note)
        a, o = schema.alerts, schema.outcomes
        try:
            with self.engine.begin() as conn:
                if not self.sqlite:
                    # The console role's sessions default to read-only; the grants
                    # still confine this transaction to inserting outcomes.
                    conn.execute(text("SET TRANSACTION READ WRITE"))
                row = conn.execute(
                    select(a.c.type, a.c.attending_at).where(a.c.id == alert_id)
                ).first()
                if row is None:
                    raise NotFoundError(_("alerta {id}: no existe").format(id=alert_id))
                if row.type != "ALERT":
                    raise UsageError(
                        _(
                            "fila {id}: es un evento {type}, no una alerta (los eventos no se cierran)"
                        ).format(id=alert_id, type=row.type)
                    )
                last = current_outcomes(conn, [alert_id]).get(alert_id)
                if last is not None and not amend:
                    raise AuxilioError(
                        _(
                            "alerta {id}: ya cerrada como «{outcome}» por {op} ({when}); "
                            "--amend para corregir"
                        ).format(
                            id=alert_id,
                            outcome=outcome_word(last.outcome),
                            op=last.operator,
                            when=timefmt.stamp(last.closed_at),
                        )
                    )
                if last is None and amend:
                    raise UsageError(
                        _("alerta {id}: no está cerrada; ciérrela sin --amend").format(id=alert_id)
                    )
                got = (
                    conn.execute(
                        insert(o)
                        .values(
                            alert_id=alert_id,
                            revision=1 if last is None else last.revision + 1,
                            outcome=outcome,
                            note=note,
                            operator=operator,
                            closed_at=utcnow(),
                            attended=row.attending_at is not None,
                        )
                        .returning(*o.c)
                    )
                    .mappings()
                    .one()
                )
                done = _row(got)
        except IntegrityError:
            # Another console closed (or corrected) it between our read and our insert.
            raise AuxilioError(
                _("alerta {id}: otra consola la cerró mientras tanto; vuelva a mirarla").format(
                    id=alert_id
                )
            ) from None
        except DBAPIError as exc:
            reason = str(getattr(exc, "orig", exc)).strip().splitlines()
            raise ConnectionFailed(
                f"registry refused the outcome: {reason[0] if reason else type(exc).__name__}"
                + ("" if self.sqlite else " (is the console role's grant current? see README)")
            ) from None
        log.info("console: alert %d closed (%s, revision %d)", alert_id, outcome, done.revision)
        return done

    def dispose(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Closer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.dispose()
