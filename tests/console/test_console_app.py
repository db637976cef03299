"""The live console driven headless (Textual Pilot), end to end over the secured chain.

An ALERT from a bracelet and one from a button are stored and acked by the real
gateway; the operator attends the bracelet's with `a` (the gateway signs the
`attending` ACK), closes it `resolved` with `c`, and closes the button's as a
false alarm it never attended. Each step is read from the screen at 80x24 and
at 160 columns, and the outcome rows and audit entries are read back.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from typing import Any

import pytest
from auxilio.console.app import MonitorApp
from auxilio.console.outcomes import Closer
from auxilio.gateway.control import request_attend
from auxilio.registry import open_registry
from auxilio.testing.console import screen_text
from sqlalchemy import select

from .conftest import CASE, SITE

pytestmark = pytest.mark.integration

# How long a step may take on a busy 2-core machine.
STEP_S = 20.0
# Where the simulated bracelet's fix is (gateway.simulator.SIM_LOCATION), as the console prints it.
BRACELET_AT = "19.43261,-99.13321"
SITE_AT = "19.43260,-99.13320"
ELAPSED = re.compile(r"(?:! )?\d+:\d\d\b")


async def until(pilot: Any, cond: Callable[[], Any], what: str) -> Any:
    """Let the app run until cond() holds (bounded)."""
    deadline = time.monotonic() + STEP_S
    while time.monotonic() < deadline:
        await pilot.pause(0.05)
        got = cond()
        if got:
            return got
    raise AssertionError(f"timed out waiting for {what}:\n{screen_text(pilot.app)}")


async def shows(pilot: Any, check: Callable[[str], bool], what: str) -> str:
    """Wait until check(screen) holds; returns that screen."""
    seen: list[str] = []

    def cond() -> bool:
        seen.append(screen_text(pilot.app))
        return check(seen[-1])

    await until(pilot, cond, what)
    return seen[-1]


def line_with(screen: str, text: str) -> str:
    """The first screen row that contains text (the alerts table comes first)."""
    for line in screen.splitlines():
        if text in line:
            return line
    raise AssertionError(f"{text!r} not on screen:\n{screen}")


def _alert_ids(reg: Any, dev: int) -> list[int]:
    a = reg.tables.alerts
    with reg.engine.connect() as conn:
        return [r[0] for r in conn.execute(select(a.c.id).where(a.c.device_id == dev))]


def test_dispatch_from_the_console_at_80_and_160_columns(chain: Any, local_zone: str) -> None:
    chain.start_gateway()
    bracelet, button = chain.device(0), chain.device(1)
    pressed = int(time.time()) - 2
    cb = bracelet.send("ALERT", pressed_at=pressed)
    assert bracelet.wait_ack(cb, timeout=STEP_S)["disposition"] == "received"
    ck = button.send(
        "ALERT", lat_e7=None, lon_e7=None, accuracy_m=None, fix_age_s=None, bearer="lte"
    )
    assert button.wait_ack(ck, timeout=STEP_S)["disposition"] == "received"
    (b_id,) = _alert_ids(chain.registry, bracelet.device)
    (k_id,) = _alert_ids(chain.registry, button.device)

    ro = open_registry(chain.registry_path, readonly=True)
    closer = Closer(chain.registry_path)

    def attend(alert_id: int) -> Any:
        return request_attend(chain.operator_url, alert_id, "consola-1")

    def app() -> MonitorApp:
        return MonitorApp(ro, operator="consola-1", attend=attend, closer=closer, refresh_s=0.2)

    async def wide_pending() -> None:
        async with app().run_test(size=(160, 40)) as pilot:
            screen = await shows(pilot, lambda s: "Plaza Mayor" in s and "mapa" in s, "rows")
            row = line_with(screen, CASE)
            assert BRACELET_AT in row and "SIN ATENDER" in row and ELAPSED.search(row)
            # Wide: the device, its kind, accuracy and fix age, battery and bearer are columns.
            assert bracelet.label in row and "pulsera" in row and "±12 m · 3 s" in row
            assert "80%" in row and "wifi" in row
            row = line_with(screen, SITE[0])
            assert SITE_AT in row and "sitio fijo" in row and "Centro" in row and "lte" in row
            assert "SIN ATENDER" in row and ELAPSED.search(row)
            # The oldest press first: the bracelet's row is above the button's.
            assert screen.index(CASE) < screen.index(SITE[0])
            # The selected (first) alert in full, with its geo: URI at this width.
            assert f"caso {CASE}" in screen and local_zone in screen
            assert "geo:19.4326080,-99.1332080;u=12" in screen
            assert "mapa https://www.openstreetmap.org/?mlat=19.43261&mlon=-99.13321" in screen

    async def operate_at_80() -> None:
        async with app().run_test(size=(80, 24)) as pilot:
            screen = await shows(
                pilot, lambda s: all(x in s for x in ("Plaza Mayor", "mapa", "q Salir")), "rows"
            )
            row = line_with(screen, CASE)
            assert BRACELET_AT in row and "SIN ATENDER" in row and ELAPSED.search(row)
            row = line_with(screen, SITE[0])
            assert SITE_AT in row and "SIN ATENDER" in row and ELAPSED.search(row)
            # The key help is on screen, and so is the press time with its offset.
            assert "a Atender" in screen and "c Cerrar" in screen and "q Salir" in screen
            assert re.search(r"pulsada \d{4}-\d\d-\d\d \d\d:\d\d:\d\d " + local_zone, screen)
            assert "mapa https://www.openstreetmap.org/?mlat=19.43261&mlon=-99.13321" in screen
            # a: the gateway signs `attending`; the row says so only once it did.
            await pilot.press("a")
            await until(
                pilot,
                lambda: "atendiendo" in line_with(screen_text(pilot.app), CASE),
                "atendiendo",
            )
            assert "atención enviada" in screen_text(pilot.app)
            # c, 1 (resolved), a note, Enter.
            await pilot.press("c")
            await until(pilot, lambda: "Cerrar alerta" in screen_text(pilot.app), "dialog")
            await pilot.press("1", *"patrulla 12 en sitio", "enter")
            await until(
                pilot,
                lambda: "cerrada: resuelta" in line_with(screen_text(pilot.app), CASE),
                "closed",
            )
            # The button's alert: it moved up to the top of the queue; close it unattended.
            await pilot.press("up", "up", "up")
            await until(
                pilot, lambda: f"alerta {k_id} · botón" in screen_text(pilot.app), "selected"
            )
            await pilot.press("c")
            screen = await shows(pilot, lambda s: "No atendida" in s, "warning")
            assert f"Cerrar alerta {k_id} ({SITE[0]})" in screen
            # Keys of the main screen do nothing in the dialog: no attend, no quit.
            await pilot.press("a", "q", "2", "enter")
            screen = await shows(
                pilot, lambda s: "cerrada: falsa alarma" in line_with(s, SITE[0]), "false alarm"
            )
            assert "sin atender 0" in screen.splitlines()[0]

    async def wide_done() -> None:
        async with app().run_test(size=(160, 40)) as pilot:
            screen = await shows(pilot, lambda s: "Plaza Mayor" in s, "rows")
            row = line_with(screen, CASE)
            assert "cerrada: resuelta" in row and BRACELET_AT in row and ELAPSED.search(row)
            row = line_with(screen, SITE[0])
            assert "cerrada: falsa alarma" in row and SITE_AT in row and ELAPSED.search(row)

    try:
        asyncio.run(wide_pending())
        asyncio.run(operate_at_80())
        asyncio.run(wide_done())
    finally:
        closer.dispose()
        ro.close()

    # The wearer was told: the second ACK for the bracelet's alert is the signed `attending`.
    assert bracelet.wait_ack(cb, n=2, timeout=STEP_S)["disposition"] == "attending"
    assert button.wait_ack(ck, n=2, timeout=0.3) is None  # never attended, never signed
    reg = chain.registry
    o = reg.tables.outcomes
    with reg.engine.connect() as conn:
        rows = {r["alert_id"]: dict(r) for r in conn.execute(select(o)).mappings()}
        a = reg.tables.alerts
        stored = {
            r["id"]: dict(r)
            for r in conn.execute(select(a.c.id, a.c.attending_by, a.c.pressed_at)).mappings()
        }
    assert set(rows) == {b_id, k_id}
    assert (rows[b_id]["outcome"], rows[b_id]["operator"], rows[b_id]["attended"]) == (
        "resolved",
        "consola-1",
        True,
    )
    assert rows[b_id]["note"] == "patrulla 12 en sitio" and rows[b_id]["revision"] == 1
    assert (rows[k_id]["outcome"], rows[k_id]["attended"]) == ("false_alarm", False)
    assert stored[b_id]["attending_by"] == "consola-1" and stored[k_id]["attending_by"] is None
    assert stored[b_id]["pressed_at"].timestamp() == pressed
    audit = {r["target"]: r for r in reg.audit_log(50) if r["action"] == "close"}
    assert audit[f"alert:{b_id}"]["actor"] == "consola-1"
    assert audit[f"alert:{b_id}"]["detail"] == "outcome=resolved revision=1"
    assert audit[f"alert:{k_id}"]["detail"] == "outcome=false_alarm revision=1 unattended"
    assert audit[f"alert:{b_id}"]["at"] == rows[b_id]["closed_at"]
    requests = [r for r in reg.audit_log(50) if r["action"] == "attend-request"]
    assert [r["target"] for r in requests] == [f"alert:{b_id}"]
