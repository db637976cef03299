"""Issue 11 §7: provisioning killed at each step (SIGKILL), then run again: consistent every time.

After the kill and after the re-run, the registry row, its audit trail and the
config on the board's flash must agree: no device in service whose secret is
not the board's own, and the re-run finishes the job.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys

import pytest
from auxilio.keys import sealed_id
from auxilio.protocol import codec
from auxilio.provision.run import DIE_ENV, STEPS, provision
from auxilio.testing.station import ProvisionStation

CASE = "PR-2026-00777"
IN_SERVICE = ("spare", "assigned")
# Where a run is killed: after each step, and halfway through the config write.
KILL_POINTS = STEPS[:3] + ("configure-copied",) + STEPS[3:]
CLI_TIMEOUT_S = 180


def board_config(vd) -> tuple[dict | None, str | None, list[str]]:
    """(config.json, its sha256, the root listing) from the board's flash image."""
    names = vd.image.listdir()
    if "config.json" not in names:
        return None, None, names
    raw = vd.image.read_file("config.json")
    return json.loads(raw), hashlib.sha256(raw).hexdigest(), names


def assert_consistent(st: ProvisionStation, vd) -> None:
    """No row in service holds a secret the board does not; every begin is closed or pending."""
    cfg, _sha, _names = board_config(vd)
    for rec in st.registry.list_devices():
        if rec.state not in IN_SERVICE:
            continue
        assert cfg is not None and cfg["device"] == rec.label, (
            f"{rec.label} is {rec.state} but the board holds no config for it"
        )
        assert cfg["key_epoch"] == rec.key_epoch
        assert cfg["key_id"] == sealed_id(rec.sealed_secret)
        assert st.registry.device_secret(rec.id, st.chain.key) == bytes.fromhex(cfg["secret"])


@pytest.mark.parametrize("point", KILL_POINTS)
def test_killed_at_each_step_then_rerun(tmp_path, virtual_board, point: str) -> None:
    with ProvisionStation(tmp_path / "station") as st:
        vd = st.blank_board(virtual_board)
        args = st.cli_args(
            "--port", vd.board.rfc2217_url, "--role", "bracelet", "--case", CASE, "--json"
        )
        env = dict(os.environ, **{DIE_ENV: point})
        proc = subprocess.run(
            [sys.executable, "-m", "auxilio.cli", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=CLI_TIMEOUT_S,
        )
        assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
        assert_consistent(st, vd)
        # The re-run (what staff do next) finishes the job.
        res = provision(st.request(vd, "bracelet", case=CASE))
        assert res.ok
        assert_consistent(st, vd)
        rec = st.registry.require_device(res.device)
        assert rec.state == "assigned"
        assert st.registry.current_assignment(rec.id)["case_ref"] == CASE
        cfg, sha, names = board_config(vd)
        assert "config.json.tmp" not in names
        assert sha == res.config_sha256 or res.resumed
        assert len(st.registry.list_devices()) == 1  # no orphan row from the killed run
        # The audit trail: each begin is followed by its commit (or an abandon), in order.
        actions = [a["action"] for a in st.registry.audit_log(target=rec.label)][::-1]
        opened = 0
        for a in actions:
            if a == "provision-begin":
                opened += 1
            elif a in ("provision-commit", "provision-abandon"):
                assert opened > 0, actions
                opened = 0
        assert opened == 0 and actions[-1] == "assign", actions
        assert actions.count("provision-commit") == 1, actions
        assert codec.device_int(cfg["device"]) == rec.id
