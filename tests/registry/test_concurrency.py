"""Several writers at once (gateway + CLI + a second gateway process) wait their turn instead of failing."""

from __future__ import annotations

import os
import threading

import pytest
from auxilio.errors import ConnectionFailed
from auxilio.registry import LATEST_VERSION, open_registry

from tests.registry.test_registry import _add

# Bounded: a few writers, a few dozen transactions each.
WRITERS = 4
ROUNDS = 25


def test_concurrent_writers_all_commit(registry_url: str) -> None:
    with open_registry(registry_url) as reg:
        ids = [_add(reg) for _ in range(WRITERS)]
    errors: list[BaseException] = []

    def writer(did: int) -> None:
        try:
            with open_registry(registry_url) as r:  # own engine, like another process
                for _ in range(ROUNDS):
                    r.set_heartbeat(did, 60, "t")
                    r.audit("t", "note", "x")
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(d,)) for d in ids]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    with open_registry(registry_url) as reg:
        assert [reg.get_device(d).config_seq for d in ids] == [ROUNDS] * WRITERS
        assert sum(e["action"] == "note" for e in reg.audit_log(limit=1000)) == WRITERS * ROUNDS


def test_concurrent_first_open_migrates_once(registry_url: str) -> None:
    errors: list[BaseException] = []

    def opener() -> None:
        try:
            open_registry(registry_url).close()
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=opener) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    with open_registry(registry_url) as reg:
        assert reg.schema_version == LATEST_VERSION


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_location_is_one_line(tmp_path) -> None:
    d = tmp_path / "ro"
    d.mkdir()
    d.chmod(0o500)
    with pytest.raises(ConnectionFailed) as exc:
        open_registry(str(d / "sub" / "r.db"))
    assert "\n" not in str(exc.value)


def test_registry_path_is_a_directory_is_one_line(tmp_path) -> None:
    with pytest.raises(ConnectionFailed) as exc:
        open_registry(str(tmp_path))
    assert "\n" not in str(exc.value)
