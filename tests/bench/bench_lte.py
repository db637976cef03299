"""LTE figures: battery life, press->SMS delivered, press->acked vs the network RTT, bytes per beat.

Everything runs the real firmware under micropython against a real mosquitto
and the modem emulator with the LTE-M preset (auxilio.emulator.radio.LTE_M:
60 ms each way, 150 ms RRC setup, 10 s RRC inactivity, SMS submit 1.5 s and
SMSC delivery 3 s; the sources are in radio.py). Baselines measured or set in
the same run: the emulated network round trip for the alert latency, and a
JSON-over-MQTT encoding of the same content for the data cost.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path

from auxilio import powerbudget
from auxilio.boards import load_board
from auxilio.emulator import radio
from auxilio.protocol import codec
from auxilio.testing.wait import wait_for

from tests.conftest import run_micropython
from tests.firmware.fwkit import broker, build_mpy
from tests.modem.ltekit import LteRig

BEATS = 3  # heartbeat cycles booked for the power model
AWAKE_ALERTS = 5  # alerts timed with the session up
PSM_ALERTS = 2  # alerts timed from PSM (wake, attach check, connect, publish, ack)
HEARTBEAT_TARGET_S = 900  # the bracelet's 15 min
FLEET = 500  # devices on the municipal data plan
HEADERS = 40  # IPv4 + TCP bytes per segment (as the emulator books them)

_RAM = """
import gc, json
gc.collect()
a = gc.mem_alloc()
import at, modem, transport, hal.wire
gc.collect()
print("J " + json.dumps({"import_bytes": gc.mem_alloc() - a}))
"""


def _ram(tmp: Path) -> dict:
    mpy = build_mpy(tmp / "mpy")
    sizes = {
        p.stem: p.stat().st_size
        for p in mpy.rglob("*.mpy")
        if p.stem in ("at", "modem", "transport", "wire")
    }
    r = run_micropython(_RAM, path=[mpy], timeout=60)
    line = next(ln for ln in r.stdout.splitlines() if ln.startswith("J "))
    return {
        "lte_mpy_bytes": sizes,
        "lte_import_heap_bytes_64bit": json.loads(line[2:])["import_bytes"],
    }


def _power() -> tuple[dict, powerbudget.Cycle]:
    cycles = powerbudget.measure("bracelet-c3", timing="lte-m", beats=BEATS)
    mean = powerbudget.Cycle.mean(cycles)
    board = load_board("bracelet-c3").data
    deep = powerbudget.project(board, mean, HEARTBEAT_TARGET_S, "deep")
    rai = powerbudget.project(board, mean, HEARTBEAT_TARGET_S, "deep", rrc_tail_s=0.0)
    awake = powerbudget.project(board, mean, HEARTBEAT_TARGET_S, "awake")
    return {
        "beat_modem_awake_s": round(mean.modem_awake_s, 2),
        "beat_rrc_connected_s": round(mean.seconds.get("connected", 0.0), 2),
        "beat_mcu_awake_s": round(mean.mcu_awake_s, 2),
        "beat_mas": round(deep.mas_per_beat, 1),
        "battery_days_15min_deep_sleep": round(deep.days or 0, 1),
        "battery_days_15min_release_assistance": round(rai.days or 0, 1),
        "battery_days_15min_mcu_awake": round(awake.days or 0, 2),
        "battery_target_days": powerbudget.TARGET_DAYS,
    }, mean


def _alerts(mq, tmp: Path) -> dict:  # noqa: ANN001
    out: dict = {}
    rtt_ms = radio.LTE_M.uplink_ms + radio.LTE_M.downlink_ms
    # Session up (awake after an alert): press -> acked on the device's own clock.
    rig = LteRig(mq, tmp / "awake", timing=radio.LTE_M, quiet=True)
    try:
        rig.start(
            fast=False, tunables={"psm_after_alert_s": 600, "gnss_every_s": 0}, heartbeat_s=3600
        )
        lat = []
        for _ in range(AWAKE_ALERTS + 1):
            a = rig.alert(timeout=60)
            acked = rig.wait_state("acked", a["counter"], timeout=60)
            queued = rig.ctl.matching(ev="state", name="queued", counter=a["counter"])[0]
            lat.append((acked["us"] - queued["us"]) / 1000.0)
        lat = lat[1:]  # the first one may still carry the boot's session setup
        out["alert_acked_awake_ms_p50"] = round(statistics.median(lat), 1)
        out["alert_acked_awake_ms_max"] = round(max(lat), 1)
    finally:
        rig.close()
    out["network_rtt_ms"] = rtt_ms
    out["alert_acked_awake_over_rtt"] = round(out["alert_acked_awake_ms_p50"] / rtt_ms, 2)
    # From PSM: each alert wakes the module, checks the link, connects and publishes.
    rig = LteRig(mq, tmp / "psm", timing=radio.LTE_M, quiet=True)
    costs = []
    try:
        rig.start(
            fast=False, tunables={"psm_after_alert_s": 0, "gnss_every_s": 0}, heartbeat_s=3600
        )
        lat = []
        for _ in range(PSM_ALERTS):
            wait_for(lambda: rig.modem.power == "psm", 60, "PSM")
            a = rig.alert(timeout=60)
            acked = rig.wait_state("acked", a["counter"], timeout=60)
            queued = rig.ctl.matching(ev="state", name="queued", counter=a["counter"])[0]
            lat.append((acked["us"] - queued["us"]) / 1000.0)
            k = len(rig.modem.cycles)
            wait_for(lambda k=k: len(rig.modem.cycles) > k, 60, "PSM after the alert")
            costs.append(powerbudget.cycles_from(rig.modem.cycles[-2:])[0])
        out["alert_acked_from_psm_ms_p50"] = round(statistics.median(lat), 1)
        out["alert_acked_from_psm_over_rtt"] = round(statistics.median(lat) / rtt_ms, 2)
    finally:
        rig.close()
    return out | {"_alert_cycle": powerbudget.Cycle.mean(costs)}


def _sms(mq, tmp: Path) -> dict:  # noqa: ANN001
    rig = LteRig(mq, tmp / "sms", timing=radio.LTE_M, scenario="data-down", quiet=True)
    try:
        rig.start(fast=False, wait_boot=False, sms={"budget_s": 20}, tunables={"gnss_every_s": 0})
        wait_for(lambda: rig.status()["modem"]["fault"] == "data_down", 60, "data down")
        t_press = time.time()
        rig.ctl.hold(2300)
        sms = rig.smsc.wait(timeout=90)[0]
        return {
            "press_to_sms_delivered_s": round(sms.delivered_at - t_press, 2),
            "sms_budget_s": 20,
            "sms_emulated_submit_s": radio.LTE_M.sms_submit_s,
            "sms_emulated_delivery_s": radio.LTE_M.sms_deliver_s,
            "alert_hold_s": 2.0,
        }
    finally:
        rig.close()


def _json_size(ftype: str) -> tuple[int, int]:
    """(binary frame bytes, JSON bytes) for the same content, signed the same way."""
    secret = bytes(32)
    base = {"device": "0938-NKRT", "counter": 123456, "timestamp": 1764355200, "clock_synced": True}
    if ftype == "ALERT":
        fields = {
            "lat_e7": 194326080,
            "lon_e7": -991332090,
            "accuracy_m": 6,
            "fix_age_s": 40,
            "battery": 87,
            "rssi": -85,
            "bearer": "lte",
        }
    else:
        fields = {
            "battery": 87,
            "rssi": -85,
            "bearer": "lte",
            "outbox": 0,
            "fw": "0.1.0",
            "status": 8,
            "interval_s": 900,
        }
    frame = codec.encode({"type": ftype, **base, **fields}, secret)
    doc = {"v": 1, "type": ftype, **base, **fields, "mac": "A" * 22}  # 128-bit tag, base64
    if ftype == "ALERT":
        doc["lat"], doc["lon"] = 19.432608, -99.133209  # a JSON design writes degrees
        del doc["lat_e7"], doc["lon_e7"]
    return len(frame), len(json.dumps(doc, separators=(",", ":")))


def _costs(beat: powerbudget.Cycle, alert: powerbudget.Cycle) -> dict:
    out: dict = {}
    per_month_beats = 30 * 24 * 3600 / HEARTBEAT_TARGET_S
    for name, c, ftype in (("heartbeat", beat, "HEARTBEAT"), ("alert", alert, "ALERT")):
        b = c.bytes
        payload = b.get("up", 0) + b.get("down", 0)
        segs = b.get("up_segments", 0) + b.get("down_segments", 0)
        radio_bytes = payload + HEADERS * segs
        binary, js = _json_size(ftype)
        out[f"{name}_at_commands"] = round(sum(c.commands.values()), 1)
        out[f"{name}_tcp_payload_bytes"] = round(payload)
        out[f"{name}_cellular_bytes"] = round(radio_bytes)
        out[f"{name}_cellular_bytes_json_design"] = round(radio_bytes - binary + js)
        out[f"{name}_frame_bytes"] = binary
        out[f"{name}_json_bytes"] = js
    mb = out["heartbeat_cellular_bytes"] * per_month_beats * FLEET / 1e6
    mb_json = out["heartbeat_cellular_bytes_json_design"] * per_month_beats * FLEET / 1e6
    out["fleet_500_heartbeats_mb_per_month"] = round(mb, 1)
    out["fleet_500_heartbeats_mb_per_month_json_design"] = round(mb_json, 1)
    return out


def run() -> dict:
    figures: dict = {}
    with tempfile.TemporaryDirectory(prefix="auxilio-ltebench-") as td:
        tmp = Path(td)
        figures.update(_ram(tmp))
        power, beat = _power()
        figures.update(power)
        mq = broker()
        try:
            alerts = _alerts(mq, tmp)
            alert = alerts.pop("_alert_cycle")
            figures.update(alerts)
            figures.update(_sms(mq, tmp))
        finally:
            mq.close()
    figures.update(_costs(beat, alert))
    figures["network"] = radio.LTE_M.name
    return figures


if __name__ == "__main__":
    print(json.dumps(run(), indent=1))
