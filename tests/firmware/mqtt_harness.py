"""CPython side of the MQTT client tests and bench: drive mqtt_runner.py under micropython.

The other end is a real mosquitto (fwkit.broker) watched by auxilio.testing.peer.C4Peer.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

from auxilio.testing.wait import wait_for

from tests.conftest import FIRMWARE, micropython_binary

RUNNER = Path(__file__).resolve().parent / "mqtt_runner.py"
MPY_MODULES = ("mqtt", "session")


def build_mpy(dst: Path) -> Path:
    """Compile the session layer with mpy-cross into dst (the `.mpy` build the device runs)."""
    exe = Path(micropython_binary()).parent / "mpy-cross"
    dst.mkdir(parents=True, exist_ok=True)
    for m in MPY_MODULES:
        subprocess.run(
            [str(exe), "-o", str(dst / f"{m}.mpy"), str(FIRMWARE / f"{m}.py")],
            check=True,
            capture_output=True,
        )
    return dst


class MpDevice:
    """One micropython process running tests/firmware/mqtt_runner.py."""

    def __init__(self, cfg: dict, *, heapsize: str | None = None, path: Path | None = None) -> None:
        cfg = dict(cfg)
        cfg["path"] = [str(path or FIRMWARE)]
        cmd = [micropython_binary()]
        if heapsize:
            cmd += ["-X", f"heapsize={heapsize}"]
        fd, self.cfg_path = tempfile.mkstemp(prefix="mqtt-runner-", suffix=".json")
        with os.fdopen(fd, "w") as f:
            json.dump(cfg, f)  # a file: long argv strings crash this micropython build
        cmd += [str(RUNNER), self.cfg_path]
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
        )
        self.lines: list[str] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._pump, daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._lock:
                self.lines.append(line.rstrip("\n"))

    def snapshot(self) -> list[str]:
        with self._lock:
            return list(self.lines)

    def send(self, cmd: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(cmd + "\n")
        self.proc.stdin.flush()

    def wait_line(self, pred: Callable[[str], bool], timeout: float = 20, start: int = 0) -> str:
        """The first output line from index `start` on that satisfies pred."""

        def find() -> str | None:
            for line in self.snapshot()[start:]:
                if pred(line):
                    return line
            if self.proc.poll() is not None:
                raise AssertionError("micropython exited:\n" + "\n".join(self.snapshot()[-30:]))
            return None

        try:
            return wait_for(find, timeout, "a device line")  # type: ignore[return-value]
        except AssertionError as e:
            raise AssertionError(f"{e}; output:\n" + "\n".join(self.snapshot()[-30:])) from None

    def wait_state(self, up: bool, timeout: float = 20, start: int = 0) -> int:
        """Index of the first STATE line with the given value from `start` on."""
        want = f"STATE {int(up)}"
        self.wait_line(lambda s: s == want, timeout, start)
        return next(i for i, s in enumerate(self.snapshot()) if i >= start and s == want)

    def publish(
        self,
        tag: str,
        topic: str,
        payload: bytes,
        qos: int = 1,
        retain: bool = False,
        timeout_ms: int = 5000,
    ) -> None:
        self.send(f"pub {tag} {topic} {payload.hex()} {qos} {int(retain)} {timeout_ms}")

    def wait_pub(self, tag: str, timeout: float = 30) -> bool:
        line = self.wait_line(lambda s: s.startswith(f"PUB {tag} "), timeout)
        return line.endswith(" ok")

    def stat(self, timeout: float = 10) -> dict:
        start = len(self.snapshot())
        self.send("stat")
        line = self.wait_line(lambda s: s.startswith("STAT "), timeout, start)
        return json.loads(line[5:])

    def mem(self, timeout: float = 10) -> int:
        start = len(self.snapshot())
        self.send("mem")
        return int(self.wait_line(lambda s: s.startswith("MEM "), timeout, start)[4:])

    def logs(self) -> list[str]:
        return [s[4:] for s in self.snapshot() if s.startswith("LOG ")]

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: the device loses power; no DISCONNECT, so the broker fires the LWT."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.send("stop")
                self.proc.wait(5)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait(5)
        self._thread.join(2)
        try:
            os.unlink(self.cfg_path)
        except OSError:
            pass
        for f in (self.proc.stdin, self.proc.stdout):
            if f is not None:
                try:
                    f.close()
                except OSError:
                    pass
