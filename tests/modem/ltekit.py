"""A device on an emulated modem: the real firmware under micropython, a real broker, the C4 peer.

``LteRig`` = the firmware rig of tests/firmware (device root, control channel,
C4 peer, micropython process) + a ModemServer with one EmulatedModem and an
SMSC whose inbox is a directory, wired through AUXILIO_HAL_MODEM.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from auxilio.emulator import radio
from auxilio.emulator.modem import EmulatedModem, ModemServer, attach
from auxilio.emulator.smsc import Smsc
from auxilio.testing.control import ControlServer
from auxilio.testing.mosquitto import Mosquitto
from auxilio.testing.peer import C4Peer
from auxilio.testing.wait import wait_for

from tests.firmware.fwkit import DeviceProc, make_root

C4_NUMBER = "+525599990000"
DEVICE_MSISDN = "+525512340001"
# Modem/transport tunables that keep scenarios to seconds (names in firmware/modem.py,
# firmware/transport.py).
LTE_FAST = {
    "modem_retry_base_ms": 300,
    "modem_retry_cap_ms": 1500,
    "modem_check_ms": 1000,
    "modem_attach_ms": 4000,
    "psm_linger_ms": 300,
    "psm_after_alert_s": 0,
    "gnss_every_s": 0,
    "failover_ms": 4000,
    "failover_penalty_ms": 8000,
    "sms_retry_ms": 1000,
}


class LteRig:
    """One device, one emulated modem, one broker, one C4 peer."""

    def __init__(
        self,
        mq: Mosquitto,
        tmp: Path,
        profile: str = "sim7080g",
        board: str = "bracelet-c3",
        timing: str | radio.Timing = radio.FAST,
        quiet: bool = False,
        **modem_kw: Any,
    ) -> None:
        self.mq = mq
        self.quiet = quiet  # benches: no output tails on close
        self.tmp = tmp
        self.profile = profile
        self.board = board
        self.timing = radio.preset(timing)
        self.srv = ModemServer()
        self.inbox = tmp / "c4-sms-inbox"
        self.smsc = Smsc(deliver_s=self.timing.sms_deliver_s, inbox_dir=self.inbox)
        self.modem: EmulatedModem = attach(
            self.srv, profile, timing=self.timing, smsc=self.smsc, msisdn=DEVICE_MSISDN, **modem_kw
        )
        self.modem.trace = []
        self.ctl = ControlServer()
        self.root = tmp / "dev0"
        self.cfg: dict = {}
        self.peer: C4Peer | None = None
        self.procs: list[DeviceProc] = []

    def start(
        self,
        *,
        tunables: dict | None = None,
        lte: dict | None = None,
        sms: dict | None = None,
        wait_boot: bool = True,
        fast: bool = True,
        **overrides: Any,
    ) -> DeviceProc:
        """Deploy and boot. fast: the shortened LTE_FAST timers (False: the firmware's own)."""
        self.cfg = make_root(
            self.root,
            self.mq.url,
            board=self.board,
            modem=self.profile,
            tunables={**(LTE_FAST if fast else {}), **(tunables or {})},
            lte={"apn": "iot.auxilio.test", **(lte or {})},
            sms={"to": C4_NUMBER, "budget_s": 3, **(sms or {})},
            **overrides,
        )
        self.peer = C4Peer(self.mq, {self.cfg["device"]: self.cfg["secret"]})
        p = self.boot()
        if wait_boot:
            self.peer.wait("BOOT", 1, timeout=60)
        return p

    def boot(self) -> DeviceProc:
        p = DeviceProc(self.root, self.ctl, env={"AUXILIO_HAL_MODEM": self.srv.address})
        self.procs.append(p)
        return p

    @property
    def dev(self) -> str:
        return self.cfg["device"]

    @property
    def secret(self) -> bytes:
        return bytes.fromhex(self.cfg["secret"])

    def status(self, timeout: float = 10.0) -> dict:
        """The device's transport status() over the control channel."""
        n = len(self.ctl.matching(ev="status"))
        self.ctl.send("status")
        wait_for(lambda: len(self.ctl.matching(ev="status")) > n, timeout, "a status event")
        return self.ctl.matching(ev="status")[-1]["status"]

    def alert(self, timeout: float = 30.0) -> dict:
        """Hold the button for the alert gesture; the ALERT as the C4 peer verified it."""
        assert self.peer is not None
        before = len(self.peer.distinct("ALERT"))
        self.ctl.hold(2300)
        return self.peer.wait("ALERT", before + 1, timeout=timeout)[-1]

    def wait_state(self, name: str, counter: int | None = None, timeout: float = 30.0) -> dict:
        kw: dict[str, Any] = {"ev": "state", "name": name}
        if counter is not None:
            kw["counter"] = counter
        return self.ctl.wait_event(timeout=timeout, **kw)

    def heartbeats(self) -> list[dict]:
        assert self.peer is not None
        return self.peer.of("HEARTBEAT")

    def wait_heartbeat(self, pred: Any, timeout: float = 30.0, what: str = "a heartbeat") -> dict:
        def find() -> dict | None:
            for hb in self.heartbeats():
                if pred(hb):
                    return hb
            return None

        return wait_for(find, timeout, what)  # type: ignore[return-value]

    def output(self) -> str:
        return "\n".join(p.output() for p in self.procs)

    def uart(self, last: int = 80) -> str:
        """The tail of the UART conversation (for failure messages)."""
        tr = self.modem.trace or []
        t0 = tr[0][0] if tr else time.monotonic()
        return "\n".join(f"{t - t0:8.3f} {d:3} {b[:100]!r}" for t, d, b in tr[-last:])

    def close(self) -> None:
        for p in self.procs:
            p.kill()
        if self.peer is not None:
            self.peer.close()
        self.ctl.close()
        self.srv.close()
        self.smsc.close()
        if self.quiet:
            return
        print("--- device output (tail) ---\n" + self.output()[-3000:])
        print("--- UART (tail) ---\n" + self.uart())


def fault_bits(hb: dict) -> int:
    """The modem fault code of a decoded HEARTBEAT (SPEC §8.3 status bits 4-6, §9)."""
    from auxilio.protocol import codec

    return codec.MODEM_FAULTS.index(hb["modem_fault"])
