"""Self-test round trip (issue 11 §6): `request_selftest` against the real firmware, vs the bare broker.

Setup: a SecureChain (mosquitto with the generated logins and ACLs, the
registry, the in-process gateway) and one bracelet running the real firmware
under micropython on a virtual board, connected through its own login.

Figures:
- ``bare_rtt_ms_*`` (baseline, same broker, same run, same logins and topics):
  the operator's login publishes on ``auxilio/c4/selftest`` and a client logged
  in as the gateway answers at once on ``.../result/<request>``; what the
  broker alone costs a console's request and its answer.
- ``selftest_now_ms_*``: ``request_selftest(mode="now")`` from the request's
  publish to the ``received`` answer: broker -> gateway (registry config_seq,
  sign) -> CONFIG -> the device queues TEST -> gateway verifies, stores, acks
  -> answer. ``selftest_gateway_ms_*``: the gateway's own figure for the same
  requests (request taken -> TEST stored). ``selftest_over_bare_p50``: the ratio.
- ``window_decided_to_received_ms_*``: mode "window", from the moment the
  press became an alert gesture (press + hold_ms: the hold itself is the
  wearer's, not the system's) to the ``received`` answer at the console.
"""

from __future__ import annotations

import statistics
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from auxilio.gateway import selftest as ST

SAMPLES = 20  # self-tests "now" (each one: a CONFIG and a TEST frame)
WINDOW_SAMPLES = 3  # presses in a test window (each one a 0.5 s hold)
RTT_SAMPLES = 200  # bare broker round trips
WARMUP = 3
HOLD_MS = 300  # the bracelet's alert hold for this bench (short: the hold is not measured)
RELEASE_GAP_S = 0.2  # between two presses: well past the firmware's 30 ms debounce


def _pct(values: list[float], p: float) -> float:
    v = sorted(values)
    return round(v[min(len(v) - 1, int(round(p / 100 * (len(v) - 1))))], 3)


def _figures(name: str, values: list[float]) -> dict[str, float]:
    return {f"{name}_ms_p50": _pct(values, 50), f"{name}_ms_p99": _pct(values, 99)}


def bare_rtt(chain: Any, samples: int) -> list[float]:
    """Operator login -> broker -> a client with the gateway's login -> broker -> operator."""
    from auxilio.testing.chain import Login

    prefix = chain.prefix
    echo = Login(chain.gateway_url)
    me = Login(chain.operator_url)
    got = threading.Event()
    ready = threading.Barrier(3)
    try:
        echo.c.on_message = lambda cl, ud, m: cl.publish(
            f"{prefix}/{ST.RESULT_LEAF}/bench", m.payload, qos=1
        )
        me.c.on_message = lambda *a: got.set()
        echo.c.on_subscribe = lambda *a: ready.wait(10)
        me.c.on_subscribe = lambda *a: ready.wait(10)
        echo.c.subscribe(f"{prefix}/{ST.CONTROL_LEAF}", qos=1)
        me.c.subscribe(f"{prefix}/{ST.RESULT_LEAF}/+", qos=1)
        ready.wait(10)
        body = b'{"request": "bench-rtt-000000", "device": "0938-NKRT", "mode": "now"}'
        out = []
        for i in range(samples + WARMUP):
            got.clear()
            t0 = time.perf_counter()
            me.publish(f"{prefix}/{ST.CONTROL_LEAF}", body, wait=False)
            if not got.wait(5):
                raise RuntimeError("the bare echo lost a message")
            if i >= WARMUP:
                out.append((time.perf_counter() - t0) * 1000)
        return out
    finally:
        echo.close()
        me.close()


def _window_sample(vd: Any, ask: Any) -> float:
    """Open a window, hold the button, and time the gesture's decision -> `received` heard."""
    mark = vd.mark()
    out: list[Any] = []
    heard: dict[str, float] = {}

    def note(answer: dict[str, Any]) -> None:
        if answer.get("state") == ST.RECEIVED:
            heard["t"] = time.perf_counter()

    t = threading.Thread(target=lambda: out.append(ask(mode="window", seconds=60, on_state=note)))
    t.start()
    vd.wait_event(ev="state", name="test_window", since=mark, timeout=30)
    pressed = time.perf_counter()
    vd.hold(HOLD_MS / 1000 + 0.2)
    t.join(60)
    # A wearer's presses are seconds apart; a release shorter than the debounce (30 ms)
    # would join two presses into one long hold (an ALERT, SPEC §8.10.1 rule 3).
    time.sleep(RELEASE_GAP_S)
    if not out or "t" not in heard:
        raise RuntimeError("the window self-test never answered")
    # The gesture decides at hold_ms into the press (the TEST goes while still held).
    return (heard["t"] - pressed) * 1000 - HOLD_MS


def run() -> dict[str, Any]:
    from auxilio.emulator.vdevice import VirtualDevice
    from auxilio.protocol import codec
    from auxilio.selftest import request_selftest
    from auxilio.testing.chain import SecureChain

    with tempfile.TemporaryDirectory() as tmp, SecureChain(Path(tmp)) as chain:
        bare = bare_rtt(chain, RTT_SAMPLES)
        chain.start_gateway()
        vd = VirtualDevice(
            "bracelet-c3",
            Path(tmp) / "vboard.img",
            config=chain.board_config(0, hold_ms=HOLD_MS),
            format=True,
            name=f"bench-selftest-{uuid.uuid4().hex[:6]}",
        )
        try:
            vd.start(wait=False)
            vd.control.wait_connected(60)
            vd.wait_event(ev="state", name="connected", timeout=60)
            name = codec.device_str(chain.device_id(0))

            def ask(**kw: Any) -> Any:
                res = request_selftest(chain.url, chain.files.operator, chain.prefix, name, **kw)
                if not res.ok:
                    raise RuntimeError(f"self-test {res.state} ({res.reason})")
                return res

            ask()  # warm-up: first CONFIG, first TEST
            now = [ask() for _ in range(SAMPLES)]
            window = [_window_sample(vd, ask) for _ in range(WINDOW_SAMPLES)]
        finally:
            vd.close()
    elapsed = [r.elapsed_ms for r in now]
    gateway = [r.round_trip_ms for r in now]
    figures: dict[str, Any] = {"samples": SAMPLES, "rtt_samples": RTT_SAMPLES}
    figures |= _figures("bare_rtt", bare)
    figures |= _figures("selftest_now", elapsed)
    figures |= _figures("selftest_gateway", gateway)
    figures |= _figures("window_decided_to_received", window)
    figures["selftest_over_bare_p50"] = round(
        statistics.median(elapsed) / statistics.median(bare), 1
    )
    return figures
