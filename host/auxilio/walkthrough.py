"""Protocol walk-through: one ALERT encoded, signed, encrypted, decoded and tampered, on CPython and micropython.

The interim `auxilio demo` (issue 2). Everything here is synthetic: a throwaway
key generated for this run (it belongs to no device and is shown labelled as
such) and a made-up position. The narrative is Spanish first, then English.
Nothing sensitive goes to the log: only step names and outcomes.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from auxilio.i18n import N_, both
from auxilio.paths import find_micropython, protocol_dir
from auxilio.protocol import FrameError, codec, sms

# Labels written inside f-strings below: marked here, since Babel does not read
# inside f-strings (auxilio.catalogue).
_INLINE_LABELS = (
    N_("posición"),
    N_("precisión"),
    N_("batería"),
    N_("portadora"),
    N_("contador"),
    N_("hora"),
    N_("Trama"),
    N_("bytes"),
    N_("Cuerpo del SMS (base64)"),
    N_("caracteres"),
    N_("Dispositivo"),
)

log = logging.getLogger(__name__)

# Synthetic demo data: a bracelet id and a point on the Zócalo, Mexico City.
DEMO_DEVICE = 0x00A1B2C3
DEMO_LAT_E7 = 194326000
DEMO_LON_E7 = -991332000
# Bytes 16.. are the payload (SPEC.md §3); flip one bit of the latitude's ciphertext.
TAMPER_BYTE = 16
TAMPER_MASK = 0x01
MICROPYTHON_TIMEOUT_S = 60
WRAP_AT = 96  # longer bilingual lines print Spanish, then English on the next line


@dataclass
class Walkthrough:
    """Outcome of one run: each named check and whether it held."""

    checks: list[tuple[str, bool]] = field(default_factory=list)
    micropython: bool = False

    @property
    def ok(self) -> bool:
        return all(ok for _, ok in self.checks)

    def check(self, name: str, ok: bool) -> bool:
        self.checks.append((name, ok))
        log.info("walkthrough check %s: %s", name, "ok" if ok else "FAILED")
        return ok


# Runs under micropython: decode, re-encode and the tampered copy, one JSON line out.
_MP_SCRIPT = """
import sys, json
sys.path.insert(0, {path!r})
import auxcodec as c
s = bytes.fromhex({secret!r})
r = {{}}
f = c.decode(bytes.fromhex({frame!r}), s)
r["fields"] = f
r["encoded"] = c.encode(f, s).hex()
try:
    c.decode(bytes.fromhex({tampered!r}), s)
    r["tampered"] = "accepted"
except c.FrameError as e:
    r["tampered"] = e.reason
print(json.dumps(r))
"""


def _on_micropython(exe: str, secret: bytes, frame: bytes, tampered: bytes) -> dict:
    script = _MP_SCRIPT.format(
        path=str(protocol_dir()), secret=secret.hex(), frame=frame.hex(), tampered=tampered.hex()
    )
    r = subprocess.run(
        [exe, "-c", script], capture_output=True, text=True, timeout=MICROPYTHON_TIMEOUT_S
    )
    if r.returncode != 0:
        lines = r.stderr.strip().splitlines() or [f"exit {r.returncode}"]
        return {"error": lines[-1]}
    return json.loads(r.stdout.strip().splitlines()[-1])


def _hex(b: bytes, group: int = 4) -> str:
    h = b.hex()
    return " ".join(h[i : i + 2 * group] for i in range(0, len(h), 2 * group))


def _deg(e7: int | None) -> str:
    return "—" if e7 is None else f"{e7 / 1e7:.7f}°"


def run(write: Callable[[str], None] = print, use_micropython: bool = True) -> Walkthrough:
    """Narrate the walk-through through write(); return the checks."""
    result = Walkthrough()

    def say(msgid: str, suffix: str = "", indent: str = "") -> None:
        text = both(msgid)
        if len(text) + len(suffix) > WRAP_AT and text != msgid:
            write(f"{indent}{msgid}{suffix}")
            write(f"{indent}  {text[len(msgid) + 3 :]}")
        else:
            write(f"{indent}{text}{suffix}")

    def mark(ok: bool) -> str:
        return "✔" if ok else "✘"

    secret = os.urandom(32)  # throwaway: generated for this run, never stored
    keys = codec.Keys(secret)
    now = int(time.time())
    fields = {
        "type": "ALERT",
        "device": codec.device_str(DEMO_DEVICE),
        "counter": 1,
        "timestamp": now,
        "clock_synced": True,
        "lat_e7": DEMO_LAT_E7,
        "lon_e7": DEMO_LON_E7,
        "accuracy_m": 8,
        "fix_age_s": 2,
        "pressed_at": now - 1,
        "battery": 76,
        "rssi": -71,
        "bearer": "lte",
    }

    write("═" * 72)
    say(N_("Recorrido del protocolo Auxilio v1"))
    write("═" * 72)
    say(N_("Clave desechable de esta demostración (no pertenece a ningún dispositivo)"), ":")
    write(f"  {secret.hex()}")
    write(f"{both('Dispositivo')}: {fields['device']}")
    write("")

    say(N_("1. La pulsera arma una ALERTA con su posición (datos ficticios)"))
    write(
        f"  {both('posición')}: {_deg(DEMO_LAT_E7)}, {_deg(DEMO_LON_E7)}  "
        f"{both('precisión')}: 8 m  {both('batería')}: 76 %  RSSI: -71 dBm  "
        f"{both('portadora')}: LTE"
    )
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))
    write(f"  {both('contador')}: 1  {both('hora')}: {now} = {stamp} (clock_synced)")
    write("")

    say(N_("2. Codifica, cifra la posición (AES-128-CTR) y firma (HMAC-SHA256/128)"))
    frame = codec.encode(fields, keys)
    n = len(frame)
    plain = codec.pack_payload(codec.ALERT, codec._values_from_fields(codec.ALERT, fields))
    h = frame[:16].hex()
    rows = [
        (both("cabecera"), " ".join((h[0:2], h[2:4], h[4:6], h[6:14], h[14:22], h[22:30], h[30:]))),
        ("", both("(versión, tipo, flags, dispositivo, contador, hora, longitud)")),
        (both("carga cifrada"), _hex(frame[16 : n - 16])),
        (both("etiqueta"), _hex(frame[n - 16 :])),
        (both("carga en claro"), _hex(plain) + "  ← " + both("nunca sale del dispositivo")),
    ]
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        write(f"  {label:<{width}}  {value}")
    body = sms.sms_encode(frame)
    write(f"  {both('Trama')}: {n} {both('bytes')} (≤ 64)")
    write(f"  {both('Cuerpo del SMS (base64)')}: {len(body)} {both('caracteres')} (≤ 160)")
    write(f"    {body}")
    result.check("alert_fits_budget", n <= 64 and len(body) <= 160)
    result.check("payload_encrypted", frame[16 : n - 16] != plain)
    say(N_("Quien mira el broker ve la carga cifrada, no la ubicación."), indent="  ")
    write("")

    say(N_("3. El C4 la verifica y descifra (CPython)"))
    decoded = codec.decode(frame, keys)
    same = {k: decoded[k] for k in fields} == fields
    write(
        f"  {mark(same)} {decoded['type']} {decoded['device']} #{decoded['counter']}  "
        f"{both('posición')}: {_deg(decoded['lat_e7'])}, {_deg(decoded['lon_e7'])}"
    )
    result.check("cpython_decode", same)
    write("")

    tampered = bytearray(frame)
    tampered[TAMPER_BYTE] ^= TAMPER_MASK
    tampered_b = bytes(tampered)

    say(N_("4. Lo mismo con el mismo códec en MicroPython (micropython real)"))
    exe = find_micropython() if use_micropython else None
    mp: dict = {}
    if not use_micropython:
        say(N_("se omite por --no-micropython."), indent="  ")
    elif exe is None:
        say(N_("micropython no está instalado; se omite esta parte."), indent="  ")
    else:
        result.micropython = True
        mp = _on_micropython(exe, secret, frame, tampered_b)
        if "error" in mp:
            write(f"  ✘ micropython: {mp['error']}")
            result.check("micropython_ran", False)
        else:
            same_fields = mp["fields"] == decoded
            same_bytes = mp["encoded"] == frame.hex()
            say(N_("Campos idénticos a CPython"), f": {mark(same_fields)}", indent="  ")
            say(
                N_("Codificación byte a byte idéntica en ambos entornos"),
                f": {mark(same_bytes)}",
                indent="  ",
            )
            result.check("micropython_decode", same_fields)
            result.check("micropython_byte_identical", same_bytes)
    write("")

    say(N_("5. Alguien altera un solo bit de la copia (la latitud cifrada)"))
    write(f"  {both('carga cifrada')}: {_hex(tampered_b[16 : n - 16])}")
    try:
        codec.decode(tampered_b, keys)
        reason = "accepted"
    except FrameError as exc:
        reason = exc.reason
    ok = reason == "bad_tag"
    if ok:
        say(N_("Rechazada en CPython"), f": error: {reason}  {mark(ok)}", indent="  ")
    else:
        say(N_("¡ACEPTADA! Esto es un error grave."), indent="  ")
    result.check("cpython_rejects_tampered", ok)
    if mp and "error" not in mp:
        ok = mp["tampered"] == "bad_tag"
        if ok:
            say(
                N_("Rechazada en MicroPython"),
                f": error: {mp['tampered']}  {mark(ok)}",
                indent="  ",
            )
        else:
            say(N_("¡ACEPTADA! Esto es un error grave."), indent="  ")
        result.check("micropython_rejects_tampered", ok)
    write("")

    if result.ok:
        say(N_("Todas las comprobaciones pasaron."), f" ({len(result.checks)})")
    else:
        failed = ", ".join(name for name, ok in result.checks if not ok)
        say(N_("Fallaron comprobaciones"), f": {failed}")
    return result
