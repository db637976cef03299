"""Ask a device, through the running gateway, to prove it reaches the C4: one TEST frame back.

The one call the provisioning tool and `auxilio selftest` make::

    res = request_selftest("mqtt://127.0.0.1:1883", "operator.json", "auxilio", "0938-NKRT")
    res.ok, res.round_trip_ms

The console holds no device key: it asks the gateway on ``<prefix>/c4/selftest``
over its own broker login, and the gateway signs the CONFIG downlink (SPEC
§8.10.1) and reports on ``<prefix>/c4/selftest/result/<request>``
(gateway/selftest.py). ``mode="now"``: the device sends a TEST at once.
``mode="window"``: for ``seconds`` (capped at 600), the wearer's next press
sends TEST instead of ALERT; a second press, a hold of 3x the alert hold, or a
press after the window is a real ALERT.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from auxilio.broker.url import BrokerAddress, parse_broker_url, with_credentials
from auxilio.errors import UsageError
from auxilio.gateway import selftest as G
from auxilio.gateway.control import ask_gateway
from auxilio.protocol import FrameError, codec

# States a SelftestResult can end in (the gateway's, plus the two this side adds).
SENT, RECEIVED, FAILED, MISSED = G.SENT, G.RECEIVED, G.FAILED, G.MISSED
NO_ANSWER = "no_answer"  # the gateway never answered (not running, or not subscribed)
TIMEOUT = "timeout"  # the CONFIG went out, but no TEST came back in time
# Default wait for the TEST: a "now" test on Wi-Fi takes well under a second;
# this leaves room for a device reconnecting with backoff.
NOW_TIMEOUT_S = 60.0
WINDOW_MAX_S = G.WINDOW_MAX_S
WINDOW_DEFAULT_S = G.WINDOW_DEFAULT_S

__all__ = [
    "FAILED",
    "MISSED",
    "NO_ANSWER",
    "RECEIVED",
    "SENT",
    "TIMEOUT",
    "SelftestResult",
    "request_selftest",
]


@dataclass(frozen=True)
class SelftestResult:
    """What became of one self-test request. ok only when the TEST came back."""

    request: str
    device: str  # printed form
    mode: str
    state: str  # received | sent | failed | missed | timeout | no_answer
    reason: str = ""
    states: tuple[str, ...] = ()  # every state the gateway reported, in order
    counter: int | None = None  # the TEST frame's counter
    config_seq: int | None = None
    round_trip_ms: float | None = None  # gateway: request taken -> TEST stored
    press_to_store_ms: float | None = None  # window mode: press -> stored (1 s resolution)
    elapsed_ms: float = 0.0  # this side: request published -> answer heard
    sent_ms: float | None = None  # this side: request published -> "sent" heard
    raw: dict[str, Any] = field(default_factory=dict)  # the last answer as the gateway sent it

    @property
    def ok(self) -> bool:
        return self.state == RECEIVED

    def as_dict(self) -> dict[str, Any]:
        return {
            "request": self.request,
            "device": self.device,
            "mode": self.mode,
            "state": self.state,
            "ok": self.ok,
            "reason": self.reason,
            "states": list(self.states),
            "counter": self.counter,
            "config_seq": self.config_seq,
            "round_trip_ms": self.round_trip_ms,
            "press_to_store_ms": self.press_to_store_ms,
            "elapsed_ms": round(self.elapsed_ms, 3),
            "sent_ms": None if self.sent_ms is None else round(self.sent_ms, 3),
        }


def _broker(broker_url: str, credentials: str | os.PathLike[str] | dict[str, str] | None) -> str:
    parse_broker_url(broker_url)  # a bad URL is a UsageError before anything else
    if isinstance(credentials, dict):
        try:
            user, password = str(credentials["username"]), str(credentials["password"])
        except KeyError:
            raise UsageError("broker credentials need a username and a password") from None
        b = parse_broker_url(broker_url)
        return BrokerAddress(b.host, b.port, b.tls, user, password).url()
    return with_credentials(broker_url, credentials)


def request_selftest(
    broker_url: str,
    credentials: str | os.PathLike[str] | dict[str, str] | None = None,
    prefix: str = codec.DEFAULT_PREFIX,
    device: str | int = "",
    mode: str = "now",
    seconds: int | None = None,
    timeout: float | None = None,
    *,
    operator: str | None = None,
    on_state: Callable[[dict[str, Any]], None] | None = None,
) -> SelftestResult:
    """Ask the gateway for a self-test of device and wait for its TEST frame (or the timeout).

    credentials: an operator.json path, a {"username", "password"} dict, or
    None (the URL's own login). seconds: the window length (mode "window",
    1-600, default 120). timeout: how long to wait for the TEST (default 60 s
    for "now", the window plus 30 s for "window"). on_state: called with each
    answer as it arrives (a progress line per state).

    Raises UsageError (bad arguments), ConnectionFailed (broker unreachable)
    or AuthenticationFailed (credentials refused): nothing was requested then.
    A gateway that refuses, or a device that stays silent, is a result, not an
    exception: look at .state and .reason.
    """
    try:
        dev = codec.device_int(device)
    except FrameError as exc:
        raise UsageError(f"bad device id {device!r} ({exc.reason})") from None
    if mode not in G.MODES:
        raise UsageError(f"mode must be one of {', '.join(G.MODES)}")
    if mode == "window":
        seconds = WINDOW_DEFAULT_S if seconds is None else int(seconds)
        if not 1 <= seconds <= WINDOW_MAX_S:
            raise UsageError(f"the test window must be 1-{WINDOW_MAX_S} s (SPEC §8.10.1)")
    else:
        seconds = 0
    if timeout is None:
        timeout = NOW_TIMEOUT_S if mode == "now" else seconds + 30.0
    if operator is not None and (not 1 <= len(operator) <= 64 or not operator.isprintable()):
        raise UsageError("operator name must be 1-64 printable characters")
    url = _broker(broker_url, credentials)
    rid = "st-" + uuid.uuid4().hex
    body: dict[str, Any] = {"request": rid, "device": codec.device_str(dev), "mode": mode}
    if mode == "window":
        body["seconds"] = seconds
    if operator:
        body["operator"] = operator
    heard: dict[str, float] = {}
    t0 = [time.perf_counter()]

    def published() -> None:
        t0[0] = time.perf_counter()

    def seen(answer: dict[str, Any]) -> None:
        heard.setdefault(str(answer.get("state")), (time.perf_counter() - t0[0]) * 1000.0)
        if on_state is not None:
            on_state(answer)

    answers = ask_gateway(
        url,
        f"{prefix}/{G.CONTROL_LEAF}",
        body,
        f"{prefix}/{G.RESULT_LEAF}/{rid}",
        lambda a: a.get("state") in (RECEIVED, FAILED, MISSED),
        timeout,
        what="self-test request",
        on_answer=seen,
        on_publish=published,
    )
    elapsed = (time.perf_counter() - t0[0]) * 1000.0
    states = tuple(str(a.get("state")) for a in answers)
    last = answers[-1] if answers else {}
    state = str(last.get("state", NO_ANSWER))
    if state == SENT:
        state = TIMEOUT
    return SelftestResult(
        request=rid,
        device=codec.device_str(dev),
        mode=mode,
        state=state,
        reason=str(last.get("reason", "")),
        states=states,
        counter=last.get("counter"),
        config_seq=next((a.get("config_seq") for a in answers if a.get("config_seq")), None),
        round_trip_ms=last.get("round_trip_ms"),
        press_to_store_ms=last.get("press_to_store_ms"),
        elapsed_ms=heard.get(state, elapsed),
        sent_ms=heard.get(SENT),
        raw=dict(last),
    )
