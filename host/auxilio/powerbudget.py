"""Battery life projection: datasheet currents (boards/) x what the firmware spends per heartbeat.

``measure()`` runs the real firmware on a virtual board with an emulated modem
(LTE-M timing by default) against a broker and an acking C4 peer, and reads
the emulator's books for a few heartbeat cycles, each from one PSM entry to
the next: seconds the modem spent RRC-connected, awake (registered, not
connected) and in eDRX, its transmit airtime, GNSS on-time, and the UART busy
window (when the MCU was awake talking to the modem).

``project()`` multiplies those by the currents in the board's and the modem
profile's ``power_model`` (cited there) for a real heartbeat interval: the
rest of the interval is PSM for the modem and deep sleep (or, as boards ship
today with ``deep_sleep_idle_s`` 0, an idle but awake CPU) for the MCU.
"""

from __future__ import annotations

import json
import logging
import re
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from auxilio import modems
from auxilio.errors import AuxilioError, UsageError

log = logging.getLogger(__name__)

TARGET_DAYS = 30  # issue 12: at least 30 days on the bracelet's 500 mAh
# Deep-sleep wake to the firmware talking to the modem: ROM boot, MicroPython
# start, imports, config. An estimate for frozen bytecode on an ESP32-C3; measure
# on hardware (it is not emulated: the unix port does not sleep).
MCU_WAKE_S = 1.0
EMULATED_HEARTBEAT_S = 30  # long enough for LTE-M's whole awake tail inside one beat
MODEM_STATES = ("connected", "awake", "edrx", "booting")


@dataclass
class Cycle:
    """One heartbeat cycle as the modem emulator booked it (PSM entry to PSM entry)."""

    seconds: dict[str, float]  # modem seconds per state, PSM excluded
    airtime_s: float  # uplink transmit time at the profile's uplink rate
    gnss_s: float
    mcu_awake_s: float  # UART busy window: first byte to last byte of the cycle
    commands: dict[str, int] = field(default_factory=dict)
    bytes: dict[str, int] = field(default_factory=dict)
    rrc_inactivity_s: float = 0.0  # the emulated network's RRC release timer (the tail)

    @property
    def modem_awake_s(self) -> float:
        return sum(v for k, v in self.seconds.items() if k != "psm")

    @staticmethod
    def mean(cycles: list[Cycle]) -> Cycle:
        n = len(cycles)
        if not n:
            raise AuxilioError("no heartbeat cycle was measured")
        keys = {k for c in cycles for k in c.seconds}
        cmds = {k for c in cycles for k in c.commands}
        byts = {k for c in cycles for k in c.bytes}
        return Cycle(
            {k: sum(c.seconds.get(k, 0.0) for c in cycles) / n for k in keys},
            sum(c.airtime_s for c in cycles) / n,
            sum(c.gnss_s for c in cycles) / n,
            sum(c.mcu_awake_s for c in cycles) / n,
            {k: round(sum(c.commands.get(k, 0) for c in cycles) / n, 1) for k in cmds},
            {k: round(sum(c.bytes.get(k, 0) for c in cycles) / n, 1) for k in byts},
            max(c.rrc_inactivity_s for c in cycles),
        )


def cycles_from(books: list[dict[str, Any]]) -> list[Cycle]:
    """Per-cycle differences between consecutive PSM-entry snapshots (EmulatedModem.cycles)."""
    out = []
    for a, b in zip(books, books[1:], strict=False):
        secs = {
            k: b["seconds"].get(k, 0.0) - a["seconds"].get(k, 0.0)
            for k in b["seconds"]
            if k != "psm" and k != "off"
        }
        first, last = b.get("uart_first"), b.get("uart_last")
        out.append(
            Cycle(
                {k: v for k, v in secs.items() if v > 1e-6},
                b["airtime_s"] - a["airtime_s"],
                b["gnss_s"] - a["gnss_s"],
                max(0.0, last - first) if first is not None and last is not None else 0.0,
                {k: b["commands"][k] - a["commands"].get(k, 0) for k in b["commands"]}
                if b["commands"]
                else {},
                {k: b["bytes"][k] - a["bytes"].get(k, 0) for k in b["bytes"]},
            )
        )
    for c in out:
        c.commands = {k: v for k, v in c.commands.items() if v}
    return out


def parse_interval(text: str) -> int:
    """'15m', '900', '900s', '1h' -> seconds."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", str(text))
    if not m:
        raise UsageError(f"heartbeat must look like 900, 900s, 15m or 1h, not {text!r}")
    v = float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[m.group(2)]
    if not 10 <= v <= 65535:
        raise UsageError("heartbeat must be between 10 s and 65535 s (HEARTBEAT interval_s is u16)")
    return int(v)


# ---------------------------------------------------------------- measuring ----


def measure(
    board: str,
    *,
    profile: str | None = None,
    timing: str = "lte-m",
    beats: int = 3,
    heartbeat_s: int = EMULATED_HEARTBEAT_S,
    broker_url: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> list[Cycle]:
    """Run the firmware with an emulated modem and book `beats` heartbeat cycles."""
    from auxilio.emulator.vdevice import VirtualDevice
    from auxilio.provision.config import new_config
    from auxilio.testing.peer import C4Peer

    say = progress or (lambda _m: None)
    from auxilio.boards import load_board as _load

    name = profile or modems.board_profile(_load(board).data)
    if name is None:
        raise UsageError(f"board {board} has no modem to measure")
    if not (modems.load_profile(name).get("network") or {}).get("psm"):
        raise UsageError(
            f"the {name} profile has no PSM: heartbeat cycles are booked from one PSM entry "
            "to the next, so there is nothing to measure (a mains-powered board?)"
        )
    broker = None
    if broker_url is None:
        from auxilio.broker.mosquitto import Mosquitto, mosquitto_binary

        if mosquitto_binary() is None:
            raise AuxilioError("measuring needs mosquitto (apt-get install mosquitto) or --broker")
        broker = Mosquitto()
        broker.start()
        broker_url = broker.url
    from auxilio.broker.url import parse_broker_url

    upstream = parse_broker_url(broker_url)
    tmp = tempfile.TemporaryDirectory(prefix="auxilio-power-")
    vd = None
    peer = None
    try:
        from auxilio.boards import load_board

        b = load_board(board)
        cfg = new_config(b.role, broker_url)
        # Production behaviour, shorter beat: one GNSS refresh per beat, as at 15 min.
        cfg.update(heartbeat_s=heartbeat_s, tunables={"gnss_every_s": heartbeat_s})
        vd = VirtualDevice(
            b,
            Path(tmp.name) / "power.img",
            config=cfg,
            broker_url=broker_url,
            format=True,
            modem=profile or True,
            lte_timing=timing,
            name=f"power-{int(time.time())}",
        )
        peer = C4Peer((upstream.host, upstream.port), {vd.device: cfg["secret"]})
        say(f"measuring {beats} heartbeat cycles of the {board} firmware over emulated {timing}")
        vd.start()
        assert vd.modem is not None
        need = beats + 1  # the first PSM entry ends the boot, not a heartbeat
        deadline = time.monotonic() + 120 + (need + 1) * (heartbeat_s + 30)
        while len(vd.modem.cycles) < need:
            if time.monotonic() > deadline:
                raise AuxilioError(
                    f"the modem reached PSM {len(vd.modem.cycles)} times, {need} needed: "
                    "is PSM supported by this profile (power_model, network.psm)?"
                )
            time.sleep(0.5)
        cycles = cycles_from(vd.modem.cycles[-need:])
        for c in cycles:
            c.rrc_inactivity_s = vd.modem.timing.rrc_inactivity_s
        return cycles
    finally:
        if peer is not None:
            peer.close()
        if vd is not None:
            vd.close()
        if broker is not None:
            broker.close()
        tmp.cleanup()


# --------------------------------------------------------------- projecting ----


@dataclass
class Line:
    what: str
    seconds: float  # per heartbeat
    ma: float
    source: str

    @property
    def mas(self) -> float:
        return self.seconds * self.ma


@dataclass
class Projection:
    board: str
    modem: str
    heartbeat_s: int
    mcu_sleep: str  # "deep" (between beats) or "awake" (deep_sleep_idle_s = 0)
    lines: list[Line]
    battery_mah: float | None
    cycle: Cycle
    note: str = ""

    @property
    def mas_per_beat(self) -> float:
        return sum(line.mas for line in self.lines)

    @property
    def average_ma(self) -> float:
        return self.mas_per_beat / self.heartbeat_s

    @property
    def days(self) -> float | None:
        if not self.battery_mah:
            return None
        return self.battery_mah / self.average_ma / 24.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "board": self.board,
            "modem": self.modem,
            "heartbeat_s": self.heartbeat_s,
            "mcu_sleep": self.mcu_sleep,
            "battery_mah": self.battery_mah,
            "average_ma": round(self.average_ma, 4),
            "mas_per_beat": round(self.mas_per_beat, 1),
            "days": None if self.days is None else round(self.days, 1),
            "target_days": TARGET_DAYS,
            "modem_awake_s_per_beat": round(self.cycle.modem_awake_s, 2),
            "mcu_awake_s_per_beat": round(self.cycle.mcu_awake_s, 2),
            "note": self.note,
            "lines": [
                {**asdict(line), "mas": round(line.mas, 2)} | {"seconds": round(line.seconds, 3)}
                for line in self.lines
            ],
        }


def project(
    board: dict[str, Any],
    cycle: Cycle,
    heartbeat_s: int,
    mcu_sleep: str = "deep",
    rrc_tail_s: float | None = None,
) -> Projection:
    """Charge per heartbeat and battery life for one measured (or mean) cycle.

    rrc_tail_s: what if the network released the RRC connection this long after
    the last packet instead of its inactivity timer (release assistance, 3GPP
    Rel-14 RAI, or a shorter operator setting).
    """
    if rrc_tail_s is not None:
        cut = max(0.0, cycle.rrc_inactivity_s - rrc_tail_s)
        secs = dict(cycle.seconds)
        secs["connected"] = max(0.0, secs.get("connected", 0.0) - cut)
        cycle = Cycle(**{**asdict(cycle), "seconds": secs})
    name = modems.board_profile(board)
    if name is None:
        raise UsageError(f"board {board.get('name')!r} has no modem: no LTE power model")
    prof = modems.load_profile(name)
    pm = prof.get("power_model") or {}
    bm = board.get("power_model") or {}
    mcu = bm.get("mcu") or {}
    if not pm or not mcu:
        raise UsageError("the board or its modem profile has no power_model with currents")
    src_m = pm.get("source", "modem profile")
    src_b = mcu.get("source", "board data")
    lines = []
    sec = cycle.seconds
    connected = sec.get("connected", 0.0)
    lines.append(
        Line(
            "modem RRC-connected (receive/idle in connection)", connected, pm["connected_ma"], src_m
        )
    )
    extra_tx = pm["transmit_ma"] - pm["connected_ma"]
    lines.append(
        Line("modem transmitting (extra over connected)", cycle.airtime_s, extra_tx, src_m)
    )
    lines.append(
        Line(
            "modem awake, registered, no RRC connection",
            sec.get("awake", 0.0) + sec.get("booting", 0.0),
            pm["awake_ma"],
            src_m,
        )
    )
    if sec.get("edrx"):
        lines.append(
            Line("modem in eDRX", sec["edrx"], pm.get("edrx_ma") or pm["idle_drx_ma"], src_m)
        )
    if cycle.gnss_s:
        lines.append(Line("GNSS receiver on", cycle.gnss_s, pm["gnss_ma"], src_m))
    rest = max(0.0, heartbeat_s - cycle.modem_awake_s)
    if pm.get("psm_ma") is not None:
        lines.append(Line("modem in PSM", rest, pm["psm_ma"], src_m))
    else:
        lines.append(
            Line("modem idle in DRX sleep (no PSM on this module)", rest, pm["idle_drx_ma"], src_m)
        )
    if mcu_sleep == "deep":
        awake = min(heartbeat_s, cycle.mcu_awake_s + MCU_WAKE_S)
        lines.append(
            Line(
                "MCU active (firmware awake for the beat, incl. wake-up)",
                awake,
                mcu["active_ma"],
                src_b,
            )
        )
        lines.append(Line("MCU deep sleep", heartbeat_s - awake, mcu["deep_sleep_ma"], src_b))
    else:
        lines.append(
            Line(
                "MCU awake all the time (deep_sleep_idle_s = 0)",
                heartbeat_s,
                mcu["active_ma"],
                src_b,
            )
        )
    q = bm.get("board_quiescent_ma") or 0.0
    lines.append(
        Line(
            "board quiescent (regulator, battery divider)",
            heartbeat_s,
            q,
            bm.get("board_quiescent_note", "board data"),
        )
    )
    return Projection(
        str(board.get("name")),
        str(prof.get("model")),
        heartbeat_s,
        mcu_sleep,
        lines,
        bm.get("battery_mah"),
        cycle,
        ""
        if rrc_tail_s is None
        else f"what-if: RRC released {rrc_tail_s:g} s after the last packet",
    )


def save(cycles: list[Cycle], path: str | Path) -> None:
    Path(path).write_text(json.dumps([asdict(c) for c in cycles], indent=1))


def load(path: str | Path) -> list[Cycle]:
    try:
        data = json.loads(Path(path).read_text())
        return [Cycle(**d) for d in data]
    except (OSError, ValueError, TypeError) as exc:
        raise UsageError(f"{path}: not a saved measurement ({exc})") from None
