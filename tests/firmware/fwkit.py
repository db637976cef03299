"""CPython side of the firmware tests: device roots and the firmware under micropython.

* ``make_root`` writes config.json + board.json (+ data/) for one virtual device.
* ``DeviceProc`` runs ``app.main(root)`` under the real ``micropython``, wired to a
  control channel.

What the tests drive it with comes from the library, as downstream projects get
it: ``auxilio.testing.control.ControlServer`` (the host HAL control channel),
``auxilio.testing.peer.C4Peer`` (a C4 that verifies and ACKs) and
``auxilio.testing.wait.wait_for``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from dataclasses import replace
from pathlib import Path

from auxilio.build import build
from auxilio.protocol import codec
from auxilio.testing.control import ControlServer
from auxilio.testing.mosquitto import Mosquitto

from tests.conftest import FIRMWARE, PROTOCOL, micropython_binary

# Short timers so scenarios finish in seconds (retry base 0.5 s, cap 2 s).
FAST_TUNABLES = {
    "retry_base_ms": 500,
    "retry_cap_ms": 2000,
    "input_poll_ms": 100,
    "mqtt_backoff_min_ms": 200,
    "mqtt_backoff_max_ms": 1000,
}
SOURCE_DIRS = [FIRMWARE, PROTOCOL]


def broker(extra: str = "", **kw: object) -> Mosquitto:
    """A started mosquitto on a free loopback port; `user root` keeps it able to write its
    log and persistence db in the private temp dir when the tests run as root (it is
    ignored for other users)."""
    return Mosquitto(extra_config="user root\n" + extra, **kw).start()


def device_id(n: int) -> str:
    return codec.device_str(0x0938_0000 + n)


def make_root(
    root: Path,
    broker_url: str,
    *,
    n: int = 1,
    board: str = "bracelet-c3",
    role: str | None = None,
    tunables: dict | None = None,
    counter_floor: int | None = None,
    modem: str | None = None,
    **overrides: object,
) -> dict:
    """Create a device filesystem root (auxilio.provision); return its config dict (with the secret).

    counter_floor: SPEC §12.1, for a known secret (``secret=`` in overrides):
    the registry's floor (Registry.counter_floor), or a test's own value.
    modem: deploy this modem profile (boards/modems/<name>.json) as modem.json and
    make it the board's modem (the board's own profile when modem="board").
    """
    from auxilio.boards import load_board
    from auxilio.provision.config import device_config, network
    from auxilio.provision.identity import new_identity
    from auxilio.provision.writer import write_root

    b = load_board(board)
    data = b.device_data()
    files: dict[str, bytes] = {}
    if modem is not None:
        from auxilio import modems

        if modem != "board":
            data = modems.with_profile(data, modem)
        files = modems.device_files(data)
    dev = device_id(n)
    ident = new_identity(dev, password="pw-" + dev)
    if counter_floor is not None:
        ident = replace(ident, counter_floor=counter_floor)
    cfg = device_config(
        ident,
        role or b.role,
        broker_url,
        net=network(wifi_ssid="lab", wifi_password="lab-pass"),
        tunables=dict(FAST_TUNABLES, **(tunables or {})),
    )
    cfg.update(overrides)
    write_root(root, cfg, data, files=files)
    return cfg


def build_mpy(dst: Path) -> Path:
    """The `make firmware` build (auxilio.build) of firmware/ + codec into dst (a tmp dir)."""
    build(out=dst)
    return dst


class DeviceProc:
    """``app.main(root)`` (or ``run_fleet``) under micropython, with the control channel."""

    def __init__(
        self,
        roots: Path | list[Path],
        control: ControlServer | None,
        *,
        path: list[Path] | None = None,
        heapsize: str | None = None,
        extra: str = "",
        env: dict[str, str] | None = None,
    ) -> None:
        many = isinstance(roots, list)
        paths = [str(p) for p in (path or SOURCE_DIRS)]
        call = (
            f"app.run_fleet({[str(r) for r in roots]!r})" if many else f"app.main({str(roots)!r})"
        )
        script = f"import sys\nsys.path[:0] = {paths!r}\nimport app\n" + extra + call + "\n"
        cmd = [micropython_binary()]
        if heapsize:
            cmd += ["-X", f"heapsize={heapsize}"]
        cmd += ["-c", script]
        extra_env = env or {}
        env = dict(os.environ)
        if control is not None:
            env["AUXILIO_HAL_CONTROL"] = control.address
        env.update(extra_env)
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
        )
        self.lines: list[str] = []
        self.started = time.monotonic()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        """Power cut: SIGKILL, no chance to flush anything."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def output(self) -> str:
        return "\n".join(self.lines)
