"""`auxilio modem-check`: walk a board's modem through SIM, registration, signal, data, GNSS, SMS.

The checks run on the board itself (host/auxilio/modemcheck_mpy.py through
``mpremote run``), with the firmware's own driver and the board's HAL, so they
test the wiring, the SIM and the network exactly as the firmware will use
them. ``run_checks(port)`` is the library entry point (the factory test calls
it); the CLI prints its results as a table.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from auxilio.errors import AuxilioError, ConnectionFailed, UsageError

log = logging.getLogger(__name__)

SCRIPT = Path(__file__).with_name("modemcheck_mpy.py")
ATTACH_S = 180  # registration budget: a first attach with a band scan can take minutes
GNSS_S = 60  # fix budget (a cold start under open sky is ~30 s)
SLACK_S = 120  # power-on, SIM, data and SMS steps on top of the two budgets
STATUSES = ("ok", "warn", "fail", "skip")


@dataclass(frozen=True)
class CheckResult:
    """One line of the technician's table."""

    check: str  # modem, sim, registration, signal, data, gnss, sms, at
    status: str  # ok | warn | fail | skip
    detail: str
    hint: str = ""  # what to do about it
    seconds: float | None = None

    @property
    def failed(self) -> bool:
        return self.status == "fail"

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def _mpremote() -> str:
    here = Path(sys.executable).parent / "mpremote"
    found = str(here) if here.exists() else shutil.which("mpremote")
    if not found:
        raise AuxilioError("mpremote is not installed (pip install mpremote)")
    return found


def _tcp(value: str | None) -> list[object] | None:
    if not value:
        return None
    host, _, port = value.rpartition(":")
    try:
        p = int(port)
    except ValueError:
        p = 0
    if not host or not 0 < p < 65536:
        raise UsageError(f"--tcp must look like HOST:PORT, not {value!r}")
    return [host, p]


def run_checks(
    port: str,
    *,
    sms_to: str | None = None,
    tcp: str | None = None,
    attach_s: float = ATTACH_S,
    gnss_s: float = GNSS_S,
    root: str = "/",
) -> list[CheckResult]:
    """Run the modem checks on the board at `port` (a serial device, pty or rfc2217:// URL).

    sms_to: send a test SMS to this number (E.164); tcp: HOST:PORT to open a TCP
    connection to instead of the broker in config.json.
    """
    if sms_to is not None and not (sms_to.startswith("+") and sms_to[1:].isdigit()):
        raise UsageError(f"--sms-to must be an E.164 number like +525512345678, not {sms_to!r}")
    args = {
        "sms_to": sms_to,
        "tcp": _tcp(tcp),
        "attach_s": float(attach_s),
        "gnss_s": int(gnss_s),
        "root": root,
    }
    fd, path = tempfile.mkstemp(prefix="auxilio-modemcheck-", suffix=".py")
    with os.fdopen(fd, "w") as f:
        f.write(f"ARGS = {args!r}\n")  # a Python literal: None, not null
        f.write(SCRIPT.read_text())
    try:
        proc = subprocess.run(
            [_mpremote(), "connect", port, "run", path],
            capture_output=True,
            text=True,
            timeout=attach_s + gnss_s + SLACK_S,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        raise ConnectionFailed(f"modem-check on {port} did not finish in time") from None
    finally:
        os.unlink(path)
    results = []
    done = False
    for line in proc.stdout.splitlines():
        if line.startswith("MC "):
            d = json.loads(line[3:])
            results.append(
                CheckResult(
                    d["check"], d["status"], d["detail"], d.get("hint", ""), d.get("seconds")
                )
            )
        elif line.strip() == "MC-DONE":
            done = True
        elif line.strip():
            log.debug("board: %s", line)
    if proc.returncode != 0 and not results:
        msg = (proc.stderr or proc.stdout).strip().splitlines()
        raise ConnectionFailed(f"{port}: {msg[-1] if msg else 'mpremote failed'}")
    if not done and not any(r.failed for r in results):
        tail = proc.stdout.strip().splitlines()[-1:] or ["no output"]
        raise AuxilioError(f"modem-check stopped early on the board: {tail[0]}")
    return results
