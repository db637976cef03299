"""Run the broker: mosquitto with the generated config, else the embedded amqtt demo broker."""

from __future__ import annotations

import errno
import logging
import os
import queue
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from auxilio.broker.config import PID_FILE, blocked_path, broker_user
from auxilio.broker.mosquitto import mosquitto_binary
from auxilio.errors import AuxilioError, NotFoundError, UsageError
from auxilio.private import write_private

log = logging.getLogger(__name__)

# How long mosquitto may take to open its listeners; its output is held until then.
START_TIMEOUT_S = 10.0

# Shown whenever the embedded broker runs: it is a demo convenience, not a C4 broker.
EMBEDDED_NOTE = (
    "NOTA: broker MQTT embebido (amqtt) solo para demostraciones: más lento, sin "
    "TCP_NODELAY ni TLS, y anónimo sin ACL por dispositivo salvo que use un directorio "
    "de `auxilio broker config`. En producción use mosquitto (`auxilio broker config` + "
    "`auxilio broker run`) o un broker en clúster.\n"
    "NOTE: embedded MQTT broker (amqtt) for demos only: slower, no TCP_NODELAY, no TLS, "
    "and anonymous without per-device ACLs unless given an `auxilio broker config` "
    "directory. Production needs mosquitto or a clustered broker."
)


def run_mosquitto(conf: str | Path) -> int:
    """Run mosquitto in the foreground; SIGINT/SIGTERM stop it, SIGHUP reloads it.

    What would make it fail at start (a port in use, a password file its user
    cannot reach) is checked first and said in one line; anything else that
    stops it during start-up is its own `Error:` line, as one line too. Once it
    runs, its log goes to stderr as it comes. While it runs, the config
    directory holds `broker.pid` (this process: SIGHUP it to reload users).
    """
    binary = mosquitto_binary()
    if binary is None:
        raise NotFoundError("mosquitto is not installed (apt-get install mosquitto)")
    conf = Path(conf).resolve()
    if not conf.exists():
        raise NotFoundError(f"{conf} not found (run `auxilio broker config` first)")
    settings = read_conf(conf)
    preflight(settings)
    proc = subprocess.Popen([binary, "-c", str(conf)], stderr=subprocess.PIPE)

    stopping: list[int] = []

    def forward(signum: int, _frame: object) -> None:
        if signum != signal.SIGHUP:
            stopping.append(signum)
        proc.send_signal(signum)

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, forward)
    pid_file = conf.parent / PID_FILE
    try:
        try:
            _start_up(proc, settings)
        except AuxilioError:
            if stopping:  # stopped while starting: not a failure
                return 0
            raise
        write_private(pid_file, f"{os.getpid()}\n")
        rc = proc.wait()
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait()
        _remove_pid_file(pid_file)
    if rc not in (0, -signal.SIGTERM, -signal.SIGINT):
        raise AuxilioError(f"mosquitto exited with status {rc} (see its log above)")
    return 0


@dataclass
class ConfSettings:
    """What `auxilio broker run` checks in a mosquitto.conf before starting it."""

    listeners: list[tuple[str, int]] = field(default_factory=list)  # (bind address, port)
    files: list[Path] = field(default_factory=list)  # password and ACL files it must read
    user: str | None = None


def read_conf(conf: Path) -> ConfSettings:
    out = ConfSettings()
    for raw in conf.read_text().splitlines():
        words = raw.split("#", 1)[0].split()
        if not words:
            continue
        key, args = words[0], words[1:]
        if key == "listener" and args and args[0].isdigit():
            out.listeners.append((args[1] if len(args) > 1 else "0.0.0.0", int(args[0])))
        elif key in ("password_file", "acl_file") and args:
            out.files.append(Path(" ".join(args)))
        elif key == "user" and args:
            out.user = args[0]
    return out


def preflight(settings: ConfSettings) -> None:
    """One line for the start-up failures we can see coming."""
    for bind, port in settings.listeners:
        if port_in_use(bind, port):
            raise AuxilioError(
                f"port {port} on {bind} is already in use (another broker, or an earlier "
                "`auxilio broker run`, is listening there): stop it, or give this broker "
                "another port with `auxilio broker config --port N`"
            )
    user = broker_user(settings.user)
    for f in settings.files:
        blocked = blocked_path(f, user)
        if blocked is not None:
            mode = stat.S_IMODE(blocked.stat().st_mode)
            raise UsageError(
                f"mosquitto drops to user {user!r} when started as root, and {user!r} cannot "
                f"reach {f}: {blocked} is mode {mode:04o}; `chmod o+x {blocked}`, move the "
                "broker directory, or regenerate it with `auxilio broker config --run-as root`"
            )


def port_in_use(bind: str, port: int) -> bool:
    """True when something listens on bind:port (mosquitto would fail 'Address already in use')."""
    family = socket.AF_INET6 if ":" in bind else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        # As mosquitto does: TIME_WAIT leftovers do not count, a listener does.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((bind, port))
        except OSError as exc:
            return exc.errno == errno.EADDRINUSE
    return False


def _start_up(proc: subprocess.Popen[bytes], settings: ConfSettings) -> None:
    """Hold mosquitto's output until its listeners are open; if it dies first, one line."""
    lines: queue.Queue[bytes | None] = queue.Queue()
    assert proc.stderr is not None
    stream = proc.stderr

    def pump() -> None:
        for line in stream:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, name="mosquitto-log", daemon=True).start()
    held: list[bytes] = []
    deadline = time.monotonic() + START_TIMEOUT_S
    while proc.poll() is None and time.monotonic() < deadline:
        if settings.listeners and all(port_in_use(b, p) for b, p in settings.listeners):
            break
        time.sleep(0.02)
    if proc.poll() is not None:
        proc.wait()
        while True:  # what it printed before exiting
            try:
                line = lines.get(timeout=1.0)
            except queue.Empty:
                break
            if line is None:
                break
            held.append(line)
        raise AuxilioError(f"mosquitto did not start: {_error_text(held)}")
    while not lines.empty():
        line = lines.get_nowait()
        if line is not None:
            held.append(line)
    sys.stderr.buffer.write(b"".join(held))
    sys.stderr.flush()

    def relay() -> None:  # from now on its log goes straight through
        while (line := lines.get()) is not None:
            sys.stderr.buffer.write(line)
            sys.stderr.flush()

    threading.Thread(target=relay, name="mosquitto-relay", daemon=True).start()


def _error_text(output: list[bytes]) -> str:
    """mosquitto's own reasons without log timestamps, joined: 'Unknown ... variable "x"; ...'."""
    text = []
    for raw in output:
        line = raw.decode(errors="replace").strip()
        head, sep, rest = line.partition(": ")
        if sep and head.isdigit():  # "1764633600: Error: ..." (a log timestamp)
            line = rest
        if line:
            text.append(line)
    errors = [t.removeprefix("Error: ") for t in text if t.startswith("Error")]
    return "; ".join(errors or text[-1:] or ["no output"])


def _remove_pid_file(path: Path) -> None:
    try:
        if path.read_text().strip() == str(os.getpid()):
            path.unlink()
    except OSError:
        pass


def run_embedded(
    bind: str = "127.0.0.1",
    port: int = 1883,
    config_dir: str | Path | None = None,
    registry: str | None = None,
) -> int:
    """Run the amqtt broker in the foreground until SIGINT/SIGTERM.

    With ``config_dir`` (from `auxilio broker config`) it enforces that password
    file and ACL; without, it is anonymous and open. With ``registry`` too, device
    logins come from the registry live (broker/embedded.py LiveLogins).
    """
    import asyncio

    from auxilio.broker.embedded import serve

    sys.stderr.write(EMBEDDED_NOTE + "\n")
    sys.stderr.write(
        f"embedded broker: users and ACL from {config_dir}\n"
        if config_dir is not None
        else "embedded broker: anonymous, no per-device ACL\n"
    )
    sys.stderr.flush()
    try:
        asyncio.run(serve(bind, port, config_dir, registry=registry))
    except KeyboardInterrupt:
        pass
    return 0
