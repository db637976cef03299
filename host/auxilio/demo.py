"""The end-to-end demo: broker, registry, gateway and two devices running the real firmware under micropython.

``run_demo(once)`` starts mosquitto (or the embedded amqtt broker), a SQLite
registry in a temp dir and the gateway; provisions a bracelet and a street
button; runs both with the real firmware in one ``micropython`` process
(``app.run_fleet``), driven through the host HAL control channel; presses
each; checks each alert was verified, stored, acked (the device says so) and
attended (the long pulse); stops everything. Without the firmware or
micropython it falls back to CPython-simulated devices and says so.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from auxilio.emulator.control import ControlServer
from auxilio.i18n import N_, _
from auxilio.protocol import codec
from auxilio.provision.config import device_config
from auxilio.provision.identity import Identity, new_identity
from auxilio.provision.writer import micropython_with_firmware, write_root

log = logging.getLogger(__name__)

# Generous bounds: the machine may be busy (2 cores, several test runs).
START_TIMEOUT_S = 30.0  # interpreter start, hello and broker connection per device
ACK_TIMEOUT_S = 30.0  # press -> acked
ATTEND_TIMEOUT_S = 20.0  # attend -> long pulse
PRESS_MARGIN_MS = 300  # hold a bit longer than the role's hold_ms

# (role, board file, assignment)
DEMO_DEVICES = (
    ("bracelet", "bracelet-c3", {"case_ref": "PR-2026-00042"}),
    (
        "button",
        "button-s3",
        {"site": "Plaza de la Constitución", "lat": 19.4326, "lon": -99.1332, "sector": "Centro"},
    ),
)


ROLE_LABEL = {"bracelet": N_("Pulsera"), "button": N_("Botón")}


def _who(r: dict[str, Any]) -> dict[str, Any]:
    """Format fields for a progress line: the role in the operator's language."""
    return {**r, "role": _(ROLE_LABEL.get(r["role"], r["role"]))}


def _wait(
    ctl: ControlServer, pred: Callable[[dict[str, Any]], bool], timeout: float, since: int = 0
) -> tuple[float, dict[str, Any]] | None:
    """The first control event after `since` matching pred, as (time, event), or None."""
    ev = ctl.next_event(pred, timeout=timeout, since=since)
    return (ev["t"], ev) if ev is not None else None


def _start_broker(stack: ExitStack) -> tuple[Any, str]:
    from auxilio.broker.mosquitto import Mosquitto, free_port, mosquitto_binary

    if mosquitto_binary() is not None:
        return stack.enter_context(Mosquitto()), "mosquitto"
    from auxilio.broker.embedded import EmbeddedBroker
    from auxilio.broker.runner import EMBEDDED_NOTE

    sys.stderr.write(EMBEDDED_NOTE + "\n")
    return stack.enter_context(EmbeddedBroker(port=free_port())), "amqtt"


def _say(quiet: bool, text: str) -> None:
    if not quiet:
        print(text, flush=True)


def run_demo(once: bool = True) -> dict[str, Any]:
    """Run the whole chain once; return the summary (ok only if every alert was acked)."""
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    from auxilio.gateway import Gateway
    from auxilio.gateway.control import request_attend
    from auxilio.keys import seal
    from auxilio.registry import open_registry

    quiet = once
    summary: dict[str, Any] = {"ok": False, "alerts": []}
    t_start = time.monotonic()
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="auxilio-demo-")))
        _say(quiet, _("Iniciando broker, registro y gateway…"))
        broker, broker_kind = _start_broker(stack)
        summary["broker"] = broker_kind
        key = X25519PrivateKey.generate()  # in memory only: the demo's gateway key
        registry = open_registry(str(tmp / "registry.db"))
        stack.callback(registry.close)
        devices = []
        for i, (role, board, assignment) in enumerate(DEMO_DEVICES):
            ident = new_identity(0x0D3300 + i, password="demo")
            device = ident.device
            registry.add_device(
                device, role, board, seal(ident.secret, key.public_key(), device), actor="demo"
            )
            if "case_ref" in assignment:
                registry.assign_case(device, assignment["case_ref"], actor="demo")
            else:
                registry.assign_site(
                    device,
                    assignment["site"],
                    assignment["lat"],
                    assignment["lon"],
                    assignment["sector"],
                    actor="demo",
                )
            devices.append(
                {
                    "index": i,
                    "role": role,
                    "board": board,
                    "device": device,
                    "secret": ident.secret,
                    "identity": ident,
                }
            )
        gw = Gateway(registry, key, broker.url)
        gw.start(connect_attempts=20)
        stack.callback(gw.stop)
        if not gw.connected.wait(START_TIMEOUT_S):
            summary["error"] = "gateway did not connect to the broker"
            return summary

        mp = micropython_with_firmware()
        summary["devices"] = "firmware/micropython" if mp else "cpython-simulator"
        if mp:
            _say(quiet, _("Dispositivos: firmware real bajo micropython"))
            results = _run_firmware(stack, tmp, mp, devices, broker.url, registry, quiet)
        else:
            _say(quiet, _("Dispositivos: simulados en CPython (no hay firmware o micropython)"))
            results = _run_simulated(stack, devices, broker, quiet)

        # The operator attends each acked alert: the gateway checks it, signs the ACK.
        for r in results:
            row = _alert_row(registry, r["device_id"], r.get("counter"))
            r["verified"] = row is not None
            r["stored"] = row is not None and row["disposition"] in ("received", "attending")
            if row is None or not r["acked"]:
                continue
            res = request_attend(broker.url, row["id"], "operadora-demo")
            r["alert_id"] = row["id"]
            r["attended"] = res.sent and r["wait_attending"]()
            if r["attended"]:
                _say(
                    quiet,
                    _("{role} {device}: operadora atendiendo (pulso largo)").format(**_who(r)),
                )
        for r in results:
            r.pop("wait_attending", None)
            r.pop("device_id", None)
            if not r["acked"]:
                _say(
                    quiet,
                    _("{role} {device}: FALLO: {what}").format(
                        what=r.get("error", "no ack"), **_who(r)
                    ),
                )
        summary["alerts"] = results
        summary["gateway"] = {k: v for k, v in sorted(gw.stats.items())}
        summary["ok"] = bool(results) and all(r["acked"] for r in results)
    summary["seconds"] = round(time.monotonic() - t_start, 1)
    _say(quiet, _("Listo: todo detenido."))
    return summary


def _alert_row(registry: Any, device: int, counter: int | None) -> dict[str, Any] | None:
    from sqlalchemy import select

    if counter is None:
        return None
    a = registry.tables.alerts
    with registry.engine.connect() as conn:
        r = (
            conn.execute(
                select(a).where(
                    a.c.device_id == device, a.c.counter == counter, a.c.type == "ALERT"
                )
            )
            .mappings()
            .first()
        )
    return dict(r) if r else None


def _run_firmware(
    stack: ExitStack,
    tmp: Path,
    mp: str,
    devices: list[dict[str, Any]],
    broker_url: str,
    registry: Any,
    quiet: bool,
) -> list[dict[str, Any]]:
    ctl = ControlServer()  # the emulator's controller side of the host HAL channel
    stack.callback(ctl.close)
    roots = []
    for d in devices:
        root = tmp / f"dev{d['index']}"
        ident: Identity = d["identity"]
        rec = registry.require_device(ident.device)
        # SPEC §12.1: the epoch and counter floor come from the registry, for a known secret.
        ident = ident.with_registry(
            rec.key_epoch, registry.counter_floor(rec.id), rec.sealed_secret
        )
        cfg = device_config(ident, d["role"], broker_url)
        write_root(root, cfg, d["board"], firmware=True)
        roots.append(str(root))
    script = f"import sys\nsys.path.insert(0, {roots[0]!r})\nimport app\napp.run_fleet({roots!r})\n"
    env = {**os.environ, "AUXILIO_HAL_CONTROL": f"127.0.0.1:{ctl.port}"}
    fw_log = open(tmp / "firmware.log", "wb")
    stack.callback(fw_log.close)
    proc = subprocess.Popen(
        [mp, "-c", script], cwd=tmp, env=env, stdout=fw_log, stderr=subprocess.STDOUT
    )

    def _stop() -> None:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    stack.callback(_stop)
    results = []
    for d in devices:
        i = d["index"]
        label = codec.device_str(d["device"])
        r: dict[str, Any] = {
            "role": d["role"],
            "device": label,
            "device_id": d["device"],
            "acked": False,
            "attended": False,
        }
        results.append(r)
        conn = _wait(
            ctl,
            lambda e, i=i: (
                e.get("dev") == i and e.get("ev") == "state" and e.get("name") == "connected"
            ),
            START_TIMEOUT_S,
        )
        if conn is None:
            r["error"] = "device did not connect"
            r["wait_attending"] = lambda: False
            continue
        _say(quiet, _("{role} {device}: conectado").format(**_who(r)))
        with open(Path(roots[i]) / "board.json") as f:
            hold_ms = json.load(f)["roles"][d["role"]]["hold_ms"]
        mark = ctl.mark()
        _say(quiet, _("{role} {device}: pulsando…").format(**_who(r)))
        ctl.send("press", i)
        time.sleep((hold_ms + PRESS_MARGIN_MS) / 1000)
        ctl.send("release", i)
        queued = _wait(
            ctl,
            lambda e, i=i: (
                e.get("dev") == i and e.get("ev") == "state" and e.get("name") == "queued"
            ),
            ACK_TIMEOUT_S,
            mark,
        )
        if queued is None:
            r["error"] = "the press did not queue an alert"
            r["wait_attending"] = lambda: False
            continue
        counter = queued[1].get("counter")
        r["counter"] = counter
        acked = _wait(
            ctl,
            lambda e, i=i, c=counter: (
                e.get("dev") == i
                and e.get("ev") == "state"
                and e.get("name") == "acked"
                and e.get("counter") == c
            ),
            ACK_TIMEOUT_S,
            mark,
        )
        if acked is None:
            r["error"] = "no ack reached the device"
            r["wait_attending"] = lambda: False
            continue
        r["acked"] = True
        r["hold_ms"] = hold_ms
        # Press-to-ack: from the moment the gesture became an alert to the device having the ACK.
        r["press_to_ack_ms"] = round((acked[0] - queued[0]) * 1000, 1)
        r["feedback"] = [
            e.get("pattern")
            for e in ctl.events(mark)
            if e.get("dev") == i and e.get("ev") in ("haptic", "led")
        ]
        _say(
            quiet,
            _(
                "{role} {device}: alerta #{counter} verificada, guardada y confirmada en {ms:.1f} ms"
            ).format(ms=r["press_to_ack_ms"], **_who(r)),
        )
        m2 = ctl.mark()
        r["wait_attending"] = _attending_waiter(ctl, i, counter, m2)
    return results


def _attending_waiter(ctl: ControlServer, index: int, counter: int, since: int) -> Any:
    def wait() -> bool:
        def match(ev: dict[str, Any]) -> bool:
            return (
                ev.get("dev") == index
                and ev.get("ev") == "state"
                and ev.get("name") == "attending"
                and ev.get("counter") == counter
            )

        return _wait(ctl, match, ATTEND_TIMEOUT_S, since) is not None

    return wait


def _run_simulated(
    stack: ExitStack, devices: list[dict[str, Any]], broker: Any, quiet: bool
) -> list[dict[str, Any]]:
    from auxilio.gateway.simulator import SimDevice

    results = []
    for d in devices:
        sim = SimDevice(d["device"], d["secret"], broker.host, broker.port)
        stack.callback(sim.close)
        r: dict[str, Any] = {
            "role": d["role"],
            "device": sim.label,
            "device_id": d["device"],
            "acked": False,
            "attended": False,
        }
        results.append(r)
        _say(quiet, _("{role} {device}: pulsando…").format(**_who(r)))
        deadline = time.monotonic() + ACK_TIMEOUT_S
        while time.monotonic() < deadline:  # retry like a device until the gateway answers
            t0 = time.perf_counter()
            c = sim.send("ALERT")
            ack = sim.wait_ack(c, timeout=2)
            if ack is not None:
                r.update(
                    counter=c,
                    acked=ack["disposition"] == "received",
                    press_to_ack_ms=round((sim.ack_times[c] - t0) * 1000, 1),
                )
                break
        if r["acked"]:
            _say(
                quiet,
                _(
                    "{role} {device}: alerta #{counter} verificada, guardada y confirmada en {ms:.1f} ms"
                ).format(ms=r["press_to_ack_ms"], **_who(r)),
            )
        c = r.get("counter")
        r["wait_attending"] = lambda sim=sim, c=c: (
            c is not None
            and (sim.wait_ack(c, n=2, timeout=ATTEND_TIMEOUT_S) or {}).get("disposition")
            == "attending"
        )
    return results
