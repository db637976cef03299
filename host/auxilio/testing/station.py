"""A provisioning station for tests: a secured C4 chain with no devices yet, its gateway running,
the station's key files, and blank virtual boards to provision.

    with ProvisionStation(tmp_path) as st:
        vd = st.blank_board(virtual_board)          # firmware deployed, no config.json
        res = provision(st.request(vd, "bracelet", case="PR-2026-00123"))
        st.login_works(res.device, password)        # the broker takes the new login

The broker holds device logins in mosquitto's dynamic-security plugin
(auxilio.broker.authority, "dynsec"): a provisioning run tells it at once
through the station's broker admin file, with no reload.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from auxilio.keys import public_key_text
from auxilio.testing.chain import SecureChain

# The live tests wait for a BOOT over a real broker and gateway; a busy machine is slow.
BOOT_TIMEOUT_S = 90.0


class ProvisionStation:
    """Registry + gateway key + secured mosquitto + running gateway, and the station's files."""

    def __init__(self, workdir: Path, **gateway_kw: Any) -> None:
        """``gateway_kw``: for the gateway (e.g. ``clock=``, so a test moves past a grace)."""
        self.dir = Path(workdir)
        self.chain = SecureChain(self.dir, devices=(), authority="dynsec")
        self.registry = self.chain.registry
        self.public_key = self.chain.key.public_key()
        self.pubkey_file = self.dir / "gateway.pub"
        self.pubkey_file.write_text(public_key_text(self.public_key) + "\n")
        from auxilio.gateway.forward import JsonlSink

        self.forwarded = io.StringIO()  # what the gateway sends on to dispatch (JSONL)
        self.gateway = self.chain.start_gateway(sink=JsonlSink(self.forwarded), **gateway_kw)
        self.operator = self.chain.files.operator  # the station's broker login
        self.labels = self.dir / "labels"
        self._boards: list[Any] = []
        from auxilio.broker.lifecycle import load_admin
        from auxilio.provision.run import broker_authority_sync

        self.admin_file = self.chain.admin_file
        self.sync = broker_authority_sync(load_admin(self.admin_file), self.registry)

    @property
    def broker_url(self) -> str:
        """What devices connect to (no credentials: each has its own login)."""
        return self.chain.url

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
            "--broker-admin",
            str(self.admin_file),
            *(() if live else ("--no-live-test",)),
            *extra,
        ]

    def forwarded_records(self) -> list[dict[str, Any]]:
        import json

        return [json.loads(ln) for ln in self.forwarded.getvalue().splitlines() if ln]

    def close(self) -> None:
        for vd in self._boards:
            vd.close()
        self.chain.close()

    def __enter__(self) -> ProvisionStation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
