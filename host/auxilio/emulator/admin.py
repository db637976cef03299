"""The running emulator's admin channel, used by `auxilio vboard` from another shell.

`auxilio emulate` serves newline-delimited JSON on 127.0.0.1 and writes a
state file (mode 0600) naming the port and a random token; a request is
{"token": ..., "cmd": "press", "dev": 0, ...} and the answer one JSON line
{"ok": true, ...} or {"ok": false, "error": "..."}. "events" with "follow"
streams event lines until the client hangs up.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import secrets
import select
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from auxilio.emulator.fleet import VirtualFleet
from auxilio.emulator.vdevice import (
    DROP_PCT,
    HOLD_S,
    LATENCY_MS,
    VirtualDevice,
    battery_pct,
    in_range,
)
from auxilio.errors import ConnectionFailed, NotFoundError, UsageError
from auxilio.paths import runtime_dir
from auxilio.private import private_dir, write_private

log = logging.getLogger(__name__)

# How long `vboard` waits for an answer beyond the request's own duration (a hold).
CLIENT_TIMEOUT_S = 30.0
# How often a request in progress (a hold) checks that its requester is still there.
HANGUP_POLL_S = 0.1
# Most events one `vboard events --last N` returns (the controller keeps 100,000).
EVENTS_MAX = 100_000


def state_dir() -> Path:
    """Where running emulators leave their state files (per user)."""
    return runtime_dir()


def state_file(name: str) -> Path:
    return state_dir() / f"{name}.json"


def default_pty_link(name: str) -> Path:
    return state_dir() / f"{name}.tty"


class AdminServer:
    """Serves `vboard` requests for one VirtualDevice or VirtualFleet."""

    def __init__(self, name: str, target: VirtualDevice | VirtualFleet, info: dict[str, Any]):
        self.name = name
        self.target = target
        self.token = secrets.token_hex(16)
        self._server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._server.bind(("127.0.0.1", 0))
        self._server.listen(8)
        self.port = self._server.getsockname()[1]
        self.path = state_file(name)
        private_dir(self.path.parent)
        if self.path.exists():
            old = _read_state(self.path)
            if old and _pid_alive(int(old.get("pid", 0))):
                self._server.close()
                raise UsageError(f"a virtual board named {name!r} is already running")
        data = dict(
            info, name=name, pid=os.getpid(), admin=f"127.0.0.1:{self.port}", token=self.token
        )
        write_private(self.path, json.dumps(data))
        self._closed = False
        threading.Thread(target=self._accept, name="vb-admin", daemon=True).start()

    def close(self) -> None:
        self._closed = True
        try:
            self._server.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._server.close()
        try:
            if (_read_state(self.path) or {}).get("pid") == os.getpid():
                self.path.unlink()
        except OSError:
            pass

    def _accept(self) -> None:
        while not self._closed:
            try:
                conn, _ = self._server.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            f = conn.makefile("rwb")
            for line in f:
                try:
                    req = json.loads(line)
                    if not isinstance(req, dict) or req.get("token") != self.token:
                        raise UsageError("bad token")
                    if req.get("cmd") == "events" and req.get("follow"):
                        self._follow(f, req)
                        return
                    reply = {"ok": True, **(self.handle(req, hangup=_hangup(conn)) or {})}
                except (UsageError, NotFoundError, ValueError, KeyError, TypeError) as exc:
                    reply = {"ok": False, "error": str(exc)}
                except TimeoutError as exc:
                    reply = {"ok": False, "error": str(exc)}
                try:
                    f.write((json.dumps(reply) + "\n").encode())
                    f.flush()
                except OSError:
                    return

    def _controls(self) -> list[Any]:
        t = self.target
        return list(t.controls) if isinstance(t, VirtualFleet) else [t.control]

    def _follow(self, f: Any, req: dict[str, Any]) -> None:
        q: queue.Queue[dict[str, Any]] = queue.Queue(maxsize=10000)
        want = req.get("dev")

        def make(g: int) -> Callable[[dict[str, Any]], None]:
            per = self.target.per_interpreter if isinstance(self.target, VirtualFleet) else 0

            def push(ev: dict[str, Any]) -> None:
                ev = dict(ev, index=g * per + int(ev.get("dev", 0)))
                if want is None or ev["index"] == want:
                    try:
                        q.put_nowait(ev)
                    except queue.Full:
                        pass

            return push

        listeners = []
        for g, control in enumerate(self._controls()):
            cb = make(g)
            control.add_listener(cb)
            listeners.append((control, cb))
        try:
            f.write(b'{"ok": true, "follow": true}\n')
            f.flush()
            while not self._closed:
                try:
                    ev = q.get(timeout=1.0)
                except queue.Empty:
                    continue
                f.write((json.dumps(ev) + "\n").encode())
                f.flush()
        except OSError:
            pass
        finally:
            for control, cb in listeners:
                try:
                    control._listeners.remove(cb)
                except ValueError:
                    pass

    def _dev(self, req: dict[str, Any]) -> int:
        """The device index, checked: a single board runs one device, a fleet `count`."""
        dev = req.get("dev", 0)
        count = self.target.count if isinstance(self.target, VirtualFleet) else 1
        if not isinstance(dev, int) or isinstance(dev, bool) or not 0 <= dev < count:
            which = "a single board has only device 0" if count == 1 else f"0-{count - 1}"
            raise UsageError(f"--dev {dev} does not exist ({which})")
        return dev

    def handle(
        self, req: dict[str, Any], hangup: threading.Event | None = None
    ) -> dict[str, Any] | None:
        """One request; `hangup` is set if the requester goes away (a hold then ends)."""
        t = self.target
        cmd = req.get("cmd")
        if cmd == "status":
            return self.status()
        dev = self._dev(req)
        if cmd == "press":
            t.press(dev)
        elif cmd == "release":
            t.release(dev)
        elif cmd == "hold":
            secs = req.get("seconds")
            t.hold(None if secs is None else in_range(secs, HOLD_S, "hold"), dev, cancel=hangup)
        elif cmd == "battery":
            t.battery(battery_pct(req["pct"]), dev)
        elif cmd == "mains":
            t.mains(bool(req["on"]), dev)
        elif cmd == "tamper":
            t.tamper(bool(req["open"]), dev)
        elif cmd == "network":
            t.network(bool(req["up"]))
        elif cmd == "latency":
            t.latency(in_range(req["ms"], LATENCY_MS, "latency (ms)"))
        elif cmd == "drop":
            t.drop(in_range(req["pct"], DROP_PCT, "drop (%)"))
        elif cmd == "soft-reset":
            t.soft_reset(dev)
        elif cmd in ("power-cut", "power-restore", "reset"):
            if not isinstance(t, VirtualDevice):
                raise UsageError(f"{cmd} needs a single virtual board, not a fleet")
            {"power-cut": t.power_cut, "power-restore": t.power_restore, "reset": t.hard_reset}[
                cmd
            ]()
        elif cmd in ("lte", "gnss"):
            if not isinstance(t, VirtualDevice):
                raise UsageError(f"{cmd} needs a single virtual board, not a fleet")
            if cmd == "lte":
                t.lte(str(req["state"]))
            else:
                lat = req.get("lat")
                t.gnss(
                    None if lat is None else float(lat),
                    None if lat is None else float(req["lon"]),
                    float(req.get("hdop") or 1.2),
                )
        elif cmd == "events":
            last = int(in_range(req.get("last", 50), (0, EVENTS_MAX), "--last"))
            return {"events": t.events()[-last:] if last else []}
        else:
            raise UsageError(f"unknown command {cmd!r}")
        return None

    def status(self) -> dict[str, Any]:
        t = self.target
        if isinstance(t, VirtualFleet):
            return {
                "mode": "fleet",
                "count": t.count,
                "interpreters": len(t.procs),
                "alive": sum(1 for p in t.procs if p.poll() is None),
                "connections": t.proxy.connections() if t.proxy else 0,
                "rss_bytes": t.rss_bytes(),
                "cpu_seconds": round(t.cpu_seconds(), 2),
            }
        b = t.board
        return {
            "mode": "board",
            "state": b.state.value,
            "uptime_s": b.uptime_s(),
            "boots": b.boots,
            "pty": b.pty.path if b.pty else None,
            "rfc2217": b.rfc2217_url,
            "device": t.device,
            "control_connected": t.control.is_connected(),
            "modem": t.modem.status() if t.modem is not None else None,
            "network": None
            if t.proxy is None
            else {
                "up": t.proxy.up,
                "latency_ms": t.proxy.latency_ms,
                "drop_pct": t.proxy.drop_pct,
                "connections": t.proxy.connections(),
            },
        }


def _hangup(conn: socket.socket) -> threading.Event:
    """An event set when the peer closes `conn` (Ctrl-C or kill of `auxilio vboard hold`).

    The watcher ends at the first sign of life on the socket: its close, or the
    peer's next request (peeked, never consumed); `vboard` closes after each call.
    """
    gone = threading.Event()

    def watch() -> None:
        while True:
            try:
                ready, _, _ = select.select([conn], [], [], HANGUP_POLL_S)
                if not ready:
                    continue
                if not conn.recv(1, socket.MSG_PEEK):
                    gone.set()
            except (OSError, ValueError):
                gone.set()
            return

    threading.Thread(target=watch, name="vb-hangup", daemon=True).start()
    return gone


def _read_state(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def running() -> list[dict[str, Any]]:
    """State of every running emulator; stale state files are removed."""
    out = []
    d = state_dir()
    if not d.is_dir():
        return out
    for path in sorted(d.glob("*.json")):
        st = _read_state(path)
        if st and _pid_alive(int(st.get("pid", 0))):
            out.append(st)
        else:
            try:
                path.unlink()
            except OSError:
                pass
    return out


class AdminClient:
    def __init__(self, name: str | None = None) -> None:
        boards = running()
        if name is not None:
            boards = [b for b in boards if b.get("name") == name]
            if not boards:
                raise NotFoundError(f"no running virtual board named {name!r}")
        if not boards:
            raise NotFoundError("no virtual board is running (start one with `auxilio emulate`)")
        if len(boards) > 1:
            names = ", ".join(b["name"] for b in boards)
            raise UsageError(f"several virtual boards are running ({names}); pick one with --name")
        self.state = boards[0]
        host, port = self.state["admin"].rsplit(":", 1)
        self.address = (host, int(port))

    def _open(self) -> socket.socket:
        try:
            return socket.create_connection(self.address, timeout=CLIENT_TIMEOUT_S)
        except OSError as exc:
            raise ConnectionFailed(f"virtual board {self.state['name']}: {exc.strerror}") from None

    def call(self, cmd: str, **fields: Any) -> dict[str, Any]:
        with self._open() as s:
            s.sendall(
                (json.dumps({"token": self.state["token"], "cmd": cmd, **fields}) + "\n").encode()
            )
            line = s.makefile("rb").readline()
        if not line:
            raise ConnectionFailed("the emulator closed the admin connection")
        reply = json.loads(line)
        if not reply.get("ok"):
            raise UsageError(reply.get("error", "failed"))
        return reply

    def follow(self, dev: int | None = None) -> Iterator[dict[str, Any]]:
        s = self._open()
        s.settimeout(None)
        with s:
            req = {"token": self.state["token"], "cmd": "events", "follow": True}
            if dev is not None:
                req["dev"] = dev
            s.sendall((json.dumps(req) + "\n").encode())
            f = s.makefile("rb")
            first = f.readline()
            if not first or not json.loads(first).get("ok"):
                raise ConnectionFailed("the emulator refused to stream events")
            for line in f:
                yield json.loads(line)
