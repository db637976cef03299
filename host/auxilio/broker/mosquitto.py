"""mosquitto on this machine: finding the binary, and one broker process on a free loopback port.

The one home for both (`auxilio broker run` finds the binary here; tests,
benches, the demo and the power budget start a private broker with `Mosquitto`;
`auxilio.testing.mosquitto` re-exports this module for existing imports).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from auxilio.errors import AuxilioError

# How long a freshly started mosquitto may take to accept connections.
START_TIMEOUT_S = 10.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(host: str, port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise AuxilioError(
                    f"nothing listening on {host}:{port} after {timeout:.0f}s"
                ) from None
            time.sleep(0.02)


def mosquitto_binary() -> str | None:
    """The mosquitto executable, if installed (Debian puts it in /usr/sbin, off a user's PATH)."""
    return shutil.which("mosquitto") or (
        "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None
    )


class Mosquitto:
    """One mosquitto process with its own config; restartable on the same port.

    ``extra_config`` is appended to the generated config (for ACL/password
    tests). Persistence is on, in a private directory, so a killed and
    restarted broker keeps persistent sessions like a production one would.
    """

    def __init__(
        self,
        port: int | None = None,
        extra_config: str = "",
        workdir: Path | None = None,
        config_path: Path | None = None,
    ) -> None:
        binary = mosquitto_binary()
        if binary is None:
            raise AuxilioError("mosquitto is not installed (apt-get install mosquitto)")
        self.binary = binary
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self._tmp = None
        if workdir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="auxilio-mosq-")
            workdir = Path(self._tmp.name)
        self.workdir = workdir
        self.log_path = workdir / "mosquitto.log"
        if config_path is None:
            config_path = workdir / "mosquitto.conf"
            # Started as root, mosquitto drops to the `mosquitto` user and then
            # cannot write its log or persistence into our 0700 temp dir; a test
            # broker may simply stay root.
            sets_user = any(line.startswith("user ") for line in extra_config.splitlines())
            run_as = "user root\n" if os.geteuid() == 0 and not sets_user else ""
            config_path.write_text(
                run_as + f"listener {self.port} 127.0.0.1\n"
                "allow_anonymous true\n"
                # Nagle + delayed ACK costs ~88 ms per QoS1 round trip here.
                "set_tcp_nodelay true\n"
                "persistence true\n"
                f"persistence_location {workdir}/\n"
                "autosave_interval 1\n"
                "max_queued_messages 100000\n"
                f"log_dest file {self.log_path}\n"
                "log_type error\nlog_type warning\nlog_type notice\n" + extra_config
            )
        self.config_path = config_path
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    def start(self) -> Mosquitto:
        if self.proc is not None and self.proc.poll() is None:
            return self
        self.proc = subprocess.Popen(
            [self.binary, "-c", str(self.config_path)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                raise AuxilioError(f"mosquitto exited at start: {err.strip()[-300:]}")
            try:
                wait_port(self.host, self.port, 0.1)
                return self
            except AuxilioError:
                if time.monotonic() > deadline:
                    self.kill()
                    raise

    def stop(self) -> None:
        """Clean shutdown (SIGTERM), saving persistent sessions."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def kill(self) -> None:
        """Abrupt death (SIGKILL), as a crashed broker host."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def close(self) -> None:
        self.stop()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> Mosquitto:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
