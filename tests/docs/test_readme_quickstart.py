"""The README's quick start, run as written: it cannot drift from the code (issue 9 §3).

The block after ``<!-- quickstart -->`` runs under bash in an empty directory,
with the repository's venv and a free broker port in place of the README's
18830. Then the state it left is read back: the registry row, the stored and
attended alert, and git ignoring everything it wrote.
"""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from auxilio.broker.mosquitto import free_port, mosquitto_binary

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
README_PORT = "18830"
# The whole walk: key generation, a firmware deploy, boot, one alert and its attend.
RUN_TIMEOUT_S = 240


def quickstart_block(readme: str) -> str:
    """The shell block that follows the quick-start marker."""
    m = re.search(r"<!-- quickstart -->\s*```sh\n(.*?)```", readme, re.S)
    assert m, "README.md has no <!-- quickstart --> sh block"
    return m.group(1)


@pytest.mark.skipif(mosquitto_binary() is None, reason="needs mosquitto")
def test_readme_quickstart_runs_as_written(tmp_path: Path) -> None:
    script = quickstart_block((REPO / "README.md").read_text())
    assert README_PORT in script
    script = script.replace(README_PORT, str(free_port()))
    (tmp_path / ".venv").symlink_to(Path(sys.prefix))
    run_dir = tmp_path / "run"
    run_dir.mkdir(mode=0o700)
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("AUXILIO_") and k not in ("VIRTUAL_ENV", "XDG_RUNTIME_DIR")
    }
    env["XDG_RUNTIME_DIR"] = str(run_dir)  # its own virtual-board directory
    proc = subprocess.Popen(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its background jobs share its process group
    )
    try:
        out, _ = proc.communicate(timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"the quick start did not finish in {RUN_TIMEOUT_S} s:\n{out[-4000:]}")
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert proc.returncode == 0, out[-4000:]
    assert "Traceback" not in out, out[-4000:]

    db = sqlite3.connect(f"file:{tmp_path / 'var' / 'auxilio.db'}?mode=ro", uri=True)
    device = db.execute(
        "SELECT d.id, d.state, a.case_ref FROM devices d"
        " JOIN assignments a ON a.device_id = d.id AND a.ended_at IS NULL"
    ).fetchall()
    assert [(row[1], row[2]) for row in device] == [("assigned", "PR-2026-00123")]
    alert = db.execute(
        "SELECT type, test, attending_at FROM alerts WHERE id = 2 AND device_id = ?",
        (device[0][0],),
    ).fetchone()
    assert alert is not None and alert[0] == "ALERT" and not alert[1] and alert[2] is not None

    # Everything the walk wrote, secrets included, is ignored by git at the repository root.
    written = sorted(str(p.relative_to(tmp_path)) for p in (tmp_path / "var").rglob("*"))
    assert "var/bracelet.json" in written
    ignored = subprocess.run(
        ["git", "check-ignore", "--no-index", *written], cwd=REPO, capture_output=True, text=True
    ).stdout.split()
    assert sorted(ignored) == written
    assert not [p for p in tmp_path.iterdir() if p.name not in (".venv", "var", "run")]
