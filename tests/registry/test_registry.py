"""Registry behaviour on SQLite and PostgreSQL through the same tests (one code path)."""

from __future__ import annotations

import datetime as dt
import itertools
import socket

import pytest
from auxilio import keys
from auxilio.errors import ConnectionFailed, NotFoundError, UsageError
from auxilio.protocol import codec
from auxilio.registry import (
    LATEST_VERSION,
    STATES,
    TRANSITIONS,
    Registry,
    RegistryError,
    open_registry,
)
from auxilio.registry.store import utcnow
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError

PRIV = X25519PrivateKey.generate()
_ids = itertools.count(1000)


def _add(reg: Registry, kind: str = "bracelet") -> int:
    did = next(_ids)
    reg.add_device(
        did,
        kind,
        "esp32-test",
        keys.seal(keys.new_device_secret(), PRIV.public_key(), did),
        "1.0.0",
        actor="tester",
    )
    return did


def test_open_creates_latest_schema_and_reopens(registry_url: str) -> None:
    with open_registry(registry_url) as reg:
        assert reg.schema_version == LATEST_VERSION
        did = _add(reg)
    with open_registry(registry_url) as reg:
        assert reg.schema_version == LATEST_VERSION
        assert reg.get_device(did) is not None


def test_add_get_list(registry: Registry) -> None:
    secret = keys.new_device_secret()
    did = 0x01020304
    registry.add_device(
        did, "button", "esp32-button", keys.seal(secret, PRIV.public_key(), did), actor="t"
    )
    rec = registry.get_device(did)
    assert rec is not None
    assert (rec.kind, rec.board, rec.state, rec.key_epoch, rec.fw_version) == (
        "button",
        "esp32-button",
        "spare",
        1,
        None,
    )
    assert rec.high_water is None and rec.window == 0 and rec.config_seq == 0
    assert rec.created_at.tzinfo is not None
    assert registry.device_secret(did, PRIV) == secret
    assert [d.id for d in registry.list_devices()] == [did]
    assert registry.list_devices("lost") == []
    assert registry.get_device(12) is None
    # by printed form too
    assert registry.get_device(rec.label).id == did


def test_duplicate_and_bad_input(registry: Registry) -> None:
    did = _add(registry)
    with pytest.raises(RegistryError, match="already registered"):
        registry.add_device(did, "bracelet", "b", b"x", actor="t")
    with pytest.raises(UsageError):
        registry.add_device(next(_ids), "watch", "b", b"x", actor="t")
    with pytest.raises(UsageError):
        registry.add_device(2**32, "bracelet", "b", b"x", actor="t")
    with pytest.raises(UsageError):
        registry.add_device(next(_ids), "bracelet", "Bad Board!", b"x", actor="t")
    with pytest.raises(UsageError):
        registry.list_devices("gone")
    assert len(registry.list_devices()) == 1


@pytest.mark.parametrize("start,target", list(itertools.product(STATES, STATES)))
def test_every_transition(registry: Registry, start: str, target: str) -> None:
    did = _add(registry)
    # Reach the start state through the API.
    if start == "provisioning":  # issue 11 §7: a re-key for provisioning
        sealed = keys.seal(keys.new_device_secret(), PRIV.public_key(), did)
        registry.begin_provisioning(
            did, "bracelet", "esp32-test", sealed, actor="t", mqtt_password_hash=None
        )
    if start in ("assigned", "lost"):
        registry.assign_case(did, "PR-2026-00123", actor="t")
    if start in ("lost", "revoked", "retired"):
        registry.set_state(did, start, "t")
    assert registry.get_device(did).state == start
    if target in TRANSITIONS[start]:
        registry.set_state(did, target, "t", note="why")
        assert registry.get_device(did).state == target
    else:
        with pytest.raises(RegistryError):
            registry.set_state(did, target, "t")
        assert registry.get_device(did).state == start


def test_assign_case_and_site(registry: Registry) -> None:
    b, k = _add(registry, "bracelet"), _add(registry, "button")
    start = utcnow()
    registry.assign_case(
        b, "pr-2026-00123", valid_from=start, valid_to=start + dt.timedelta(days=90), actor="t"
    )
    a = registry.current_assignment(b)
    assert a["case_ref"] == "PR-2026-00123" and a["kind"] == "case" and a["active"]
    assert registry.get_device(b).state == "assigned"
    with pytest.raises(RegistryError):
        registry.assign_case(k, "PR-2026-00124", actor="t")  # a button takes a site
    with pytest.raises(RegistryError):
        registry.assign_site(b, "Plaza", 19.4, -99.1, "C4-N", actor="t")
    registry.assign_site(k, "Av. Juárez y Balderas", "19.4342", "-99.1459", "Centro-3", actor="t")
    s = registry.current_assignment(k)
    assert (s["site"], s["sector"]) == ("Av. Juárez y Balderas", "Centro-3")
    assert s["lat"] == pytest.approx(19.4342) and s["lon"] == pytest.approx(-99.1459)
    # Reassigning needs saying so; it ends the previous row (history kept).
    with pytest.raises(RegistryError, match="--reassign"):
        registry.assign_case(b, "PR-2026-00999", actor="t")
    assert registry.current_assignment(b)["case_ref"] == "PR-2026-00123"
    registry.assign_case(b, "PR-2026-00999", actor="t", reassign=True)
    assert registry.current_assignment(b)["case_ref"] == "PR-2026-00999"
    with registry.engine.connect() as conn:
        rows = conn.execute(
            select(registry.tables.assignments).where(registry.tables.assignments.c.device_id == b)
        ).all()
    assert len(rows) == 2 and sum(r.ended_at is None for r in rows) == 1
    both = registry.current_assignments()
    assert both[b] == registry.current_assignment(b) and both[k] == registry.current_assignment(k)
    registry.unassign(b, actor="t")
    assert registry.current_assignment(b) is None
    assert set(registry.current_assignments()) == {k}
    assert registry.get_device(b).state == "spare"
    with pytest.raises(RegistryError):
        registry.unassign(b, actor="t")


@pytest.mark.parametrize(
    "ref",
    [
        "Maria Lopez",
        "María",
        "PR-2026-0012X",
        "PR 2026 00123",
        "",
        "PR-26-00123",
        "pr-2026-00123; drop",
    ],
)
def test_case_ref_must_be_pseudonymous(registry: Registry, ref: str) -> None:
    did = _add(registry)
    with pytest.raises(UsageError):
        registry.assign_case(did, ref, actor="t")
    assert registry.current_assignment(did) is None


@pytest.mark.parametrize(
    "lat,lon,sector",
    [(91, 0, "S1"), (0, 181, "S1"), ("x", 0, "S1"), (0, 0, ""), (float("nan"), 0, "S")],
)
def test_site_validation(registry: Registry, lat, lon, sector) -> None:
    did = _add(registry, "button")
    with pytest.raises(UsageError):
        registry.assign_site(did, "Plaza", lat, lon, sector, actor="t")


def test_validity_period_checks(registry: Registry) -> None:
    did = _add(registry)
    with pytest.raises(UsageError):
        registry.assign_case(
            did, "PR-2026-00123", valid_from="2026-05-01", valid_to="2026-04-01", actor="t"
        )
    registry.assign_case(
        did, "PR-2026-00123", valid_from="2020-01-01", valid_to="2020-02-01", actor="t"
    )
    assert registry.current_assignment(did)["active"] is False


def test_lost_keeps_assignment_revoke_ends_it(registry: Registry) -> None:
    did = _add(registry)
    registry.assign_case(did, "PR-2026-00123", actor="t")
    registry.set_state(did, "lost", "t")
    assert registry.current_assignment(did)["case_ref"] == "PR-2026-00123"
    with pytest.raises(RegistryError):
        registry.assign_case(did, "PR-2026-00124", actor="t")
    registry.set_state(did, "revoked", "t")
    assert registry.current_assignment(did) is None


def test_rekey_bumps_epoch_and_resets_replay(registry: Registry) -> None:
    did = _add(registry)
    with registry.engine.begin() as conn:
        conn.execute(
            registry.tables.devices.update()
            .where(registry.tables.devices.c.id == did)
            .values(high_water=50, window=(1 << 64) - 1)
        )
    assert registry.get_device(did).window == (1 << 64) - 1  # full u64 survives both backends
    registry.set_state(did, "revoked", "t")
    new = keys.new_device_secret()
    assert registry.rekey(did, keys.seal(new, PRIV.public_key(), did), "t") == 2
    rec = registry.get_device(did)
    assert (rec.state, rec.key_epoch, rec.high_water, rec.window) == ("spare", 2, None, 0)
    assert registry.device_secret(did, PRIV) == new
    registry.set_state(did, "retired", "t")
    with pytest.raises(RegistryError):
        registry.rekey(did, b"x", "t")


def test_heartbeat_bumps_config_seq(registry: Registry) -> None:
    did = _add(registry)
    assert registry.set_heartbeat(did, 300, "t") == 1
    assert registry.set_heartbeat(did, None, "t") == 2
    rec = registry.get_device(did)
    assert (rec.heartbeat_s, rec.config_seq) == (None, 2)
    with pytest.raises(UsageError):
        registry.set_heartbeat(did, 1, "t")


def test_unknown_device_operations(registry: Registry) -> None:
    with pytest.raises(NotFoundError):
        registry.set_state(4242, "lost", "t")
    with pytest.raises(NotFoundError):
        registry.assign_case(4242, "PR-2026-00123", actor="t")
    with pytest.raises(UsageError):
        registry.get_device("0938-NKRX")  # bad check character


def test_audit_is_append_only(registry: Registry) -> None:
    did = _add(registry)
    registry.assign_case(did, "PR-2026-00123", actor="alice")
    registry.set_state(did, "lost", "bob", note="reported by phone")
    registry.audit("carol", "export", "devices", "csv")
    log = registry.audit_log()
    assert [(e["actor"], e["action"]) for e in log[:4]] == [
        ("carol", "export"),
        ("bob", "mark-lost"),
        ("alice", "assign"),
        ("tester", "add"),
    ]
    assert "reported by phone" in log[1]["detail"]
    assert registry.audit_log(target=registry.get_device(did).label)[0]["action"] == "mark-lost"
    # No API path to change it...
    assert not [
        n
        for n in dir(registry)
        if "audit" in n and any(w in n for w in ("delete", "update", "clear"))
    ]
    # ...and the database refuses it too.
    t = registry.tables.audit
    for stmt in (t.update().values(actor="mallory"), t.delete()):
        with pytest.raises(DBAPIError):
            with registry.engine.begin() as conn:
                conn.execute(stmt)
    assert len(registry.audit_log()) == len(log)
    assert {e["actor"] for e in registry.audit_log()} == {"tester", "alice", "bob", "carol"}


def test_alerts_unique_per_device_counter(registry: Registry) -> None:
    did = _add(registry)
    a = registry.tables.alerts
    row = dict(
        device_id=did,
        counter=5,
        type="ALERT",
        flags=4,
        payload={"lat": 1.5},
        raw=b"\x01" * 40,
        received_at=utcnow(),
    )
    with registry.engine.begin() as conn:
        conn.execute(a.insert().values(**row))
    with pytest.raises(DBAPIError):
        with registry.engine.begin() as conn:
            conn.execute(a.insert().values(**row))
    with registry.engine.connect() as conn:
        got = conn.execute(select(a)).one()
    assert got.payload == {"lat": 1.5} and got.test is False and got.received_at.tzinfo is not None


def test_bad_urls() -> None:
    with pytest.raises(UsageError):
        open_registry("mysql://u@h/db")
    with pytest.raises(UsageError):
        open_registry("postgresql://[::bad")


def test_unreachable_postgres_is_one_line() -> None:
    pytest.importorskip("psycopg")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ConnectionFailed) as exc:
        open_registry(f"postgresql://u:hunter2@127.0.0.1:{port}/x")
    msg = str(exc.value)
    assert "\n" not in msg and "hunter2" not in msg and "unreachable" in msg


def test_sqlite_is_wal_full_sync(tmp_path) -> None:
    with open_registry(f"sqlite:///{tmp_path}/a/b.db") as reg, reg.engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(text("PRAGMA synchronous")).scalar() == 2  # FULL
    assert (tmp_path / "a" / "b.db").exists()


def test_default_location_from_env(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("AUXILIO_REGISTRY", str(tmp_path / "env.db"))
    with open_registry() as reg:
        _add(reg)
    assert (tmp_path / "env.db").exists()
    monkeypatch.delenv("AUXILIO_REGISTRY")
    monkeypatch.chdir(tmp_path)
    open_registry().close()
    assert (tmp_path / "var" / "auxilio.db").exists()


@pytest.mark.parametrize(
    "given,driver,database",
    [
        ("var/x.db", "sqlite+pysqlite", "var/x.db"),
        ("sqlite:///var/x.db", "sqlite+pysqlite", "var/x.db"),
        ("postgresql://u@h/db", "postgresql+psycopg", "db"),
        ("postgres://u@h/db", "postgresql+psycopg", "db"),
        ("postgresql+psycopg://u@h/db", "postgresql+psycopg", "db"),
    ],
)
def test_resolve_url(given: str, driver: str, database: str) -> None:
    from auxilio.registry import resolve_url

    u = resolve_url(given)
    assert (u.drivername, u.database) == (driver, database)


def test_counter_floor_from_high_water_and_stored_frames(registry_url: str) -> None:
    """SPEC §12.1: a known secret restarts above every counter the C4 holds under its key."""
    from auxilio.registry.store import COUNTER_FLOOR_MARGIN

    with open_registry(registry_url) as registry:
        did = _add(registry)
        assert registry.counter_floor(did) == 1  # nothing accepted yet under epoch 1
        a, d = registry.tables.alerts, registry.tables.devices

        def store(counter: int, epoch: int) -> None:
            with registry.engine.begin() as conn:
                conn.execute(
                    a.insert().values(
                        device_id=did,
                        key_epoch=epoch,
                        counter=counter,
                        type="ALERT",
                        received_at=utcnow(),
                    )
                )

        def high_water(h: int | None) -> None:
            with registry.engine.begin() as conn:
                conn.execute(d.update().where(d.c.id == did).values(high_water=h))

        store(70, 1)
        assert registry.counter_floor(did) == 70 + COUNTER_FLOOR_MARGIN
        high_water(90)  # a heartbeat (not stored as a row) moved the mark further
        assert registry.counter_floor(did) == 90 + COUNTER_FLOOR_MARGIN
        high_water(None)  # a mark lost (or never written): the stored frames still count
        assert registry.counter_floor(did) == 70 + COUNTER_FLOOR_MARGIN
        registry.rekey(did, keys.seal(keys.new_device_secret(), PRIV.public_key(), did), "t")
        assert registry.counter_floor(did) == 1  # a new key is a new keystream: from 1
        store(5000, 1)  # rows of the old epoch never raise the new key's floor
        store(12, 2)
        assert registry.counter_floor(did) == 12 + COUNTER_FLOOR_MARGIN
        high_water(0xFFFFFFFF - 10)
        assert registry.counter_floor(did) == 0xFFFFFFFF  # still a valid u32 counter_floor
        with pytest.raises(NotFoundError):
            registry.counter_floor(0x7777)
    # Read-only consoles and host tools can ask too (open_registry(readonly=True)).
    with open_registry(registry_url, readonly=True) as ro:
        assert ro.counter_floor(did) == 0xFFFFFFFF


def test_provisioning_commits_only_the_registered_secret(registry: Registry) -> None:
    """Issue 11 §7: a row is in service only once the device holds its sealed secret."""
    did = next(_ids)
    sealed = keys.seal(keys.new_device_secret(), PRIV.public_key(), did)
    assert (
        registry.begin_provisioning(
            did, "bracelet", "esp32-test", sealed, actor="t", mqtt_password_hash=None, mac="02:aa"
        )
        == 1
    )
    assert registry.get_device(did).state == "provisioning"
    assert registry.provisioning_for_mac("02:aa") == did
    other = keys.seal(keys.new_device_secret(), PRIV.public_key(), did)
    with pytest.raises(RegistryError, match="another secret"):
        registry.commit_provisioning(did, keys.sealed_id(other), "t")
    registry.commit_provisioning(did, keys.sealed_id(sealed), "t")
    assert registry.get_device(did).state == "spare"
    assert registry.provisioning_for_mac("02:aa") is None
    # Re-provisioning re-keys: a new epoch, back out of service until committed.
    assert (
        registry.begin_provisioning(
            did, "bracelet", "esp32-test", other, actor="t", mqtt_password_hash=None
        )
        == 2
    )
    assert not registry.abandon_provisioning(did, "t")  # it was in service: kept
    assert registry.get_device(did).state == "provisioning"
    fresh = next(_ids)
    registry.begin_provisioning(
        fresh, "button", "esp32-test", sealed, actor="t", mqtt_password_hash=None
    )
    assert registry.abandon_provisioning(fresh, "t", "error=test")  # never in service: gone
    assert registry.get_device(fresh) is None
    actions = [a["action"] for a in registry.audit_log(target=codec.device_str(fresh))]
    assert actions == ["provision-abandon", "provision-begin"]
