# modem-check on the device (MicroPython, not CPython): run by `auxilio modem-check` over mpremote.
#
# Builds the board's Modem from the deployed board.json / config.json /
# modem.json with the board's own HAL (real UART and pins on an ESP32; the
# emulator's wires on a virtual board) and walks it through the checks a
# technician needs, one JSON line per check on stdout: "MC {...}". Never
# prints a location: a GNSS check reports fix / HDOP / time to fix only.
# A friend of firmware/modem.py: it calls the driver's bring-up steps in order.
# ARGS is prepended by the host: {"sms_to", "tcp", "attach_s", "gnss_s", "root"}.

import asyncio
import json
from time import ticks_diff, ticks_ms

import auxcodec as codec
import hal as hal_mod
import transport
from config import Config, ConfigError, join, read_json

A = ARGS  # noqa: F821 - defined by the host in front of this script


def report(name, status, detail="", hint="", t0=None):
    d = {"check": name, "status": status, "detail": detail, "hint": hint}
    if t0 is not None:
        d["seconds"] = ticks_diff(ticks_ms(), t0) / 1000
    print("MC " + json.dumps(d))


async def checks(m, cfg):
    from modem import FAULTS, OK, field

    asyncio.create_task(m._keep(m.at.run))
    asyncio.create_task(m._keep(m._sockets))
    t0 = ticks_ms()
    if not await m._power_on():
        report(
            "modem",
            "fail",
            "no answer to AT, even after PWRKEY",
            "check the UART wiring, the supply and PWRKEY",
            t0,
        )
        return
    await m._init()
    model = ""
    if await m._cmd(b"AT+CGMR") == OK and m.at.info:
        model = m.at.info[-1].decode()
    report("modem", "ok", (m.p.get("model") or "") + (" " + model if model else ""), "", t0)

    t0 = ticks_ms()
    if not await m._sim():
        hints = {
            1: "insert a SIM (or reseat it)",
            2: "set lte.sim_pin in config.json, or unlock the SIM",
        }
        report("sim", "fail", FAULTS[m.fault], hints.get(m.fault, "replace the SIM"), t0)
        return
    report("sim", "ok", "ready", "", t0)

    t0 = ticks_ms()
    await m._cmd(m.p["pdp_define"].replace("{apn}", cfg.apn or ""))
    for c in m.p.get("pdp_setup", ()):
        await m._cmd(c.replace("{apn}", cfg.apn or ""))
    ok = await m._register(int(A["attach_s"] * 1000))
    if not ok:
        hints = {
            3: "the network refuses this SIM: check its plan and that the IMSI is activated",
            4: "no service: move to a window or outdoors, check the antenna and the bands",
        }
        report("registration", "fail", FAULTS[m.fault], hints.get(m.fault, ""), t0)
        await signal(m)
        return
    op = ""
    if await m._cmd(b"AT+COPS?", 5000, b"+COPS:") == OK and m.at.info:
        v = field(m.at.info[-1], 2)
        op = v.decode() if v else ""
    report(
        "registration",
        "ok",
        ("roaming" if m.roaming else "home") + (" " + op if op else ""),
        "",
        t0,
    )
    await signal(m)

    t0 = ticks_ms()
    if not await m._data():
        report(
            "data",
            "fail",
            "PDP context refused (SMS may still work)",
            "check lte.apn in config.json and the SIM's data plan",
            t0,
        )
    else:
        host, port = A["tcp"] or (cfg.host, cfg.port)
        try:
            s = await m.dial(host, port, 30000)
            s.close()
            await asyncio.sleep_ms(300)
            report("data", "ok", "TCP to %s:%d opened" % (host, port), "", t0)
        except OSError as e:
            report(
                "data",
                "fail",
                "TCP to %s:%d failed (%s)" % (host, port, e.args[0]),
                "the APN gives no route to the broker: check the APN and firewall",
                t0,
            )

    if m.has_gnss:
        t0 = ticks_ms()
        got = await m.gnss_fix(A["gnss_s"])
        if got:
            report("gnss", "ok", "fix, accuracy %d m" % m._fix[2], "", t0)
        else:
            report(
                "gnss",
                "warn",
                "no fix in %d s" % A["gnss_s"],
                "try outdoors with open sky; check the GNSS antenna",
                t0,
            )
    else:
        report("gnss", "skip", "this modem has no GNSS")

    if A["sms_to"]:
        t0 = ticks_ms()
        if await m.sms(A["sms_to"], "AUXILIO TEST " + cfg.device_str):
            report("sms", "ok", "accepted by the SMSC for " + A["sms_to"], "", t0)
        else:
            report(
                "sms",
                "fail",
                "refused (%d)" % m.at.err,
                "check the SIM's SMS service and the SMSC number (AT+CSCA?)",
                t0,
            )
    else:
        report("sms", "skip", "no --sms-to number given")
    a = m.at.stats()
    report(
        "at",
        "ok" if not a["garbage"] else "warn",
        "%d commands, %d timeouts, %d garbage lines" % (a["commands"], a["timeouts"], a["garbage"]),
        "" if not a["garbage"] else "noise on the UART: check ground and baud rate",
    )


async def signal(m):
    dbm = await m._signal()
    if dbm is None:
        report("signal", "fail", "unknown", "no signal: check the antenna connector")
    elif dbm >= -100:
        report("signal", "ok", "%d dBm" % dbm)
    elif dbm >= -110:
        report(
            "signal",
            "warn",
            "%d dBm (weak)" % dbm,
            "expect slow attach; a better antenna position helps",
        )
    else:
        report("signal", "fail", "%d dBm (too weak)" % dbm, "relocate the device or the antenna")


def main():
    root = A["root"]
    try:
        cfg = Config(root, codec)
        board = read_json(join(root, "board.json"), "board.json")
    except ConfigError as e:
        report("config", "fail", str(e), "deploy board.json, config.json and modem.json first")
        return
    if cfg.modem is None:
        report("modem", "fail", "board.json names no modem", "this board has no modem to check")
        return
    h = hal_mod.make(board, 0, None)
    board = None
    m = transport.make_modem(cfg, print, h)
    if m is None:
        report(
            "modem",
            "fail",
            "modem.json missing or unreadable",
            "deploy the modem profile (modem.json)",
        )
        return
    asyncio.run(checks(m, cfg))
    print("MC-DONE")


main()
