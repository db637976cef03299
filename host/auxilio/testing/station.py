"""A provisioning station for tests: a secured C4 chain with no devices yet, its gateway running,
the station's key files, and blank virtual boards to provision.

    with ProvisionStation(tmp_path) as st:
        vd = st.blank_board(virtual_board)          # firmware deployed, no config.json
        res = provision(st.request(vd, "bracelet", case="PR-2026-00123"))
        st.login_works(res.device, password)        # the broker takes the new login

Until the broker manages users live (issue 11 §2), `sync()` refreshes the
generated password file and sends mosquitto SIGHUP; it is the Request's
`broker_sync`, and a watcher thread runs it whenever the registry's logins
change (so a `auxilio provision` process needs no reload either).
"""

from __future__ import annotations

import io
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from auxilio.keys import public_key_text
from auxilio.testing.chain import SecureChain

# The live tests wait for a BOOT over a real broker and gateway; a busy machine is slow.
BOOT_TIMEOUT_S = 90.0
# How often the watcher compares the registry's logins with what the broker was given.
WATCH_S = 0.2


class ProvisionStation:
    """Registry + gateway key + secured mosquitto + running gateway, and the station's files."""

    def __init__(self, workdir: Path) -> None:
        self.dir = Path(workdir)
        self.chain = SecureChain(self.dir, devices=())
        self.registry = self.chain.registry
        self.public_key = self.chain.key.public_key()
        self.pubkey_file = self.dir / "gateway.pub"
        self.pubkey_file.write_text(public_key_text(self.public_key) + "\n")
        from auxilio.gateway.forward import JsonlSink

        self.forwarded = io.StringIO()  # what the gateway sends on to dispatch (JSONL)
        self.gateway = self.chain.start_gateway(sink=JsonlSink(self.forwarded))
        self.operator = self.chain.files.operator  # the station's broker login
        self.labels = self.dir / "labels"
        self._stop = threading.Event()
        self._boards: list[Any] = []
        self._seen: object = None
        self._watcher = threading.Thread(target=self._watch, name="station-sync", daemon=True)
        self._watcher.start()

    @property
    def broker_url(self) -> str:
        """What devices connect to (no credentials: each has its own login)."""
        return self.chain.url

    def sync(self, *_changed: Any) -> None:
        """Make the broker take the registry's device logins now (password file + SIGHUP)."""
        from auxilio.broker.config import refresh_users

        refresh_users(self.dir / "broker", self.registry)
        proc = self.chain.broker.proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGHUP)

    def _logins(self) -> object:
        return tuple((r.id, r.state, r.mqtt_password_hash) for r in self.registry.list_devices())

    def _watch(self) -> None:
        """Registry changes made by another process (a CLI run) reach the broker too."""
        while not self._stop.wait(WATCH_S):
            try:
                now = self._logins()
                if now != self._seen:
                    self._seen = now
                    self.sync()
            except Exception:  # noqa: BLE001 - a locked registry: try again next tick
                continue

    @staticmethod
    def press_when_asked(vd: Any, lines: list[str], stop: threading.Event) -> threading.Thread:
        """A wearer: when staff are told to ask for the press, hold the button (once)."""
        import time

        def wearer() -> None:
            while not stop.is_set():
                if any("mantenga pulsado" in ln or "hold the button" in ln for ln in lines):
                    vd.hold()
                    return
                time.sleep(0.05)

        t = threading.Thread(target=wearer, name="wearer", daemon=True)
        t.start()
        return t

    def provision_live(self, vd: Any, role: str, **kw: Any) -> tuple[Any, list[str]]:
        """Provision `vd` with the live test, a wearer pressing when staff ask: (result, lines)."""
        from auxilio.provision.run import provision

        lines: list[str] = []
        stop = threading.Event()
        wearer = self.press_when_asked(vd, lines, stop)
        try:
            return provision(self.request(vd, role, live=True, **kw), lines.append), lines
        finally:
            stop.set()
            wearer.join(10)

    def start_board(self, board: str = "bracelet-c3", **kw: Any) -> Any:
        """A blank board outside pytest (benches): started, closed with the station."""
        from auxilio.emulator.vdevice import VirtualDevice

        n = len(self._boards) + 1
        vd = VirtualDevice(board, self.dir / f"board-{n}.img", format=True, name=f"tray-{n}", **kw)
        self._boards.append(vd)
        vd.start(wait=True)
        return vd

    def blank_board(self, virtual_board: Callable[..., Any], board: str = "bracelet-c3") -> Any:
        """A virtual board with MicroPython and the application, as `auxilio flash` leaves it."""
        # No config.json: the firmware says "config error" and waits (main.py keeps running).
        return virtual_board(board, firmware=True)

    def request(self, vd: Any, role: str, live: bool = False, **kw: Any) -> Any:
        """A provision Request for virtual board `vd` against this station.

        ``live``: with the live test (someone must press: `press_when_asked`).
        """
        from auxilio.provision.run import Request

        kw.setdefault("broker_credentials", self.operator)
        kw.setdefault("live_test", live)
        kw.setdefault("boot_timeout", BOOT_TIMEOUT_S)
        kw.setdefault("label_dir", self.labels)
        kw.setdefault("broker_sync", self.sync)
        kw.setdefault("actor", "staff-test")
        kw.setdefault("station", "station-1")
        return Request(
            port=vd.board.rfc2217_url,
            role=role,
            broker_url=self.broker_url,
            registry=self.registry,
            public_key=self.public_key,
            **kw,
        )

    def cli_args(self, *extra: str, live: bool = False) -> list[str]:
        """`auxilio provision` arguments for this station (registry, key, broker, labels).

        The station's broker login is given (so the gateway is checked first); the
        live test only with ``live`` (someone must press).
        """
        return [
            "provision",
            "--registry",
            str(self.chain.registry_path),
            "--pubkey",
            str(self.pubkey_file),
            "--broker",
            self.broker_url,
            "--labels",
            str(self.labels),
            "--actor",
            "staff-test",
            "--station",
            "station-1",
            "--broker-credentials",
            str(self.operator),
            *(() if live else ("--no-live-test",)),
            *extra,
        ]

    def forwarded_records(self) -> list[dict[str, Any]]:
        import json

        return [json.loads(ln) for ln in self.forwarded.getvalue().splitlines() if ln]

    def close(self) -> None:
        for vd in self._boards:
            vd.close()
        self._stop.set()
        self._watcher.join(5)
        self.chain.close()

    def __enter__(self) -> ProvisionStation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
