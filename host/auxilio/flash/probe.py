"""`auxilio ports --probe`: ask each board its chip, MAC and MicroPython version (it gets reset).

esptool's auto-reset puts the chip in download mode to read its identity,
then an EN pulse boots it; mpremote then asks MicroPython its version, and a
last EN pulse starts the firmware again. Boards are probed in parallel.
"""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from auxilio.errors import AuxilioError
from auxilio.flash import mpremote
from auxilio.flash.flasher import ROM_BAUD, esptool_output, explain_connect
from auxilio.flash.link import open_port, pulse_reset
from auxilio.flash.ports import Port

PROBE_CONNECT_ATTEMPTS = 2
PROBE_MPREMOTE_TIMEOUT_S = 20.0
_VERSION_RE = re.compile(r"MicroPython (\S+)")


class _Quiet:
    def line(self, text: str) -> None:
        pass

    def bytes(self, done: int, total: int) -> None:
        pass


def probe(port: Port) -> dict[str, Any]:
    """{'chip', 'mac', 'micropython'} for one board; 'probe_error' says what did not answer."""
    from esptool import cmds

    out: dict[str, Any] = {"chip": None, "mac": None, "micropython": None}
    try:
        with esptool_output(_Quiet()):
            ser = open_port(port.url, ROM_BAUD)
            try:
                esp = cmds.detect_chip(
                    ser, ROM_BAUD, "default-reset", connect_attempts=PROBE_CONNECT_ATTEMPTS
                )
                out["chip"] = esp.CHIP_NAME
                out["mac"] = ":".join(f"{b:02x}" for b in esp.read_mac())
                esp.hard_reset()
            finally:
                ser.close()
    except AuxilioError as exc:
        out["probe_error"] = str(exc)
        return out
    except Exception as exc:  # esptool's FatalError and serial errors
        out["probe_error"] = explain_connect(port, exc, PROBE_CONNECT_ATTEMPTS)
        return out
    try:
        text = mpremote.run(
            port.url, ["exec", "import sys; print(sys.version)"], timeout=PROBE_MPREMOTE_TIMEOUT_S
        )
        m = _VERSION_RE.search(text)
        out["micropython"] = m.group(1) if m else None
        pulse_reset(port.url)  # mpremote stopped main.py: start the firmware again
    except AuxilioError as exc:
        out["probe_error"] = f"no MicroPython REPL ({exc})"
    return out


def probe_all(ports: list[Port]) -> dict[str, dict[str, Any]]:
    if not ports:
        return {}
    with ThreadPoolExecutor(max_workers=min(16, len(ports))) as pool:
        results = list(pool.map(probe, ports))
    return {p.device: r for p, r in zip(ports, results, strict=True)}
