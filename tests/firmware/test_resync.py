"""Counter resynchronisation (SPEC §12.1, §12.4): the real firmware under micropython, a real
mosquitto and the real gateway (issue 8 §5).

A device whose counters fell behind the C4 (a known secret restarted on a fresh
filesystem by an old host tool) or were pushed ahead of it (a frame signed with
a leaked key) is answered rejected/collision or rejected/replay with the C4's
high-water mark; it resynchronises once, above it, and its alert is stored.
Everything is read back: the frames on the broker (decoded with the device
key), the device's state events, and the registry rows the gateway wrote.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from auxilio.protocol import codec
from auxilio.testing.c4 import C4
from auxilio.testing.control import ControlServer
from auxilio.testing.mosquitto import Mosquitto
from auxilio.testing.peer import C4Peer

from tests.firmware.fwkit import DeviceProc, device_id, make_root

pytestmark = pytest.mark.integration

# Retry timing of these devices: short, so the backoff is observable in seconds.
RETRY_BASE_MS = 400
RETRY_CAP_MS = 1600
HOLD_MS = 2300  # past the bracelet's 2 s alert gesture
# A frame signed with a leaked key, this far above the C4's high-water mark (issue 8 §5).
LEAKED_JUMP = 1 << 20
WAIT_S = 40.0


class Bracelet:
    """One enrolled bracelet root, its firmware processes and a broker observer."""

    def __init__(self, c: C4, mq: Mosquitto, tmp: Path) -> None:
        self.c4 = c
        self.dev = device_id(1)
        self.secret = c.add_device(self.dev)
        self.root = tmp / "dev"
        make_root(
            self.root,
            mq.url,
            secret=self.secret.hex(),
            counter_floor=c.registry.counter_floor(self.dev),  # SPEC §12.1
            tunables={"retry_base_ms": RETRY_BASE_MS, "retry_cap_ms": RETRY_CAP_MS},
        )
        # Observes (never answers): the real gateway is the only C4 here.
        self.peer = C4Peer(
            mq,
            {self.dev: self.secret},
            mode="none",
            topics=[f"auxilio/v1/{self.dev}/{leaf}" for leaf in ("up", "down")],
        )
        self.procs: list[DeviceProc] = []
        self.ctl = ControlServer()

    def boot(self) -> ControlServer:
        """Start the firmware with a fresh control channel; wait until its BOOT is acked."""
        self.ctl.close()
        self.ctl = ControlServer()
        self.procs.append(DeviceProc(self.root, self.ctl))
        self.ctl.wait_event(timeout=WAIT_S, ev="state", name="acked")
        return self.ctl

    def power_cut(self) -> None:
        self.procs[-1].kill()

    def acks(self, counter: int) -> list[dict]:
        return [f for f in self.peer.of("ACK") if f["counter"] == counter]

    def close(self) -> None:
        for p in self.procs:
            p.kill()
        print("--- device output (tail) ---\n" + "\n".join(p.output() for p in self.procs)[-4000:])
        self.peer.close()
        self.ctl.close()


@pytest.fixture
def bracelet(c4: Callable[..., C4], mqtt_broker: Mosquitto, tmp_path: Path) -> Iterator[Bracelet]:
    b = Bracelet(c4(), mqtt_broker, tmp_path)
    try:
        yield b
    finally:
        b.close()


def _alert_sends(b: Bracelet, counter: int) -> list[dict]:
    return [f for f in b.peer.of("ALERT") if f["counter"] == counter]


def test_collision_after_a_counter_restart_resyncs_once_and_is_stored(bracelet: Bracelet) -> None:
    b, c = bracelet, bracelet.c4
    ctl = b.boot()
    ctl.hold(HOLD_MS)
    first = c.wait(lambda: c.alerts(b.dev, "ALERT"), what="the first alert row")[0]
    ctl.wait_event(timeout=WAIT_S, ev="state", name="acked", counter=first["counter"])
    b.power_cut()
    # An old host tool re-flashes the bracelet: a fresh filesystem, the same secret,
    # no counter floor. Its counters restart at 1, below what the C4 has stored.
    shutil.rmtree(b.root / "data")
    (b.root / "data").mkdir()
    cfg = json.loads((b.root / "config.json").read_text())
    cfg["counter_floor"] = 0
    (b.root / "config.json").write_text(json.dumps(cfg))
    hw = c.high_water(b.dev)
    assert hw >= first["counter"]

    seen = len(b.peer.of())
    ctl = b.boot()
    ctl.hold(HOLD_MS)
    resync = ctl.wait_event(timeout=WAIT_S, ev="state", name="resync")
    fresh = resync["counter"]
    assert fresh > hw  # one step above the C4's high-water mark
    ctl.wait_event(timeout=WAIT_S, ev="state", name="acked", counter=fresh)
    ctl.wait_event(timeout=WAIT_S, ev="haptic", pattern="double")
    assert "long" not in [e["pattern"] for e in ctl.matching(ev="haptic")]
    # The C4 answered the reused counter rejected/collision with its high-water mark...
    reused = [f for f in b.peer.of()[seen:] if f["type"] == "ALERT"][0]
    assert reused["counter"] == first["counter"]  # the restarted counters reached it
    (nak,) = [a for a in b.acks(first["counter"]) if a["disposition"] == "rejected"]
    assert (nak["acked_type"], nak["reason"], nak["high_water"]) == ("ALERT", "collision", hw)
    # ...kept the colliding frame as evidence, never answered it from the old row...
    (ev,) = c.events(b.dev, "COUNTER_COLLISION")
    d = ev["detail"]
    assert (d["counter"], d["type"], d["high_water"]) == (first["counter"], "ALERT", hw)
    assert bytes.fromhex(d["raw_hex"]) == reused["raw"]
    # ...and stored the re-sent alert as a new one: same content, fresh counter.
    rows = c.alerts(b.dev, "ALERT")
    assert [r["counter"] for r in rows] == [first["counter"], fresh]
    assert rows[1]["disposition"] == "received" and rows[1]["attending_at"] is None
    (resent,) = _alert_sends(b, fresh)
    same = ("lat_e7", "lon_e7", "battery", "bearer", "pressed_at")
    assert {k: resent[k] for k in same} == {k: reused[k] for k in same}
    assert rows[1]["pressed_at"] is not None and rows[1]["pressed_at"] != rows[0]["pressed_at"]
    assert len(ctl.matching(ev="state", name="resync")) == 1
    assert resent["at"] - reused["at"] >= RETRY_BASE_MS / 2 / 1000  # after the normal backoff


def test_leaked_key_counter_jump_then_one_resync_with_backoff(bracelet: Bracelet) -> None:
    b, c = bracelet, bracelet.c4
    ctl = b.boot()
    h = c.high_water(b.dev)
    assert h > 0
    # Somebody holding the device key signs a HEARTBEAT far above the device's counters.
    jump = h + LEAKED_JUMP
    forged = codec.encode(
        {
            "type": "HEARTBEAT",
            "device": b.dev,
            "counter": jump,
            "timestamp": int(time.time()),
            "battery": 90,
            "rssi": -60,
            "bearer": "wifi",
            "outbox": 0,
            "fw": "0.1.0",
            "status": 0,
            "interval_s": 900,
        },
        b.secret,
    )
    b.peer.client.publish(f"auxilio/v1/{b.dev}/up", forged, qos=1).wait_for_publish(10)
    c.wait(lambda: c.high_water(b.dev) == jump, what="the forged heartbeat to be accepted")
    (ev,) = c.wait(lambda: c.events(b.dev, "COUNTER_JUMP"), what="COUNTER_JUMP")
    assert (ev["detail"]["from"], ev["detail"]["to"], ev["detail"]["type"]) == (
        h,
        jump,
        "HEARTBEAT",
    )

    mark = ctl.mark()
    ctl.hold(HOLD_MS)
    resync = ctl.wait_event(timeout=WAIT_S, ev="state", name="resync")
    fresh = resync["counter"]
    assert fresh > jump
    ctl.wait_event(timeout=WAIT_S, ev="state", name="acked", counter=fresh)
    ctl.wait_event(timeout=WAIT_S, ev="haptic", pattern="double")
    queued = [e["counter"] for e in ctl.matching(since=mark, name="queued")]
    assert len(queued) == 2 and queued[1] == fresh  # the press, then one re-queue
    stale = queued[0]
    assert stale < jump - 63  # below the C4's replay window
    (nak,) = [a for a in b.acks(stale) if a["disposition"] == "rejected"]
    assert (nak["reason"], nak["high_water"]) == ("replay", jump)
    (row,) = c.alerts(b.dev, "ALERT")
    assert (row["counter"], row["disposition"]) == (fresh, "received")
    # No storm: one resync (one counter write), a bounded number of transmissions,
    # and the re-send waited for the normal backoff (equal jitter: >= base / 2).
    assert len(ctl.matching(ev="state", name="resync")) == 1
    old_sends, new_sends = _alert_sends(b, stale), _alert_sends(b, fresh)
    assert 1 <= len(old_sends) <= 2 and len(new_sends) == 1, (old_sends, new_sends)
    gap_s = new_sends[0]["at"] - old_sends[-1]["at"]
    assert gap_s >= RETRY_BASE_MS / 2 / 1000, gap_s
    assert len(b.peer.of("ALERT")) == len(old_sends) + len(new_sends)
