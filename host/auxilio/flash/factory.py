"""`auxilio factory-test`: a flashed board's hardware self-test over its REPL, judged against board data.

Steps (each one mpremote exec of firmware/selftest.py, which prints AUXREADY
when armed and one AUXTEST JSON line): pulse each output the board has
(motor, LED, buzzer) and ask the technician to confirm; ask for a button
press and measure it; read the battery voltage and the mains sense against
the board file's factory_test ranges; on boards with a modem, AT and
AT+CPIN? over its UART. A check that could not be made is "fail" with the
reason (never "pass"); a check the board has no hardware for is "skipped".
Every result goes into reports/factory-*.csv/json.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

from auxilio.boards import Board
from auxilio.errors import AuxilioError
from auxilio.flash import mpremote, report
from auxilio.flash.link import pulse_reset
from auxilio.i18n import N_, _

READY = "AUXREADY"
RESULT = "AUXTEST "
STEP_TIMEOUT_S = 60.0  # one step, connection included (the button waits up to 15 s)
BUTTON_WAIT_S = 15.0  # how long the technician has to press the button
FACTORY_COLUMNS = ("port", "serial", "board", "check", "result", "value", "detail")
# output kind -> (prompt while it plays, question afterwards)
_OUTPUTS = {
    "haptic": (
        N_("Mire y escuche la placa: ahora vibra el motor."),
        N_("¿Vibró el motor?"),
    ),
    "led": (N_("Mire la placa: ahora se enciende el LED."), N_("¿Se encendió el LED?")),
    "buzzer": (N_("Escuche la placa: ahora suena el zumbador."), N_("¿Sonó el zumbador?")),
}
STEPS = ("haptic", "led", "buzzer", "button", "battery", "mains", "modem")


class Technician(Protocol):
    """Who watches the board: a person at a prompt, or a test reading the virtual board."""

    def prompt(self, check: str, text: str) -> None:
        """The board is armed for `check`: tell the technician what to do now."""

    def confirm(self, check: str, question: str) -> bool:
        """Ask whether it happened."""


@dataclass
class Check:
    check: str
    result: str  # pass | fail | skipped
    value: Any = None
    detail: str = ""


class FactoryTestError(AuxilioError):
    """The self-test could not run at all (no REPL, no selftest module)."""


def run_step(
    url: str, step: str, arg: str | None = None, on_ready: Callable[[], None] | None = None
) -> dict[str, Any]:
    """One selftest step on the board: its AUXTEST result (on_ready runs when it is armed)."""
    code = f"import selftest\nselftest.run({step!r}, {arg!r})"
    result: dict[str, Any] = {}

    def line(text: str) -> None:
        if text.strip() == READY and on_ready is not None:
            threading.Thread(target=on_ready, daemon=True).start()
        elif text.startswith(RESULT):
            result.update(json.loads(text[len(RESULT) :]))

    out = mpremote.run(url, ["exec", code], timeout=STEP_TIMEOUT_S, on_line=line)
    if not result:
        last = next((ln for ln in reversed(out.splitlines()) if ln.strip()), "no output")
        raise FactoryTestError(
            f"self-test step {step} gave no result ({last.strip()[:120]}); deploy the app first"
        )
    return result


def _range(value: Any, rng: Any) -> bool:
    return (
        isinstance(value, (int, float))
        and isinstance(rng, list)
        and len(rng) == 2
        and rng[0] <= value <= rng[1]
    )


def factory_test(
    url: str,
    board: Board,
    tech: Technician,
    skip: tuple[str, ...] = (),
    button_wait_s: float = BUTTON_WAIT_S,
) -> list[Check]:
    """Run every step this board has hardware for; one Check per step, in order."""
    ft = board.factory_test
    feedback = board.data.get("feedback") or {}
    checks: list[Check] = []

    def unavailable(check: str, present: bool, why: str) -> bool:
        """Record a skip (asked for, or no such hardware); True when the step does not run."""
        if check in skip or not present:
            checks.append(
                Check(
                    check, "skipped", detail="skipped by the technician" if check in skip else why
                )
            )
            return True
        return False

    for kind, (prompt, question) in _OUTPUTS.items():
        if unavailable(kind, bool(feedback.get(kind)), f"{board.name} has no {kind}"):
            continue
        run_step(url, "output", kind, lambda p=prompt, k=kind: tech.prompt(k, _(p)))
        ok = tech.confirm(kind, _(question))
        checks.append(
            Check(kind, "pass" if ok else "fail", detail="confirmed" if ok else "not seen")
        )
    if not unavailable("button", True, ""):
        checks.append(_button_check(url, ft, tech, button_wait_s))
    sensors = run_step(url, "sensors") if not {"battery", "mains"} <= set(skip) else {}
    if not unavailable("battery", "battery_mv" in ft, f"{board.name} has no battery range"):
        mv, rng = sensors.get("battery_mv"), ft["battery_mv"]
        ok = _range(mv, rng)
        detail = (
            "" if ok else ("no reading" if mv is None else f"{mv} mV outside {rng[0]}..{rng[1]} mV")
        )
        checks.append(Check("battery", "pass" if ok else "fail", mv, detail))
    if not unavailable("mains", "mains" in ft, f"{board.name} has no mains sense"):
        got, want = sensors.get("mains"), bool(ft["mains"])
        ok = got is want
        checks.append(
            Check(
                "mains",
                "pass" if ok else "fail",
                got,
                "" if ok else f"mains sense reads {got}, expected {want}",
            )
        )
    if not unavailable("modem", board.modem is not None, f"{board.name} has no modem"):
        checks.append(modem_check(url))
    pulse_reset(url)  # mpremote stopped main.py: start the firmware again
    return checks


def _button_check(url: str, ft: dict[str, Any], tech: Technician, wait_s: float) -> Check:
    """A press measured on the board, against the board file's button_ms range."""
    res = run_step(
        url,
        "button",
        int(wait_s * 1000),
        lambda: tech.prompt("button", _("Pulse el botón y manténgalo un segundo.")),
    )
    rng = ft.get("button_ms", [50, 5000])
    if not res.get("pressed"):
        return Check("button", "fail", detail=f"no press within {wait_s:g} s")
    if not res.get("released"):
        return Check("button", "fail", detail="pressed but never released (stuck?)")
    ms = res.get("ms")
    ok = _range(ms, rng)
    return Check(
        "button",
        "pass" if ok else "fail",
        ms,
        "" if ok else f"held {ms} ms, expected {rng[0]}..{rng[1]} ms",
    )


def modem_check(url: str) -> Check:
    """AT / AT+CPIN? over the board's modem UART: pass only when the modem answered and the SIM is ready."""
    res = run_step(url, "modem")
    if not res.get("at"):
        return Check("modem", "fail", None, res.get("reason") or "the modem did not answer AT")
    sim = res.get("sim")
    if sim != "READY":
        return Check(
            "modem", "fail", sim, f"the modem answers, but the SIM is {sim or 'not reported'}"
        )
    return Check("modem", "pass", sim, "AT OK, SIM ready")


def write_report(
    port: Any, board: Board, checks: list[Check], directory: Path | None = None
) -> tuple[Path, Path]:
    rows = [dict(asdict(c), port=port.device, serial=port.serial, board=board.name) for c in checks]
    meta = {
        "board": board.name,
        "port": port.device,
        "serial": port.serial,
        "passed": all(c.result != "fail" for c in checks),
    }
    return report.write("factory", rows, FACTORY_COLUMNS, meta, directory)
