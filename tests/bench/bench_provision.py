"""Provisioning figures (issue 11): plugged in -> labelled, tested device; devices per hour for a tray.

Against virtual boards running the real firmware behind RFC 2217, a real
mosquitto with per-device logins and the real gateway (auxilio.testing.station).

- ``single_s``: one blank bracelet, from the board being switched on (MicroPython
  and the app on it, no config) to a labelled device whose live TEST came back;
  ``press_wait_s`` (the wearer's press, here pressed as soon as staff are asked)
  is apart and not in ``single_s``; ``steps_s``: each step's seconds.
- ``tray6_s`` and ``devices_per_hour``: a CSV tray of 6 (4 bracelets, 2 buttons)
  in parallel, without the press (a tray has no wearers: that test is done at
  the hand-over).
- Baselines in the same run: ``serial_session_s``, one mpremote `exec` round
  trip on the same kind of link (what each raw-REPL step costs at least), and
  ``single_nolive_s``, one board without the live test, so ``tray_speedup`` =
  6 x single / tray says what the threads buy.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from auxilio.flash import mpremote
from auxilio.provision.batch import parse_batch, run_batch
from auxilio.provision.run import provision
from auxilio.testing.station import ProvisionStation

TRAY = ["bracelet"] * 4 + ["button"] * 2


def _session(url: str) -> float:
    t0 = time.monotonic()
    mpremote.run(url, ["exec", "print(1)"])
    return time.monotonic() - t0


def run() -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="auxilio-bench-prov-") as tmp:
        with ProvisionStation(Path(tmp) / "station") as st:
            # One bracelet with the live test, from power-on.
            t0 = time.monotonic()
            vd = st.start_board("bracelet-c3")
            on_s = time.monotonic() - t0
            res, _lines = st.provision_live(vd, "bracelet", case="PR-2026-00001")
            total = time.monotonic() - t0
            press = res.press_wait_s or 0.0
            serial_s = min(_session(vd.board.rfc2217_url) for _ in range(3))
            # The same without the live test (the tray's per-board work).
            vd2 = st.start_board("bracelet-c3")
            t1 = time.monotonic()
            provision(st.request(vd2, "bracelet", case="PR-2026-00002"))
            nolive = time.monotonic() - t1
            # A tray of 6 from a CSV, in parallel (boards already on, as on a hub).
            boards = [
                st.start_board("bracelet-c3" if r == "bracelet" else "button-s3") for r in TRAY
            ]
            text = "port,role,case,site,lat,lon,sector\n" + "".join(
                f"{b.board.rfc2217_url},bracelet,PR-2026-{100 + i:05d},,,,\n"
                if r == "bracelet"
                else f"{b.board.rfc2217_url},button,,Sitio {i},19.4{i},-99.1{i},Centro\n"
                for i, (b, r) in enumerate(zip(boards, TRAY, strict=True))
            )
            base = {
                "broker_url": st.broker_url,
                "registry": st.registry,
                "public_key": st.public_key,
                "broker_sync": st.sync,
                "label_dir": st.labels,
                "live_test": False,
                "actor": "bench",
            }
            t2 = time.monotonic()
            out = run_batch(parse_batch(text), base, lambda _l: None, reports_dir=Path(tmp))
            tray_s = time.monotonic() - t2
            if out.ok != len(TRAY):
                raise RuntimeError(f"tray: {out.ok}/{len(TRAY)} ok: {out.results}")
    return {
        "single_s": round(total - press, 2),
        "press_wait_s": round(press, 2),
        "power_on_s": round(on_s, 2),
        "test_ms": res.test_ms,
        "boot_s": res.boot_s,
        "steps_s": res.steps,
        "single_nolive_s": round(nolive, 2),
        "serial_session_s": round(serial_s, 3),
        "single_over_session": round((total - press) / serial_s, 1),
        "tray6_s": round(tray_s, 2),
        "devices_per_hour": round(len(TRAY) / tray_s * 3600),
        "tray_speedup": round(len(TRAY) * nolive / tray_s, 2),
    }
