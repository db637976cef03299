"""`auxilio broker run|config` mistakes (issue 9 §2): one line, non-zero, no broker left behind.

Also the reload path fleet mode uses: new device users written into an
existing config and applied by SIGHUP to the running `broker run`.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from auxilio.broker.config import PID_FILE, refresh_users, reload_broker, write_config
from auxilio.broker.mosquitto import free_port, mosquitto_binary
from auxilio.registry.enrol import enrol_device
from auxilio.testing.cli import run_cli, run_cli_process
from auxilio.testing.wait import wait_for
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from tests.broker.conftest import Client, make_fleet

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(mosquitto_binary() is None, reason="mosquitto is not installed"),
]
root_only = pytest.mark.skipif(os.geteuid() != 0, reason="mosquitto drops privileges as root only")


def _mosquittos(conf: Path) -> list[int]:
    """Pids of mosquitto processes running this config file."""
    needle = str(conf).encode()
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                argv = (d / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if needle in argv and any(a.endswith(b"mosquitto") for a in argv):
                out.append(int(d.name))
    return out


class Runner:
    """`auxilio broker run --dir DIR` as a real process (it forwards signals to mosquitto)."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "auxilio.cli", "broker", "run", "--dir", str(directory)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )

    def stop(self) -> tuple[int, str]:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(30)
        return rc, self.proc.stderr.read() if self.proc.stderr else ""


def test_used_port_is_one_line_and_leaves_no_broker(tmp_path: Path) -> None:
    fleet = make_fleet(tmp_path, [("A", "bracelet")])
    port = free_port()
    files = write_config(tmp_path / "b", fleet.registry, port=port)
    fleet.registry.close()
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        r = run_cli_process("broker", "run", "--dir", str(files.directory), timeout=60)
    line = r.error_line()
    assert r.rc == 1 and f"port {port}" in line and "already in use" in line
    assert "Address already in use" not in r.err  # mosquitto's raw line never shows
    assert _mosquittos(files.conf) == [] and not (files.directory / PID_FILE).exists()


def test_any_start_failure_is_mosquittos_reason_in_one_line(tmp_path: Path) -> None:
    fleet = make_fleet(tmp_path, [("A", "bracelet")])
    files = write_config(tmp_path / "b", fleet.registry, port=free_port(), run_as="root")
    fleet.registry.close()
    files.conf.write_text(files.conf.read_text() + "no_such_option 1\n")  # a hand edit gone wrong
    r = run_cli_process("broker", "run", "--dir", str(files.directory), timeout=60)
    line = r.error_line()
    assert (
        r.rc == 1
        and line.startswith("error: mosquitto did not start: ")
        and "no_such_option" in line
    )
    assert _mosquittos(files.conf) == []


@root_only
def test_root_in_a_private_directory_runs_and_says_why(tmp_path: Path) -> None:
    """A `mktemp -d`-like 0700 directory: mosquitto could not drop to its user, so it stays root."""
    private = tmp_path / "p"
    private.mkdir(mode=0o700)
    fleet = make_fleet(tmp_path, [("A", "bracelet")])
    fleet.registry.close()
    port = free_port()
    out = private / "broker"
    r = run_cli(
        "broker", "config", "--out", str(out), "--registry", str(tmp_path / "reg.db"),
        "--port", str(port),
    ).ok()  # fmt: skip
    assert "warning:" in r.err and "not searchable" in r.err
    assert "user root" in (out / "mosquitto.conf").read_text().splitlines()
    runner = Runner(out)
    try:
        wait_for(lambda: (out / PID_FILE).exists() or runner.proc.poll() is not None, what="start")
        a = fleet.creds["A"]
        dev = Client(port, a["username"], a["password"])
        assert dev.ok
        dev.close()
    finally:
        rc, err = runner.stop()
    assert rc == 0 and "pwfile" not in err and "Traceback" not in err, err
    assert not (out / PID_FILE).exists()


@root_only
def test_a_broker_user_that_cannot_reach_the_files_is_named(tmp_path: Path) -> None:
    private = tmp_path / "p"
    private.mkdir(mode=0o700)
    fleet = make_fleet(tmp_path, [("A", "bracelet")])
    files = write_config(private / "broker", fleet.registry, port=free_port(), run_as="mosquitto")
    fleet.registry.close()
    r = run_cli_process("broker", "run", "--dir", str(files.directory), timeout=60)
    line = r.error_line()
    assert r.rc == 2 and str(private) in line and "0700" in line and "--run-as root" in line
    assert "Unable to open pwfile" not in r.err and _mosquittos(files.conf) == []


def test_new_users_reach_a_running_broker_by_sighup(tmp_path: Path) -> None:
    fleet = make_fleet(tmp_path, [("A", "bracelet")])
    port = free_port()
    files = write_config(tmp_path / "b", fleet.registry, port=port, run_as="root")
    conf_before = files.conf.read_text()
    runner = Runner(files.directory)
    try:
        wait_for(lambda: (files.directory / PID_FILE).exists(), what="broker.pid")
        out = tmp_path / "new.json"
        pub = X25519PrivateKey.generate().public_key()
        enrol_device(fleet.registry, pub, "bracelet", "bracelet-c3", actor="t", secret_out=out)
        import json

        new = json.loads(out.read_text())
        assert not Client(port, new["username"], new["password"]).ok  # not a user yet
        refreshed = refresh_users(files.directory, fleet.registry)
        assert new["device"] in refreshed.devices
        assert files.conf.read_text() == conf_before  # listeners and TLS untouched
        assert reload_broker(files.directory) == runner.proc.pid
        wait_for(lambda: Client(port, new["username"], new["password"]).ok, what="reloaded user")
        a = fleet.creds["A"]
        assert Client(port, a["username"], a["password"]).ok  # the others stay
    finally:
        rc, err = runner.stop()
        fleet.registry.close()
    assert rc == 0, err
    assert reload_broker(files.directory) is None  # nothing runs there any more


def test_config_help_says_hand_added_users_are_removed() -> None:
    r = run_cli("broker", "config", "--help")
    assert r.rc == 0 and "by hand" in r.out and "removed" in r.out
