"""Registry tables (SQLAlchemy Core), defined per schema version so migrations can replay history."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.types import DateTime, TypeDecorator

# The schema version this code writes; migrations.py brings older files up to it.
LATEST_VERSION = 8

KINDS = ("bracelet", "button")
# provisioning (issue 11 §7): registered while its secret is being written to the device;
# not in service (no broker login, frames rejected) until the device has it.
STATES = ("provisioning", "spare", "assigned", "lost", "revoked", "retired")
# What became of an alert, as the operator who closed it judged (v6 `outcomes`).
OUTCOMES = ("resolved", "false_alarm", "no_contact", "test")

_U64_SIGN = 1 << 63
_U64_MOD = 1 << 64


class U64(TypeDecorator[int]):
    """Unsigned 64-bit integer (the replay window bitmap) in a signed BIGINT column.

    Both SQLite and PostgreSQL store signed 64-bit integers; bit 63 of the window
    would overflow. This maps two's complement transparently in both directions, so
    gateway code can read and write plain non-negative ints through the table.
    """

    impl = BigInteger
    cache_ok = True

    def process_bind_param(self, value: int | None, dialect: Any) -> int | None:
        if value is None:
            return None
        value = int(value)
        if not 0 <= value < _U64_MOD:
            raise ValueError("U64 out of range")
        return value - _U64_MOD if value >= _U64_SIGN else value

    def process_result_value(self, value: int | None, dialect: Any) -> int | None:
        if value is None:
            return None
        return value + _U64_MOD if value < 0 else value


class UTCDateTime(TypeDecorator[dt.datetime]):
    """Timezone-aware UTC datetimes on every backend (stored naive UTC).

    Binding also accepts a unix timestamp (int/float), which is what the gateway's
    hot path has at hand.
    """

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Any) -> dt.datetime | None:
        if value is None:
            return None
        if isinstance(value, (int, float)):
            return dt.datetime.fromtimestamp(value, dt.timezone.utc).replace(tzinfo=None)
        if not isinstance(value, dt.datetime):
            raise TypeError("UTCDateTime needs a datetime or a unix timestamp")
        if value.tzinfo is None:
            raise ValueError("naive datetime: pass an aware datetime (UTC)")
        return value.astimezone(dt.timezone.utc).replace(tzinfo=None)

    def process_result_value(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=dt.timezone.utc)


# An autoincrementing 64-bit key: SQLite only autoincrements "INTEGER PRIMARY KEY".
BigId = BigInteger().with_variant(Integer(), "sqlite")


def define(metadata: MetaData, version: int = LATEST_VERSION) -> MetaData:
    """Add the tables as they are at schema ``version`` to ``metadata``."""
    device_cols: list[Any] = [
        Column("id", BigInteger, primary_key=True, autoincrement=False),  # u32 device id
        Column("kind", String(16), nullable=False),  # bracelet | button
        Column("board", String(64), nullable=False),
        Column("fw_version", String(32)),
        Column("state", String(16), nullable=False, default="spare"),
        Column("key_epoch", Integer, nullable=False, default=1),  # +1 on each re-key
        Column("sealed_secret", LargeBinary, nullable=False),  # auxilio.keys.seal() blob
        Column("heartbeat_s", Integer),  # from the last CONFIG; NULL = board default
        Column("config_seq", BigInteger, nullable=False, default=0),  # last CONFIG counter
        Column("high_water", BigInteger),  # highest accepted counter; NULL = none yet
        Column("window", U64, nullable=False, default=0),  # bit i = high_water - i seen
        Column("last_seen", UTCDateTime),
        Column("created_at", UTCDateTime, nullable=False),
        Column("updated_at", UTCDateTime, nullable=False),
    ]
    if version >= 2:
        # v2: mosquitto password hash ($7$ PBKDF2-SHA512); the plaintext goes only
        # to the provisioning file, never into the registry.
        device_cols.append(Column("mqtt_password_hash", String(200)))
    if version >= 5:
        # v5 (SMS ingest, issue 12): the device's SIM number (E.164). An SMS is taken
        # only from the number registered for the device its frame names.
        device_cols.append(Column("msisdn", String(20), unique=True))
    if version >= 7:
        # v7 (issue 11 §5, SPEC §12.1): the key a rekey replaced, still accepted until
        # prev_valid_until (the rekey's grace period), with its own replay state. Sealed
        # like the current one; NULL when there is no grace (or after revoke/retire/lost).
        device_cols += [
            Column("prev_key_epoch", Integer),
            Column("prev_sealed_secret", LargeBinary),
            Column("prev_high_water", BigInteger),
            Column("prev_window", U64),
            Column("prev_valid_until", UTCDateTime),
        ]
    if version >= 8:
        # v8 (issue 12): the device's latest accepted HEARTBEAT as the gateway read it
        # (battery, rssi, bearer, outbox, fw, status bits, modem_fault, interval_s, at),
        # so consoles and reports see a bracelet's health between alerts.
        device_cols.append(Column("health", JSON(none_as_null=True)))
    Table("devices", metadata, *device_cols)

    Table(
        "assignments",
        metadata,
        Column("id", BigId, primary_key=True, autoincrement=True),
        Column("device_id", BigInteger, ForeignKey("devices.id"), nullable=False),
        Column("kind", String(8), nullable=False),  # case | site
        Column("case_ref", String(32)),  # bracelet: pseudonymous, never a name
        Column("site", String(120)),  # button: public place name
        Column("lat", Float),
        Column("lon", Float),
        Column("sector", String(40)),  # C4 sector
        Column("valid_from", UTCDateTime, nullable=False),
        Column("valid_to", UTCDateTime),
        Column("created_at", UTCDateTime, nullable=False),
        Column("ended_at", UTCDateTime),  # NULL = the device's current assignment
        Index("ix_assignments_device", "device_id", "ended_at"),
    )

    alert_cols: list[Any] = [
        Column("id", BigId, primary_key=True, autoincrement=True),
        Column("device_id", BigInteger, ForeignKey("devices.id"), nullable=False),
        Column("counter", BigInteger, nullable=False),
        Column("type", String(16), nullable=False),
        Column("flags", Integer, nullable=False, default=0),
        Column("device_ts", BigInteger),  # header timestamp; 0 = clock unknown
        Column("payload", JSON),  # decoded (decrypted) payload fields
        Column("raw", LargeBinary),  # the frame as received
        Column("received_at", UTCDateTime, nullable=False),
        Column("acked_at", UTCDateTime),
        Column("attending_at", UTCDateTime),
        Column("attending_by", String(64)),
        Column("disposition", String(16)),  # received | attending | rejected ...
        Column("forwarded_at", UTCDateTime),
        Column("cancelled_at", UTCDateTime),
        Column("test", Boolean, nullable=False, default=False),
        Column("lost", Boolean, nullable=False, default=False),
    ]
    if version >= 4:
        # v4 (C4 integrity): a frame is named by (device, key epoch, counter)
        # forever (SPEC §12.1); the press time apart from the delivery time
        # (§8.1); the path that delivered it first; and the gateway's own seal
        # over the row, so only rows the gateway stored can ever be attended.
        alert_cols += [
            Column("key_epoch", Integer, nullable=False, default=1),
            Column("pressed_at", UTCDateTime),
            Column("via", String(8), nullable=False, default="mqtt"),
            Column("gw_seal", LargeBinary),
            UniqueConstraint(
                "device_id", "key_epoch", "counter", name="uq_alerts_device_epoch_counter"
            ),
        ]
    else:
        alert_cols.append(UniqueConstraint("device_id", "counter", name="uq_alerts_device_counter"))
    Table("alerts", metadata, *alert_cols)

    Table(
        "events",
        metadata,
        Column("id", BigId, primary_key=True, autoincrement=True),
        Column("device_id", BigInteger),  # no FK: REJECTED events name unknown devices
        Column("type", String(32), nullable=False),  # SUPERVISION_LOST, TAMPER, ...
        Column("at", UTCDateTime, nullable=False),
        Column("detail", JSON),
        Column("alert_id", BigInteger),
        Index("ix_events_at", "at"),
    )

    Table(
        "audit",
        metadata,
        Column("id", BigId, primary_key=True, autoincrement=True),
        Column("at", UTCDateTime, nullable=False),
        Column("actor", String(64), nullable=False),
        Column("action", String(32), nullable=False),
        Column("target", String(64), nullable=False),
        Column("detail", Text, nullable=False, default=""),
    )
    if version >= 2:
        Index("ix_alerts_received_at", metadata.tables["alerts"].c.received_at)
    if version >= 4:
        _define_v4_tables(metadata)
    if version >= 6:
        _define_v6_outcomes(metadata)
    return metadata


def _define_v6_outcomes(metadata: MetaData) -> None:
    """v6 (the operator console): operator outcomes, kept apart from what the gateway owns."""
    alerts, events = metadata.tables["alerts"], metadata.tables["events"]
    # The console's queue (unattended ALERTs) read every second: a partial index
    # holds only those rows, so the query never scans the alert history.
    Index(
        "ix_alerts_pending",
        alerts.c.received_at,
        sqlite_where=(alerts.c.type == "ALERT") & alerts.c.attending_at.is_(None),
        postgresql_where=(alerts.c.type == "ALERT") & alerts.c.attending_at.is_(None),
    )
    # Each device's latest supervision event (device health) without a scan of all events.
    Index("ix_events_type_device", events.c.type, events.c.device_id, events.c.id)
    # Operators close alerts here; consoles may write this table and nothing else
    # (registry.roles on PostgreSQL, an authorizer on SQLite: console.outcomes).
    # Append-only: a correction is a new row with the next revision, and every
    # row writes its audit entry through a trigger (migrations._m6_outcomes).
    Table(
        "outcomes",
        metadata,
        Column("id", BigId, primary_key=True, autoincrement=True),
        Column("alert_id", BigInteger, ForeignKey("alerts.id"), nullable=False),
        Column("revision", Integer, nullable=False),  # 1 = the close; 2, 3 ... corrections
        Column("outcome", String(16), nullable=False),
        Column("note", String(500), nullable=False, default=""),
        Column("operator", String(64), nullable=False),
        Column("closed_at", UTCDateTime, nullable=False),
        # Whether the gateway had the alert attended (the wearer told) at the close.
        Column("attended", Boolean, nullable=False),
        UniqueConstraint("alert_id", "revision", name="uq_outcomes_alert_revision"),
        CheckConstraint(
            "outcome IN (" + ", ".join(f"'{o}'" for o in OUTCOMES) + ")", name="ck_outcomes_outcome"
        ),
        CheckConstraint("revision >= 1", name="ck_outcomes_revision"),
    )


def _define_v4_tables(metadata: MetaData) -> None:
    """Tables the C4-integrity issue added: forward outbox, dead letters, attend requests."""
    # Transactional outbox (DESIGN §1): a forward record is written in the same
    # transaction as the alert it describes and deleted when the sink confirmed
    # it, so the table holds only what is on its way (no index beyond the key).
    Table(
        "forward_outbox",
        metadata,
        Column("id", BigId, primary_key=True, autoincrement=True),
        Column("key", String(160), nullable=False, unique=True),  # the record's idempotency key
        # The alert the record describes (alerts.forwarded_at is set on delivery).
        Column("device_id", BigInteger),
        Column("key_epoch", Integer),
        Column("counter", BigInteger),
        Column("body", Text),  # an event's JSON record; NULL for an alert (built from its row)
        Column("created_at", UTCDateTime, nullable=False),
        Column("next_attempt_at", UTCDateTime, nullable=False),
        Column("attempts", Integer, nullable=False, default=0),
        Column("last_error", String(200)),
        Column("forwarded_at", UTCDateTime),  # set only while a pipe's resend window runs
        # Ids are never reused (SQLite would reuse them once the table empties):
        # the forwarder resumes after the last id a pipe took.
        sqlite_autoincrement=True,
    )
    # Inbound messages the gateway could not use: acknowledged to the broker (so
    # they are never redelivered forever) and kept here with the reason.
    Table(
        "dead_letters",
        metadata,
        Column("id", BigId, primary_key=True, autoincrement=True),
        Column("at", UTCDateTime, nullable=False),
        Column("source", String(16), nullable=False),  # uplink | status | attend | other
        Column("topic", String(256), nullable=False),
        Column("reason", String(64), nullable=False),
        Column("size", Integer, nullable=False),
        Column("payload", LargeBinary),  # the first DEAD_LETTER_KEEP bytes
        Index("ix_dead_letters_at", "at"),
    )
    # Operator attend requests and what became of them (requested -> sent | failed).
    Table(
        "attend_requests",
        metadata,
        Column("id", BigId, primary_key=True, autoincrement=True),
        Column("request_id", String(64), nullable=False, unique=True),
        Column("alert_id", BigInteger, nullable=False),
        Column("operator", String(64), nullable=False),
        Column("requested_at", UTCDateTime, nullable=False),
        Column("state", String(16), nullable=False),  # requested | sent | failed
        Column("reason", String(200), nullable=False, default=""),
        Column("sent_at", UTCDateTime),
        Column("updated_at", UTCDateTime, nullable=False),
        Index("ix_attend_requests_alert", "alert_id"),
    )


metadata = define(MetaData())
devices = metadata.tables["devices"]
assignments = metadata.tables["assignments"]
alerts = metadata.tables["alerts"]
events = metadata.tables["events"]
audit = metadata.tables["audit"]
forward_outbox = metadata.tables["forward_outbox"]
dead_letters = metadata.tables["dead_letters"]
attend_requests = metadata.tables["attend_requests"]
outcomes = metadata.tables["outcomes"]
