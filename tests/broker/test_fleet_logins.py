"""`auxilio emulate --count N --registry … --keys …` against the README's secured broker
(issue 9 §2): the devices are registered with their MQTT passwords and told to the broker
before they start, so all N connect; refused logins are named; Ctrl-C is honoured at once;
a relative --workdir works."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from auxilio.testing.livebroker import LiveBroker
from auxilio.testing.wait import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.emulator]

COUNT = 4
START_S = 90.0


@pytest.fixture
def live(tmp_path: Path) -> Iterator[LiveBroker]:
    lb = LiveBroker(tmp_path / "c4", authority="dynsec", devices=())
    try:
        yield lb
    finally:
        lb.close()


def _emulate(live: LiveBroker, cwd: Path, *extra: str) -> subprocess.Popen[str]:
    env = {**live.env(), "XDG_RUNTIME_DIR": str(cwd)}
    return subprocess.Popen(
        [sys.executable, "-m", "auxilio.cli", "emulate", "--count", str(COUNT), "--json"]
        + ["--broker", live.url, "--workdir", "fleet", *extra],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def _stop(p: subprocess.Popen[str]) -> tuple[int, str]:
    p.send_signal(signal.SIGINT)
    try:
        _out, err = p.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        _out, err = p.communicate()
    return p.returncode, err


def test_a_registered_fleet_connects_to_the_secured_broker(
    live: LiveBroker, tmp_path: Path
) -> None:
    p = _emulate(
        live,
        tmp_path,
        "--registry",
        str(live.registry_path),
        "--keys",
        str(live.keys_dir),
        "--broker-admin",
        str(live.admin_file),
    )
    try:
        assert p.stdout is not None
        line = p.stdout.readline()  # printed once every device holds its connection
        assert line, p.stderr.read() if p.stderr else ""
        info = json.loads(line)
        assert info["devices"] == COUNT and f"{COUNT} devices added" in info["registry"]
        assert Path(info["workdir"]) == (tmp_path / "fleet").resolve()
        rows = [d for d in live.registry.list_devices() if d.board == "bracelet-c3"]
        assert len(rows) == COUNT and all(d.mqtt_password_hash for d in rows)
    finally:
        rc, err = _stop(p)
    assert rc in (0, 130), err
    assert "Traceback" not in err


def test_unregistered_fleet_says_why_and_ctrl_c_stops_it_at_once(
    live: LiveBroker, tmp_path: Path
) -> None:
    p = _emulate(live, tmp_path)
    log = tmp_path / "fleet" / "run-0.log"
    wait_for(
        lambda: log.exists() and "not authorized" in log.read_text(errors="replace"),
        START_S,
        "the broker refusing the unregistered devices",
    )
    t0 = time.monotonic()
    rc, err = _stop(p)
    assert time.monotonic() - t0 < 10  # not the 60 s start-up wait
    assert rc == 130 and "Traceback" not in err, err
