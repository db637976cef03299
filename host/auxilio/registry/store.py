"""The Registry: devices, assignments, lifecycle and audit over SQLite or PostgreSQL (one code path)."""

from __future__ import annotations

import datetime as dt
import logging
import os
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, func, select
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, IntegrityError, SQLAlchemyError
from sqlalchemy.pool import StaticPool

from auxilio.errors import AuxilioError, ConnectionFailed, NotFoundError, UsageError
from auxilio.private import ensure_private, tighten
from auxilio.registry import migrations, schema
from auxilio.registry import validate as v

log = logging.getLogger(__name__)

# Default registry file when neither --registry nor $AUXILIO_REGISTRY is given.
DEFAULT_REGISTRY = "var/auxilio.db"
# How long a writer waits for another writer's lock before failing (SQLite).
SQLITE_BUSY_TIMEOUT_S = 30
# How long to wait for PostgreSQL to answer a connection attempt.
PG_CONNECT_TIMEOUT_S = 5

# Lifecycle (issue 4 §1): which states set_state may move to from each state.
# spare <-> assigned goes through assign/unassign. A lost device may have been in an
# abuser's hands, so it never returns to service with the same secret: revoke or
# retire it and re-provision (rekey) instead. retired is final.
TRANSITIONS: dict[str, frozenset[str]] = {
    "provisioning": frozenset({"revoked", "retired"}),  # ends with commit/abandon_provisioning
    "spare": frozenset({"lost", "revoked", "retired"}),
    "assigned": frozenset({"lost", "revoked", "retired"}),
    "lost": frozenset({"revoked", "retired"}),
    "revoked": frozenset({"retired"}),
    "retired": frozenset(),
}
# SPEC §12.1 counter floor: how far above the C4's high-water mark a known secret
# restarts. Counters between H and the device's real next counter may still be in
# flight (queued in the outbox or a persistent MQTT session, heartbeats sent while
# the C4 was unreachable, a reservation block skipped by a power cut); starting
# above all of them means a re-flashed device never reuses one. 4096 covers about
# 2.8 days of 60 s button heartbeats, and stays far below the gateway's
# COUNTER_JUMP threshold (2^16), so a re-flash never looks like a leaked key.
COUNTER_FLOOR_MARGIN = 4096
# The first counter of a key that the C4 has accepted nothing under (SPEC §12.1).
FIRST_COUNTER = 1
# Counters are u32 (SPEC §3); a device near the top must be re-keyed (§12.1).
MAX_COUNTER = 0xFFFFFFFF
# States whose current assignment ends with the transition (lost keeps it: the
# operator still needs to know whose bracelet raised a flagged alert).
_ENDS_ASSIGNMENT = frozenset({"revoked", "retired"})


class RegistryError(AuxilioError):
    """A registry operation that cannot be done (bad transition, duplicate, ...)."""


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


@dataclass(frozen=True)
class PreviousKey:
    """The key a rekey replaced (schema v7), accepted until ``valid_until`` (SPEC §12.1)."""

    epoch: int
    sealed_secret: bytes = field(repr=False)
    high_water: int | None
    window: int
    valid_until: dt.datetime

    def valid_at(self, now: dt.datetime) -> bool:
        return now < self.valid_until


# Columns that hold a replaced key; cleared together (no grace, revoke, retire, lost).
NO_PREVIOUS_KEY: dict[str, Any] = {
    "prev_key_epoch": None,
    "prev_sealed_secret": None,
    "prev_high_water": None,
    "prev_window": None,
    "prev_valid_until": None,
}


@dataclass(frozen=True)
class DeviceRecord:
    """One devices row. ``window`` is the unsigned 64-bit replay bitmap."""

    id: int
    kind: str
    board: str
    fw_version: str | None
    state: str
    key_epoch: int
    sealed_secret: bytes = field(repr=False)
    heartbeat_s: int | None
    config_seq: int
    high_water: int | None
    window: int
    last_seen: dt.datetime | None
    created_at: dt.datetime
    updated_at: dt.datetime
    mqtt_password_hash: str | None = field(default=None, repr=False)
    msisdn: str | None = None  # the SIM's number (E.164), for SMS ingest
    # v7: the key the last rekey replaced, while its grace lasts (PreviousKey.valid_until).
    previous_key: PreviousKey | None = None
    # v8: the latest accepted HEARTBEAT (battery, rssi, bearer, fw, modem_fault, ..., at).
    health: dict[str, Any] | None = None

    @property
    def label(self) -> str:
        """Printed form, e.g. '0938-NKRT'."""
        return v.codec.device_str(self.id)

    def public_dict(self) -> dict[str, Any]:
        """Fields safe to print or export (no sealed secret, no password hash)."""
        return {
            "device": self.label,
            "id": self.id,
            "kind": self.kind,
            "board": self.board,
            "fw_version": self.fw_version,
            "state": self.state,
            "key_epoch": self.key_epoch,
            # SPEC §12.1: the key a rekey replaced and when its grace ends (no secret).
            "previous_key": (
                None
                if self.previous_key is None
                else {
                    "epoch": self.previous_key.epoch,
                    "valid_until": _iso(self.previous_key.valid_until),
                }
            ),
            "heartbeat_s": self.heartbeat_s,
            "health": self.health,
            "sim": self.msisdn,
            "config_seq": self.config_seq,
            "high_water": self.high_water,
            "last_seen": _iso(self.last_seen),
            "created_at": _iso(self.created_at),
            "updated_at": _iso(self.updated_at),
        }


def _iso(t: dt.datetime | None) -> str | None:
    return t.isoformat() if t is not None else None


def resolve_url(url: str | os.PathLike[str] | None = None) -> URL:
    """Registry location -> SQLAlchemy URL (psycopg 3 for PostgreSQL)."""
    raw = os.fspath(url) if url else os.environ.get("AUXILIO_REGISTRY") or DEFAULT_REGISTRY
    if "://" not in raw:
        return URL.create("sqlite+pysqlite", database=str(Path(raw).expanduser()))
    try:
        u = make_url(raw)
    except (ArgumentError, ValueError):
        raise UsageError(
            "bad registry URL (expected a file path, sqlite:///… or postgresql://…)"
        ) from None
    backend = u.get_backend_name()
    if backend == "sqlite":
        return u.set(drivername="sqlite+pysqlite")
    if backend in ("postgresql", "postgres"):
        return u.set(drivername="postgresql+psycopg")
    raise UsageError(f"unsupported registry URL scheme {u.drivername!r} (use sqlite or postgresql)")


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    # Autocommit at the driver level so that our "begin" hook decides how a
    # transaction starts (pysqlite would otherwise begin lazily, deferred).
    dbapi_conn.isolation_level = None
    cur = dbapi_conn.cursor()
    cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_S * 1000}")
    _ensure_wal(cur)  # readers never block the writer
    cur.execute("PRAGMA synchronous=FULL")  # an acked alert survives power loss
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def _ensure_wal(cur: Any) -> None:
    """Switch the file to WAL (persistent) once; retry while another opener holds it.

    SQLite does not call the busy handler for a journal-mode change, so two processes
    opening a fresh registry at once would otherwise fail with "database is locked".
    """
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_S
    delay = 0.005
    while True:
        try:
            mode = cur.execute("PRAGMA journal_mode").fetchone()[0]
            if mode in ("wal", "memory"):
                return
            mode = cur.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode != "wal":  # e.g. a filesystem without shared memory: keep going, say so
                log.warning("registry: SQLite refused WAL mode (journal_mode=%s)", mode)
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.2)


def _sqlite_begin(conn: Connection) -> None:
    # IMMEDIATE takes the write lock up front: a deferred transaction that reads and
    # then writes can fail with SQLITE_BUSY at once instead of waiting its turn.
    conn.exec_driver_sql("BEGIN IMMEDIATE")


def _sqlite_begin_readonly(conn: Connection) -> None:
    conn.exec_driver_sql("BEGIN")  # a read-only connection cannot take the write lock


def _private_sqlite_file(path: str) -> None:
    """Create the registry file 0600, or tighten an existing one (it holds locations)."""
    p = Path(path)
    try:
        ensure_private(p)
        # SQLite gives the -wal and -shm files the main file's mode; tighten old ones.
        for side in (p.with_name(p.name + "-wal"), p.with_name(p.name + "-shm")):
            tighten(side)
    except OSError as exc:
        raise ConnectionFailed(f"cannot create registry {path}: {exc.strerror}") from None


def _registry_directory(path: Path) -> None:
    """Create a new registry's own directory (var/ on first use), but not a missing tree.

    A registry named in a directory whose parent does not exist either
    (`--registry /nonexistent/dir/x.db`) is a typo, not a request to build
    the path: nothing is created then.
    """
    parent = path.parent
    if parent.is_dir():
        return
    if not parent.parent.is_dir():
        raise UsageError(
            f"cannot create registry {path}: directory {parent.parent} does not exist "
            "(check --registry or $AUXILIO_REGISTRY)"
        )
    try:
        parent.mkdir(exist_ok=True)  # another opener may create it at the same moment
    except OSError as exc:
        raise ConnectionFailed(
            f"cannot create registry directory {parent}: {exc.strerror}"
        ) from None


def create_registry_engine(u: URL, readonly: bool = False, create: bool = True) -> Engine:
    """An engine for the registry; readonly: consoles, which must never write (DESIGN §1).

    ``create`` False: a SQLite file that is not there is NotFoundError (commands
    that only read must never leave an empty registry behind).
    """
    if u.get_backend_name() == "sqlite":
        memory = u.database in (None, "", ":memory:")
        kwargs: dict[str, Any] = {
            "connect_args": {"timeout": SQLITE_BUSY_TIMEOUT_S, "check_same_thread": False}
        }
        if memory:
            kwargs["poolclass"] = StaticPool
        elif readonly:
            if not Path(u.database).is_file():
                raise NotFoundError(f"registry {u.database} does not exist")
            # SQLite's own read-only mode: any write fails in the library itself.
            u = u.set(database=f"file:{Path(u.database).resolve()}?mode=ro", query={"uri": "true"})
        elif not create and not Path(u.database).is_file():
            raise NotFoundError(f"registry {u.database} does not exist (check --registry)")
        else:
            _registry_directory(Path(u.database))
            _private_sqlite_file(u.database)
        engine = create_engine(u, **kwargs)
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "begin", _sqlite_begin_readonly if readonly else _sqlite_begin)
        return engine
    connect_args: dict[str, Any] = {"connect_timeout": PG_CONNECT_TIMEOUT_S}
    if readonly:
        # Belt and braces beside the console role's grants (registry.roles):
        # every transaction of this session is read-only.
        connect_args["options"] = "-c default_transaction_read_only=on"
    try:
        return create_engine(u, pool_pre_ping=True, connect_args=connect_args)
    except ImportError:
        raise UsageError(
            "a PostgreSQL registry needs psycopg 3: pip install 'auxilio[postgres]'"
        ) from None


def open_registry(
    url: str | os.PathLike[str] | None = None, readonly: bool = False, create: bool = True
) -> Registry:
    """Open (creating or migrating as needed) the registry at ``url``.

    None -> $AUXILIO_REGISTRY, else the file var/auxilio.db. A plain path is a SQLite
    file; ``sqlite:///…`` and ``postgresql://…`` URLs are accepted. ``readonly``
    (operator consoles): the registry must exist at the current schema version,
    and nothing can be written through it. ``create`` False: a SQLite registry
    must already exist (tools that read, or that write into an existing one).
    A new SQLite file gets its own directory created, never a missing tree.
    """
    u = resolve_url(url)
    shown = u.render_as_string(hide_password=True)
    engine = create_registry_engine(u, readonly, create)
    try:
        if readonly:
            with engine.connect() as conn:
                before = after = migrations.current_version(conn)
            if before > schema.LATEST_VERSION:
                raise migrations.SchemaTooNew(
                    f"registry schema version {before} is newer than this Auxilio supports "
                    f"({schema.LATEST_VERSION}); upgrade Auxilio"
                )
            if before < schema.LATEST_VERSION:
                raise UsageError(
                    f"registry {shown} is at schema version {before}, older than this "
                    f"Auxilio ({schema.LATEST_VERSION}): start the gateway once to migrate it"
                )
        else:
            before, after = migrations.migrate(engine)
    except AuxilioError:
        engine.dispose()
        raise
    except (DBAPIError, SQLAlchemyError) as exc:
        engine.dispose()
        reason = str(getattr(exc, "orig", exc)).strip().splitlines()
        raise ConnectionFailed(
            f"registry {shown} unreachable: {reason[0] if reason else type(exc).__name__}"
        ) from None
    if before != after:
        log.info("registry %s: schema %d -> %d", shown, before, after)
    return Registry(engine)


class Registry:
    """Devices and their keys, assignments, alerts, events and the audit log.

    ``engine`` and ``tables`` are public so the gateway can add its own hot-path
    queries. Every mutating method here writes its audit row in the same transaction.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._reader: Engine | None = None
        self.tables = SimpleNamespace(
            devices=schema.devices,
            assignments=schema.assignments,
            alerts=schema.alerts,
            events=schema.events,
            audit=schema.audit,
            forward_outbox=schema.forward_outbox,
            dead_letters=schema.dead_letters,
            attend_requests=schema.attend_requests,
            outcomes=schema.outcomes,
            schema_version=migrations.schema_version,
        )

    # ------------------------------------------------------------ lifecycle ---

    @property
    def reader(self) -> Engine:
        """An engine for reads that never take SQLite's write lock.

        Every transaction of `engine` begins IMMEDIATE (a writer waits its turn
        instead of failing later), so on SQLite even a SELECT through it holds
        the write lock the gateway's hot commit waits for. A read-only
        connection begins deferred and reads the latest committed WAL state.
        PostgreSQL (and an in-memory SQLite) read through `engine` itself.
        """
        if self._reader is None:
            u = self.engine.url
            file_db = u.get_backend_name() == "sqlite" and u.database not in (None, "", ":memory:")
            ro = file_db and "mode=ro" not in str(u.database)
            self._reader = create_registry_engine(u, readonly=True) if ro else self.engine
        return self._reader

    def close(self) -> None:
        if self._reader is not None and self._reader is not self.engine:
            self._reader.dispose()
        self.engine.dispose()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def schema_version(self) -> int:
        with self.engine.connect() as conn:
            return migrations.current_version(conn)

    # -------------------------------------------------------------- devices ---

    def add_device(
        self,
        device_id: int,
        kind: str,
        board: str,
        sealed_secret: bytes,
        fw_version: str | None = None,
        actor: str = "cli",
        mqtt_password_hash: str | None = None,
    ) -> None:
        """Register a new spare device with its sealed secret."""
        device_id = v.device_id(device_id)
        if kind not in schema.KINDS:
            raise UsageError(f"kind must be one of {', '.join(schema.KINDS)}")
        board = v.board(board)
        fw_version = v.fw_version(fw_version)
        actor = v.actor(actor)
        if not isinstance(sealed_secret, (bytes, bytearray)) or not sealed_secret:
            raise UsageError("sealed secret is missing")
        try:
            with self.engine.begin() as conn:
                self._insert_device(
                    conn,
                    device_id,
                    kind,
                    board,
                    fw_version,
                    sealed_secret,
                    mqtt_password_hash,
                    "spare",
                )
                self._audit(conn, actor, "add", device_id, f"kind={kind} board={board}")
        except IntegrityError:
            raise RegistryError(
                f"device {v.codec.device_str(device_id)} is already registered"
            ) from None

    def get_device(self, device_id: int | str) -> DeviceRecord | None:
        device_id = v.device_id(device_id)
        with self.engine.connect() as conn:
            row = conn.execute(
                select(schema.devices).where(schema.devices.c.id == device_id)
            ).first()
        return _record(row) if row is not None else None

    def require_device(self, device_id: int | str) -> DeviceRecord:
        rec = self.get_device(device_id)
        if rec is None:
            raise NotFoundError(f"device {v.codec.device_str(v.device_id(device_id))} not found")
        return rec

    def list_devices(self, state: str | None = None) -> list[DeviceRecord]:
        q = select(schema.devices).order_by(schema.devices.c.id)
        if state is not None:
            if state not in schema.STATES:
                raise UsageError(f"state must be one of {', '.join(schema.STATES)}")
            q = q.where(schema.devices.c.state == state)
        with self.engine.connect() as conn:
            return [_record(r) for r in conn.execute(q)]

    def set_state(
        self, device_id: int | str, state: str, actor: str, note: str | None = None
    ) -> None:
        """mark-lost / revoke / retire, with audit. Invalid transitions raise."""
        device_id = v.device_id(device_id)
        actor = v.actor(actor)
        if state not in schema.STATES:
            raise UsageError(f"state must be one of {', '.join(schema.STATES)}")
        if state in ("spare", "assigned"):
            raise RegistryError(f"use assign/unassign to make a device {state}")
        now = utcnow()
        with self.engine.begin() as conn:
            rec = self._lock_device(conn, device_id)
            if state not in TRANSITIONS[rec.state]:
                raise RegistryError(f"device {rec.label} is {rec.state}; it cannot become {state}")
            conn.execute(
                schema.devices.update()
                .where(schema.devices.c.id == device_id)
                # Out of service (lost too: the old key may be in the finder's hands):
                # a replaced key's grace ends with it.
                .values(state=state, updated_at=now, **NO_PREVIOUS_KEY)
            )
            if state in _ENDS_ASSIGNMENT:
                self._end_assignment(conn, device_id, now)
            detail = f"{rec.state}->{state}" + (f" note={note}" if note else "")
            self._audit(conn, actor, state if state != "lost" else "mark-lost", device_id, detail)

    def rekey(
        self,
        device_id: int | str,
        sealed_secret: bytes,
        actor: str,
        mqtt_password_hash: str | None = None,
        grace_s: float = 0,
    ) -> int:
        """Install a new sealed secret (re-provisioning); returns the new key epoch.

        The replay state restarts because frames under the new key are a new
        sequence. A lost or revoked device comes back as spare; retired is final.
        ``grace_s`` > 0 keeps the replaced key (sealed, with its replay state) valid
        for that long, so frames the device sends before it has the new key still
        count (SPEC §12.1); never for a lost or revoked device, whose old key may be
        in other hands. A key replaced earlier is dropped either way.
        """
        device_id = v.device_id(device_id)
        actor = v.actor(actor)
        grace_s = v.rekey_grace(grace_s)
        now = utcnow()
        with self.engine.begin() as conn:
            rec = self._lock_device(conn, device_id)
            if rec.state == "retired":
                raise RegistryError(f"device {rec.label} is retired")
            state = "spare" if rec.state in ("lost", "revoked") else rec.state
            epoch = rec.key_epoch + 1
            previous = dict(NO_PREVIOUS_KEY)
            grace = grace_s if rec.state not in ("lost", "revoked") else 0
            if grace > 0:
                previous = {
                    "prev_key_epoch": rec.key_epoch,
                    "prev_sealed_secret": rec.sealed_secret,
                    "prev_high_water": rec.high_water,
                    "prev_window": rec.window,
                    "prev_valid_until": now + dt.timedelta(seconds=grace),
                }
            conn.execute(
                schema.devices.update()
                .where(schema.devices.c.id == device_id)
                .values(
                    sealed_secret=bytes(sealed_secret),
                    mqtt_password_hash=mqtt_password_hash,
                    key_epoch=epoch,
                    high_water=None,
                    window=0,
                    state=state,
                    updated_at=now,
                    **previous,
                )
            )
            if state == "spare":
                self._end_assignment(conn, device_id, now)
            detail = f"epoch={epoch} state={state}" + (f" grace={grace:g}s" if grace else "")
            self._audit(conn, actor, "rekey", device_id, detail)
        return epoch

    # --------------------------------------------------------- provisioning ---
    # Issue 11 §7: a device is registered in state "provisioning" (no broker login,
    # frames rejected) with the secret about to be written to it; only once the
    # device holds that secret does commit_provisioning put it in service. So no
    # device in service ever has a secret the device itself does not hold.

    def begin_provisioning(
        self,
        device_id: int | str,
        kind: str,
        board: str,
        sealed_secret: bytes,
        *,
        actor: str,
        mqtt_password_hash: str | None,
        mac: str | None = None,
        station: str | None = None,
        fw_version: str | None = None,
    ) -> int:
        """Register a new device, or re-key a known one, in state provisioning; its key epoch.

        A known device's key epoch goes up and its replay state restarts (a new
        key is a new sequence); its assignment ends (re-provisioning is a new
        hand-over). A retired device stays retired.
        """
        device_id = v.device_id(device_id)
        if kind not in schema.KINDS:
            raise UsageError(f"kind must be one of {', '.join(schema.KINDS)}")
        board = v.board(board)
        fw_version = v.fw_version(fw_version)
        actor = v.actor(actor)
        now = utcnow()
        d = schema.devices
        with self.engine.begin() as conn:
            row = conn.execute(select(d).where(d.c.id == device_id).with_for_update()).first()
            if row is None:
                epoch = 1
                self._insert_device(
                    conn,
                    device_id,
                    kind,
                    board,
                    fw_version,
                    sealed_secret,
                    mqtt_password_hash,
                    "provisioning",
                )
            else:
                rec = _record(row)
                if rec.kind != kind:
                    raise RegistryError(f"device {rec.label} is a {rec.kind}, not a {kind}")
                if rec.state == "retired":
                    raise RegistryError(f"device {rec.label} is retired")
                epoch = rec.key_epoch + 1
                conn.execute(
                    d.update()
                    .where(d.c.id == device_id)
                    .values(
                        board=board,
                        sealed_secret=bytes(sealed_secret),
                        mqtt_password_hash=mqtt_password_hash,
                        key_epoch=epoch,
                        high_water=None,
                        window=0,
                        state="provisioning",
                        updated_at=now,
                        # A re-provisioned device is a new hand-over: no grace for the old key.
                        **NO_PREVIOUS_KEY,
                    )
                )
                self._end_assignment(conn, device_id, now)
            detail = f"kind={kind} board={board} epoch={epoch}"
            if station:
                detail += f" station={station[:64]}"
            if mac:
                detail += f" mac={mac}"  # last: provisioning_for_mac matches the end
            self._audit(conn, actor, "provision-begin", device_id, detail)
        return epoch

    def commit_provisioning(self, device_id: int | str, key_id: str, actor: str) -> None:
        """The device holds the secret sealed in its row (its key_id says so): spare, in service."""
        from auxilio.keys import sealed_id

        device_id = v.device_id(device_id)
        actor = v.actor(actor)
        with self.engine.begin() as conn:
            rec = self._lock_device(conn, device_id)
            if rec.state != "provisioning":
                raise RegistryError(f"device {rec.label} is {rec.state}, not being provisioned")
            if sealed_id(rec.sealed_secret) != key_id:
                raise RegistryError(
                    f"device {rec.label} holds another secret than its registry row "
                    "(an interrupted provisioning): provision it again"
                )
            conn.execute(
                schema.devices.update()
                .where(schema.devices.c.id == device_id)
                .values(state="spare", updated_at=utcnow())
            )
            self._audit(conn, actor, "provision-commit", device_id, f"epoch={rec.key_epoch}")

    def abandon_provisioning(
        self,
        device_id: int | str,
        actor: str,
        reason: str = "",
        states: tuple[str, ...] = ("provisioning",),
    ) -> bool:
        """Roll back a provisioning that did not finish; True when the row is gone.

        A device that never was in service (first epoch, no stored frame, never
        assigned) is removed; any other stays as it is (a provisioning one has
        lost its old secret) until it is provisioned again. ``states``: also
        "spare" for a pass that committed but never heard the device boot.
        """
        device_id = v.device_id(device_id)
        actor = v.actor(actor)
        with self.engine.begin() as conn:
            rec = self._lock_device(conn, device_id)
            if rec.state not in states:
                raise RegistryError(f"device {rec.label} is {rec.state}, not being provisioned")
            used = any(
                conn.execute(select(t.c.id).where(t.c.device_id == device_id).limit(1)).first()
                for t in (schema.alerts, schema.assignments, schema.events)
            )
            removed = rec.key_epoch == 1 and not used
            if removed:
                conn.execute(schema.devices.delete().where(schema.devices.c.id == device_id))
            detail = ("removed" if removed else "kept") + (f" {reason}" if reason else "")
            self._audit(conn, actor, "provision-abandon", device_id, detail[:200])
        return removed

    def provisioning_for_mac(self, mac: str) -> int | None:
        """The device still in state provisioning whose last provision-begin named this chip MAC."""
        t, d = schema.audit, schema.devices
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(t.c.target)
                .where(t.c.action == "provision-begin", t.c.detail.like(f"% mac={mac}"))
                .order_by(t.c.id.desc())
                .limit(10)
            ).all()
            for (target,) in rows:
                did = v.device_id(target)
                state = conn.execute(select(d.c.state).where(d.c.id == did)).scalar()
                if state == "provisioning":
                    return did
        return None

    def drop_expired_previous_keys(self, now: float | dt.datetime | None = None) -> int:
        """Erase the keys rekeys replaced whose grace has ended (SPEC §12.1); returns how many.

        Never used past ``prev_valid_until`` anyway; the gateway runs this with its
        retention purge so a sealed old secret is not kept for nothing.
        """
        if now is None:
            when = utcnow()
        elif isinstance(now, dt.datetime):
            when = now
        else:
            when = dt.datetime.fromtimestamp(now, dt.timezone.utc)
        d = schema.devices
        with self.engine.begin() as conn:
            return conn.execute(
                d.update()
                .where(d.c.prev_valid_until.is_not(None), d.c.prev_valid_until <= when)
                .values(**NO_PREVIOUS_KEY)
            ).rowcount

    def counter_floor(self, device_id: int | str) -> int:
        """The lowest counter a known secret may restart at (SPEC §12.1 counter_floor).

        1 when nothing was accepted under the device's current key epoch; else the
        highest counter the C4 holds for it (replay high-water mark or a stored
        frame) plus COUNTER_FLOOR_MARGIN.
        """
        rec = self.require_device(device_id)
        a = schema.alerts
        with self.engine.connect() as conn:
            stored = conn.execute(
                select(func.max(a.c.counter)).where(
                    a.c.device_id == rec.id, a.c.key_epoch == rec.key_epoch
                )
            ).scalar()
        highest = max(rec.high_water or 0, stored or 0)
        if highest == 0:
            return FIRST_COUNTER
        return min(highest + COUNTER_FLOOR_MARGIN, MAX_COUNTER)

    def set_mqtt_password_hash(self, device_id: int | str, password_hash: str, actor: str) -> None:
        device_id = v.device_id(device_id)
        with self.engine.begin() as conn:
            self._lock_device(conn, device_id)
            conn.execute(
                schema.devices.update()
                .where(schema.devices.c.id == device_id)
                .values(mqtt_password_hash=password_hash, updated_at=utcnow())
            )
            self._audit(conn, v.actor(actor), "mqtt-password", device_id, "")

    def set_msisdn(self, device_id: int | str, msisdn: str | None, actor: str) -> None:
        """Record (or clear) the device's SIM number; the C4 takes SMS only from it."""
        from auxilio.phone import e164

        device_id = v.device_id(device_id)
        number = None
        if msisdn is not None:
            number = e164(msisdn)
            if number is None:
                raise UsageError(f"{msisdn!r} is not a phone number (E.164, like +525512340000)")
        with self.engine.begin() as conn:
            self._lock_device(conn, device_id)
            try:
                conn.execute(
                    schema.devices.update()
                    .where(schema.devices.c.id == device_id)
                    .values(msisdn=number, updated_at=utcnow())
                )
            except IntegrityError:
                raise RegistryError(f"{number} is already another device's SIM") from None
            self._audit(conn, v.actor(actor), "set-sim", device_id, number or "cleared")

    def set_heartbeat(self, device_id: int | str, heartbeat_s: int | None, actor: str) -> int:
        """Record a new heartbeat interval to push by CONFIG; returns the new config_seq."""
        if heartbeat_s is not None and not 10 <= int(heartbeat_s) <= 86400:
            raise UsageError("heartbeat must be between 10 s and 86400 s")
        return self._bump_config(
            device_id, actor, f"heartbeat_s={heartbeat_s}", heartbeat_s=heartbeat_s
        )

    def next_config_seq(
        self,
        device_id: int | str,
        actor: str,
        detail: str,
        record: Callable[[int], dict[str, Any]] | None = None,
    ) -> int:
        """Take the next CONFIG sequence number (SPEC §12.6) for a one-shot CONFIG, audited.

        Durable before the CONFIG is signed, so a sequence is never sent twice
        (a device ignores a CONFIG that is not newer than the last it applied).
        record(seq): an `events` row written in the same transaction (the gateway's
        record of why it sends this CONFIG).
        """
        return self._bump_config(device_id, actor, detail, record)

    def _bump_config(
        self,
        device_id: int | str,
        actor: str,
        detail: str,
        record: Callable[[int], dict[str, Any]] | None = None,
        **values: Any,
    ) -> int:
        """config_seq + 1 (and the settings in values) in one audited transaction."""
        device_id = v.device_id(device_id)
        with self.engine.begin() as conn:
            rec = self._lock_device(conn, device_id)
            seq = rec.config_seq + 1
            conn.execute(
                schema.devices.update()
                .where(schema.devices.c.id == device_id)
                .values(config_seq=seq, updated_at=utcnow(), **values)
            )
            self._audit(conn, v.actor(actor), "config", device_id, f"{detail} seq={seq}")
            if record is not None:
                conn.execute(schema.events.insert().values(**record(seq)))
        return seq

    def device_secret(self, device_id: int | str, private_key: Any) -> bytes:
        """Unseal a device's secret with the gateway private key (gateway only)."""
        from auxilio.keys import unseal

        rec = self.require_device(device_id)
        return unseal(rec.sealed_secret, private_key, rec.id)

    # ---------------------------------------------------------- assignments ---

    def assign_case(
        self,
        device_id: int | str,
        case_ref: str,
        valid_from: dt.datetime | str | None = None,
        valid_to: dt.datetime | str | None = None,
        actor: str = "cli",
        reassign: bool = False,
    ) -> None:
        """Link a bracelet to a pseudonymous case reference (never a name).

        A bracelet already linked to a case keeps it unless ``reassign``: a
        silently replaced case would send the next alert to the wrong file.
        """
        ref = v.case_ref(case_ref)
        self._assign(
            device_id,
            "bracelet",
            {"kind": "case", "case_ref": ref},
            valid_from,
            valid_to,
            actor,
            f"case={ref}",
            reassign,
        )

    def assign_site(
        self,
        device_id: int | str,
        site: str,
        lat: float | str,
        lon: float | str,
        sector: str,
        valid_from: dt.datetime | str | None = None,
        valid_to: dt.datetime | str | None = None,
        actor: str = "cli",
        reassign: bool = False,
    ) -> None:
        """Place a street button at a public site with coordinates and a C4 sector.

        A button already placed keeps its site unless ``reassign`` (moved).
        """
        values = {
            "kind": "site",
            "site": v.site(site),
            "lat": v.coordinate(lat, "latitude", 90),
            "lon": v.coordinate(lon, "longitude", 180),
            "sector": v.sector(sector),
        }
        self._assign(
            device_id,
            "button",
            values,
            valid_from,
            valid_to,
            actor,
            f"site={values['site']} sector={values['sector']}",
            reassign,
        )

    def _assign(
        self,
        device_id: int | str,
        kind: str,
        values: dict[str, Any],
        valid_from: dt.datetime | str | None,
        valid_to: dt.datetime | str | None,
        actor: str,
        detail: str,
        reassign: bool = False,
    ) -> None:
        device_id = v.device_id(device_id)
        actor = v.actor(actor)
        now = utcnow()
        start = v.timestamp(valid_from, "valid_from") or now
        end = v.timestamp(valid_to, "valid_to")
        if end is not None and end <= start:
            raise UsageError("valid_to must be after valid_from")
        with self.engine.begin() as conn:
            rec = self._lock_device(conn, device_id)
            if rec.kind != kind:
                what = "a case reference" if kind == "bracelet" else "a site"
                raise RegistryError(
                    f"device {rec.label} is a {rec.kind}; only a {kind} takes {what}"
                )
            if rec.state not in ("spare", "assigned"):
                raise RegistryError(f"device {rec.label} is {rec.state}; it cannot be assigned")
            if not reassign:
                held = self._open_assignment(conn, device_id, now)
                if held is not None:
                    what = (
                        f"case {held['case_ref']}"
                        if held["kind"] == "case"
                        else f"site {held['site']!r}"
                    )
                    raise RegistryError(
                        f"device {rec.label} is already assigned to {what}; "
                        "pass --reassign to replace it (or unassign it first)"
                    )
            self._end_assignment(conn, device_id, now)
            conn.execute(
                schema.assignments.insert().values(
                    device_id=device_id, valid_from=start, valid_to=end, created_at=now, **values
                )
            )
            conn.execute(
                schema.devices.update()
                .where(schema.devices.c.id == device_id)
                .values(state="assigned", updated_at=now)
            )
            self._audit(conn, actor, "assign", device_id, detail)

    def unassign(self, device_id: int | str, actor: str = "cli") -> None:
        """End the current assignment; an assigned device goes back to spare."""
        device_id = v.device_id(device_id)
        actor = v.actor(actor)
        now = utcnow()
        with self.engine.begin() as conn:
            rec = self._lock_device(conn, device_id)
            if not self._end_assignment(conn, device_id, now):
                raise RegistryError(f"device {rec.label} has no current assignment")
            if rec.state == "assigned":
                conn.execute(
                    schema.devices.update()
                    .where(schema.devices.c.id == device_id)
                    .values(state="spare", updated_at=now)
                )
            self._audit(conn, actor, "unassign", device_id, "")

    def current_assignment(self, device_id: int | str) -> dict[str, Any] | None:
        """The open assignment row as a dict (plus ``active``: inside its validity now)."""
        device_id = v.device_id(device_id)
        with self.engine.connect() as conn:
            out = self._open_assignment_row(conn, device_id)
        if out is None:
            return None
        now = utcnow()
        out["active"] = out["valid_from"] <= now and (
            out["valid_to"] is None or now < out["valid_to"]
        )
        return out

    def current_assignments(self) -> dict[int, dict[str, Any]]:
        """Every device's open assignment in one query (for lists and exports)."""
        a = schema.assignments
        now = utcnow()
        out: dict[int, dict[str, Any]] = {}
        with self.engine.connect() as conn:
            for row in conn.execute(select(a).where(a.c.ended_at.is_(None)).order_by(a.c.id)):
                m = dict(row._mapping)
                m["active"] = m["valid_from"] <= now and (
                    m["valid_to"] is None or now < m["valid_to"]
                )
                out[m["device_id"]] = m
        return out

    # ---------------------------------------------------------------- audit ---

    def audit(self, actor: str, action: str, target: str, detail: str = "") -> None:
        """Append one audit row (there is no way to change or remove one)."""
        with self.engine.begin() as conn:
            self._audit(conn, v.actor(actor), action, target, detail)

    def audit_log(self, limit: int = 100, target: str | None = None) -> list[dict[str, Any]]:
        """Newest first."""
        t = schema.audit
        q = select(t).order_by(t.c.id.desc()).limit(limit)
        if target is not None:
            q = q.where(t.c.target == target)
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(q)]

    # ------------------------------------------------------------- internal ---

    @staticmethod
    def _audit(conn: Connection, actor: str, action: str, target: int | str, detail: str) -> None:
        if isinstance(target, int):
            target = v.codec.device_str(target)
        conn.execute(
            schema.audit.insert().values(
                at=utcnow(), actor=actor, action=action[:32], target=str(target)[:64], detail=detail
            )
        )

    @staticmethod
    def _insert_device(
        conn: Connection,
        device_id: int,
        kind: str,
        board: str,
        fw_version: str | None,
        sealed_secret: bytes,
        mqtt_password_hash: str | None,
        state: str,
    ) -> None:
        """A new device row at key epoch 1 (add_device, begin_provisioning)."""
        now = utcnow()
        conn.execute(
            schema.devices.insert().values(
                id=device_id,
                kind=kind,
                board=board,
                fw_version=fw_version,
                state=state,
                key_epoch=1,
                sealed_secret=bytes(sealed_secret),
                mqtt_password_hash=mqtt_password_hash,
                config_seq=0,
                window=0,
                created_at=now,
                updated_at=now,
            )
        )

    @staticmethod
    def _lock_device(conn: Connection, device_id: int) -> DeviceRecord:
        # FOR UPDATE on PostgreSQL; SQLite already holds the write lock (BEGIN IMMEDIATE).
        row = conn.execute(
            select(schema.devices).where(schema.devices.c.id == device_id).with_for_update()
        ).first()
        if row is None:
            raise NotFoundError(f"device {v.codec.device_str(device_id)} not found")
        return _record(row)

    @staticmethod
    def _open_assignment_row(conn: Connection, device_id: int) -> dict[str, Any] | None:
        """The device's open (not ended) assignment row, whatever its validity."""
        a = schema.assignments
        row = conn.execute(
            select(a)
            .where(a.c.device_id == device_id, a.c.ended_at.is_(None))
            .order_by(a.c.id.desc())
            .limit(1)
        ).first()
        return None if row is None else dict(row._mapping)

    @classmethod
    def _open_assignment(
        cls, conn: Connection, device_id: int, now: dt.datetime
    ) -> dict[str, Any] | None:
        """The device's open assignment still in force (not past its valid_to), if any."""
        m = cls._open_assignment_row(conn, device_id)
        if m is None:
            return None
        end = m["valid_to"]
        if end is not None and end.tzinfo is None:
            end = end.replace(tzinfo=dt.timezone.utc)
        return None if end is not None and end <= now else m

    @staticmethod
    def _end_assignment(conn: Connection, device_id: int, now: dt.datetime) -> bool:
        a = schema.assignments
        res = conn.execute(
            a.update()
            .where(a.c.device_id == device_id, a.c.ended_at.is_(None))
            .values(ended_at=now)
        )
        return bool(res.rowcount)


def _record(row: Any) -> DeviceRecord:
    m = row._mapping
    return DeviceRecord(
        id=m["id"],
        kind=m["kind"],
        board=m["board"],
        fw_version=m["fw_version"],
        state=m["state"],
        key_epoch=m["key_epoch"],
        sealed_secret=bytes(m["sealed_secret"]),
        heartbeat_s=m["heartbeat_s"],
        config_seq=m["config_seq"],
        high_water=m["high_water"],
        window=m["window"],
        last_seen=m["last_seen"],
        created_at=m["created_at"],
        updated_at=m["updated_at"],
        mqtt_password_hash=m.get("mqtt_password_hash"),
        msisdn=m.get("msisdn"),
        previous_key=_previous_key(m),
        health=m.get("health"),
    )


def _previous_key(m: Any) -> PreviousKey | None:
    if m.get("prev_sealed_secret") is None or m.get("prev_valid_until") is None:
        return None
    return PreviousKey(
        epoch=m["prev_key_epoch"],
        sealed_secret=bytes(m["prev_sealed_secret"]),
        high_water=m["prev_high_water"],
        window=int(m["prev_window"] or 0),
        valid_until=m["prev_valid_until"],
    )


def sqlite_path(registry: Registry) -> str | None:
    """The SQLite file behind a registry, or None (for messages and tests)."""
    u = registry.engine.url
    return u.database if u.get_backend_name() == "sqlite" else None
