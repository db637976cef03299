"""Versioned schema migrations: ordered functions, one transaction, refuse a newer database."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable

from sqlalchemy import (
    Column,
    Connection,
    Engine,
    Integer,
    MetaData,
    Table,
    func,
    inspect,
    select,
    text,
)

from auxilio.errors import AuxilioError
from auxilio.registry.schema import LATEST_VERSION, UTCDateTime, define

log = logging.getLogger(__name__)

# Any constant works; it only has to be the same in every Auxilio process.
_PG_MIGRATION_LOCK = 0x41555831  # "AUX1"

_version_md = MetaData()
schema_version = Table(
    "schema_version",
    _version_md,
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("applied_at", UTCDateTime, nullable=False),
)


class SchemaTooNew(AuxilioError):
    """The database was written by a newer Auxilio; refuse rather than corrupt it."""


def _m1_initial(conn: Connection) -> None:
    define(MetaData(), version=1).create_all(conn)


def _m2_mqtt_password(conn: Connection) -> None:
    conn.execute(text("ALTER TABLE devices ADD COLUMN mqtt_password_hash VARCHAR(200)"))
    conn.execute(text("CREATE INDEX ix_alerts_received_at ON alerts (received_at)"))


def _m3_audit_append_only(conn: Connection) -> None:
    # The API has no UPDATE/DELETE path for audit; the database enforces it too,
    # so a bug or a careless ad-hoc query cannot rewrite who did what.
    if conn.dialect.name == "sqlite":
        for op in ("UPDATE", "DELETE"):
            conn.execute(
                text(
                    f"CREATE TRIGGER audit_no_{op.lower()} BEFORE {op} ON audit "
                    "BEGIN SELECT RAISE(ABORT, 'audit log is append-only'); END"
                )
            )
    elif conn.dialect.name == "postgresql":
        conn.execute(
            text(
                "CREATE FUNCTION auxilio_audit_append_only() RETURNS trigger AS $$ "
                "BEGIN RAISE EXCEPTION 'audit log is append-only'; END; $$ LANGUAGE plpgsql"
            )
        )
        conn.execute(
            text(
                "CREATE TRIGGER audit_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON audit "
                "FOR EACH STATEMENT EXECUTE FUNCTION auxilio_audit_append_only()"
            )
        )


_V4_ALERT_COLUMNS = (
    "id, device_id, counter, type, flags, device_ts, payload, raw, received_at, acked_at,"
    " attending_at, attending_by, disposition, forwarded_at, cancelled_at, test, lost"
)


def _m4_c4_integrity(conn: Connection) -> None:
    # Alerts are keyed by (device, key epoch, counter) from now on. Rows stored
    # before v4 take their device's current epoch: they were unique by
    # (device, counter), so any epoch keeps them unique, and the current one is
    # right for every row stored since the last re-key.
    v4 = define(MetaData(), version=4)
    if conn.dialect.name == "sqlite":
        # SQLite cannot drop a constraint: rebuild the table (inside this transaction).
        new = v4.tables["alerts"].to_metadata(v4, name="alerts_v4")
        new.indexes.clear()
        new.create(conn)
        conn.execute(
            text(
                f"INSERT INTO alerts_v4 ({_V4_ALERT_COLUMNS}, key_epoch, via) "
                f"SELECT {', '.join('a.' + c.strip() for c in _V4_ALERT_COLUMNS.split(','))},"
                " d.key_epoch, 'mqtt' FROM alerts a JOIN devices d ON d.id = a.device_id"
            )
        )
        conn.execute(text("DROP TABLE alerts"))
        conn.execute(text("ALTER TABLE alerts_v4 RENAME TO alerts"))
        conn.execute(text("CREATE INDEX ix_alerts_received_at ON alerts (received_at)"))
    else:
        conn.execute(text("ALTER TABLE alerts ADD COLUMN key_epoch INTEGER NOT NULL DEFAULT 1"))
        conn.execute(
            text(
                "UPDATE alerts SET key_epoch = d.key_epoch FROM devices d WHERE d.id = alerts.device_id"
            )
        )
        conn.execute(text("ALTER TABLE alerts ADD COLUMN pressed_at TIMESTAMP WITHOUT TIME ZONE"))
        conn.execute(text("ALTER TABLE alerts ADD COLUMN via VARCHAR(8) NOT NULL DEFAULT 'mqtt'"))
        conn.execute(text("ALTER TABLE alerts ADD COLUMN gw_seal BYTEA"))
        conn.execute(text("ALTER TABLE alerts DROP CONSTRAINT uq_alerts_device_counter"))
        conn.execute(
            text(
                "ALTER TABLE alerts ADD CONSTRAINT uq_alerts_device_epoch_counter"
                " UNIQUE (device_id, key_epoch, counter)"
            )
        )
    for name in ("forward_outbox", "dead_letters", "attend_requests"):
        v4.tables[name].create(conn)


def _m5_device_msisdn(conn: Connection) -> None:
    conn.execute(text("ALTER TABLE devices ADD COLUMN msisdn VARCHAR(20)"))
    conn.execute(text("CREATE UNIQUE INDEX uq_devices_msisdn ON devices (msisdn)"))


# Outcome rows write their own audit entry, so a console that may write only
# `outcomes` (registry.roles) still leaves who closed what, and when, in the log.
_OUTCOME_AUDIT_ACTION = "CASE WHEN NEW.revision = 1 THEN 'close' ELSE 'close-amend' END"
_OUTCOME_AUDIT_DETAIL = (
    "'outcome=' || NEW.outcome || ' revision=' || NEW.revision"
    " || CASE WHEN NEW.attended THEN '' ELSE ' unattended' END"
)
_OUTCOME_AUDIT_VALUES = (
    f"(NEW.closed_at, NEW.operator, {_OUTCOME_AUDIT_ACTION}, 'alert:' || NEW.alert_id,"
    f" {_OUTCOME_AUDIT_DETAIL})"
)
# Only an ALERT is closed, and corrections come in order (1, 2, ...): the
# database says so, whoever writes (the unique (alert, revision) settles races).
_OUTCOME_NOT_AN_ALERT = (
    "NOT EXISTS (SELECT 1 FROM alerts WHERE id = NEW.alert_id AND type = 'ALERT')"
)
_OUTCOME_BAD_REVISION = (
    "NEW.revision <> (SELECT COALESCE(MAX(revision), 0) + 1 FROM outcomes"
    " WHERE alert_id = NEW.alert_id)"
)


def _m6_outcomes(conn: Connection) -> None:
    v6 = define(MetaData(), version=6)
    v6.tables["outcomes"].create(conn)
    for table, name in (("alerts", "ix_alerts_pending"), ("events", "ix_events_type_device")):
        next(i for i in v6.tables[table].indexes if i.name == name).create(conn)
    if conn.dialect.name == "sqlite":
        for name, when, message in (
            ("outcomes_only_alerts", _OUTCOME_NOT_AN_ALERT, "only an ALERT has an outcome"),
            ("outcomes_in_order", _OUTCOME_BAD_REVISION, "outcome revision out of order"),
        ):
            conn.execute(
                text(
                    f"CREATE TRIGGER {name} BEFORE INSERT ON outcomes WHEN {when} "
                    f"BEGIN SELECT RAISE(ABORT, '{message}'); END"
                )
            )
        conn.execute(
            text(
                "CREATE TRIGGER outcomes_audit AFTER INSERT ON outcomes BEGIN "
                "INSERT INTO audit (at, actor, action, target, detail) "
                f"VALUES {_OUTCOME_AUDIT_VALUES}; END"
            )
        )
        for op in ("UPDATE", "DELETE"):
            conn.execute(
                text(
                    f"CREATE TRIGGER outcomes_no_{op.lower()} BEFORE {op} ON outcomes "
                    "BEGIN SELECT RAISE(ABORT, 'outcomes are append-only'); END"
                )
            )
        return
    # PostgreSQL: the console role inserts outcomes and nothing else, so the
    # trigger that writes the audit row runs with its owner's rights (SECURITY
    # DEFINER). Its search_path names the registry's schema and then pg_temp
    # last, so a console cannot shadow `audit` with a temporary table. The
    # close time is the server's clock, not the console's.
    schema_name = conn.execute(text("SELECT quote_ident(current_schema())")).scalar_one()
    conn.execute(
        text(
            "CREATE FUNCTION auxilio_outcome_close() RETURNS trigger LANGUAGE plpgsql "
            f"SECURITY DEFINER SET search_path = {schema_name}, pg_temp AS $$ BEGIN "
            f"IF {_OUTCOME_NOT_AN_ALERT} THEN "
            "RAISE EXCEPTION 'only an ALERT has an outcome'; END IF; "
            f"IF {_OUTCOME_BAD_REVISION} THEN "
            "RAISE EXCEPTION 'outcome revision out of order' USING ERRCODE = 'unique_violation'; "
            "END IF; "
            "NEW.closed_at := now() AT TIME ZONE 'UTC'; "
            "INSERT INTO audit (at, actor, action, target, detail) "
            f"VALUES {_OUTCOME_AUDIT_VALUES}; "
            "RETURN NEW; END; $$"
        )
    )
    conn.execute(
        text(
            "CREATE TRIGGER outcomes_close BEFORE INSERT ON outcomes "
            "FOR EACH ROW EXECUTE FUNCTION auxilio_outcome_close()"
        )
    )
    conn.execute(
        text(
            "CREATE FUNCTION auxilio_outcomes_append_only() RETURNS trigger AS $$ "
            "BEGIN RAISE EXCEPTION 'outcomes are append-only'; END; $$ LANGUAGE plpgsql"
        )
    )
    conn.execute(
        text(
            "CREATE TRIGGER outcomes_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON outcomes "
            "FOR EACH STATEMENT EXECUTE FUNCTION auxilio_outcomes_append_only()"
        )
    )


def _m7_key_grace(conn: Connection) -> None:
    cols = define(MetaData(), version=7).tables["devices"].columns
    for name in (
        "prev_key_epoch",
        "prev_sealed_secret",
        "prev_high_water",
        "prev_window",
        "prev_valid_until",
    ):
        kind = cols[name].type.compile(conn.dialect)
        conn.execute(text(f"ALTER TABLE devices ADD COLUMN {name} {kind}"))


def _m8_device_health(conn: Connection) -> None:
    kind = define(MetaData(), version=8).tables["devices"].c.health.type.compile(conn.dialect)
    conn.execute(text(f"ALTER TABLE devices ADD COLUMN health {kind}"))


# Ordered: index i holds the migration that produces version i + 1. Never edit a
# released migration; append a new one and bump schema.LATEST_VERSION.
MIGRATIONS: list[Callable[[Connection], None]] = [
    _m1_initial,
    _m2_mqtt_password,
    _m3_audit_append_only,
    _m4_c4_integrity,
    _m5_device_msisdn,
    _m6_outcomes,
    _m7_key_grace,
    _m8_device_health,
]
assert len(MIGRATIONS) == LATEST_VERSION


def current_version(conn: Connection) -> int:
    """0 for an empty database."""
    if not inspect(conn).has_table("schema_version"):
        return 0
    return int(conn.execute(select(func.max(schema_version.c.version))).scalar() or 0)


def migrate(engine: Engine, target: int = LATEST_VERSION) -> tuple[int, int]:
    """Bring the database to ``target``; returns (version before, version after)."""
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            # Two processes opening a fresh database at once must not both migrate.
            conn.execute(select(func.pg_advisory_xact_lock(_PG_MIGRATION_LOCK)))
        _version_md.create_all(conn, checkfirst=True)
        before = current_version(conn)
        if before > LATEST_VERSION:
            raise SchemaTooNew(
                f"registry schema version {before} is newer than this Auxilio supports "
                f"({LATEST_VERSION}); upgrade Auxilio"
            )
        for version in range(before + 1, target + 1):
            log.info("registry: migrating schema to version %d", version)
            MIGRATIONS[version - 1](conn)
            conn.execute(
                schema_version.insert().values(
                    version=version, applied_at=dt.datetime.now(dt.timezone.utc)
                )
            )
        return before, max(before, target)
