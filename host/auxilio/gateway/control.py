"""Operator consoles asking the gateway to attend an alert, and hearing what became of it.

Consoles (`auxilio attend`, `auxilio monitor`) hold no device key and never
write the registry (DESIGN §1). They publish a request on
``<prefix>/c4/attend`` over their own authenticated login and wait for the
gateway's answer on ``<prefix>/c4/attend/result/<request>``: ``sent`` (the
gateway stored the alert itself, re-verified it and the broker took the
signed ACK), ``failed`` with a reason, or nothing yet (``requested``: the
request waits in the gateway's persistent session). Only ``sent`` means the
wearer is being told "help is coming".
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from auxilio.broker.client import AuthenticationFailed, is_auth_refusal, make_client
from auxilio.broker.url import parse_broker_url
from auxilio.errors import ConnectionFailed, UsageError
from auxilio.gateway.attend import CONTROL_LEAF, FAILED, REQUESTED, RESULT_LEAF, SENT

# How long to wait for the broker (connection, SUBACK, PUBACK) and for the gateway's answer.
BROKER_TIMEOUT_S = 10.0
RESULT_TIMEOUT_S = 10.0

__all__ = ["FAILED", "REQUESTED", "SENT", "AttendResult", "ask_gateway", "request_attend"]


@dataclass(frozen=True)
class AttendResult:
    request: str
    alert: int
    state: str  # sent | failed | requested (no answer yet)
    reason: str = ""

    @property
    def sent(self) -> bool:
        return self.state == SENT


def request_attend(
    broker_url: str,
    alert_id: int,
    operator: str,
    prefix: str = "auxilio",
    *,
    result_timeout: float = RESULT_TIMEOUT_S,
) -> AttendResult:
    """Ask the running gateway to attend alert_id; returns the gateway's answer.

    Raises ConnectionFailed (broker unreachable, or it did not take the
    request) or AuthenticationFailed (wrong operator credentials); in both
    cases nothing was requested.
    """
    if not operator or len(operator) > 64 or not operator.isprintable():
        raise UsageError("operator name must be 1-64 printable characters")
    if not 1 <= alert_id < 1 << 63:
        raise UsageError("alert id must be a positive number below 2^63")
    rid = "op-" + uuid.uuid4().hex
    answers = ask_gateway(
        broker_url,
        f"{prefix}/{CONTROL_LEAF}",
        {"alert": alert_id, "operator": operator, "request": rid},
        f"{prefix}/{RESULT_LEAF}/{rid}",
        lambda answer: True,
        result_timeout,
        what="attend request",
    )
    if not answers:
        return AttendResult(rid, alert_id, REQUESTED, "no answer from the gateway yet")
    answer = answers[-1]
    return AttendResult(
        rid, alert_id, str(answer.get("state", FAILED)), str(answer.get("reason", ""))
    )


def ask_gateway(
    broker_url: str,
    topic: str,
    body: dict[str, Any],
    result_topic: str,
    done: Callable[[dict[str, Any]], bool],
    result_timeout: float,
    *,
    what: str = "request",
    on_answer: Callable[[dict[str, Any]], None] | None = None,
    on_publish: Callable[[], None] | None = None,
) -> list[dict[str, Any]]:
    """Publish one JSON request to the gateway and collect its answers on result_topic.

    Subscribes before publishing (so no answer is missed), then returns every
    answer for body["request"] in arrival order, up to and including the
    first one done() accepts, or what came before result_timeout ran out.
    on_publish is called just before the request goes out (for timings).
    Raises ConnectionFailed (broker unreachable, or it did not take the
    request) or AuthenticationFailed (wrong credentials): nothing was asked.
    """
    addr = parse_broker_url(broker_url)
    rid = body["request"]
    # With a login the broker ties the session to the username (use_username_as_clientid).
    c = make_client(addr, addr.username or f"auxilio-console-{uuid.uuid4().hex[:12]}")
    ready = threading.Event()
    finished = threading.Event()
    refused: list[str] = []
    answers: list[dict[str, Any]] = []
    lock = threading.Lock()

    def on_connect(client, userdata, flags, rc, props=None):  # noqa: ANN001, ANN202 - paho API
        if rc.is_failure:
            refused.append("auth" if is_auth_refusal(rc) else str(rc))
            ready.set()
            return
        client.subscribe(result_topic, qos=1)

    def on_subscribe(client, *_a):  # noqa: ANN001, ANN202 - paho API
        ready.set()

    def on_message(client, userdata, msg):  # noqa: ANN001, ANN202 - paho API
        try:
            answer = json.loads(msg.payload)
        except ValueError:
            return
        if not isinstance(answer, dict) or answer.get("request") != rid or finished.is_set():
            return
        with lock:
            answers.append(answer)
        if on_answer is not None:
            on_answer(answer)
        if done(answer):
            finished.set()

    c.on_connect = on_connect
    c.on_subscribe = on_subscribe
    c.on_message = on_message
    try:
        c.connect(addr.host, addr.port, 30)
    except OSError as exc:
        raise ConnectionFailed(f"broker {addr} unreachable ({type(exc).__name__})") from None
    c.loop_start()
    try:
        if not ready.wait(BROKER_TIMEOUT_S):
            raise ConnectionFailed(f"broker {addr} did not accept the connection")
        if refused:
            if refused[0] == "auth":
                raise AuthenticationFailed(
                    f"broker {addr} refused the operator credentials (check --broker-credentials)"
                )
            raise ConnectionFailed(f"broker {addr} refused the connection ({refused[0]})")
        if on_publish is not None:
            on_publish()
        info = c.publish(topic, json.dumps(body), qos=1)
        info.wait_for_publish(BROKER_TIMEOUT_S)
        if not info.is_published():
            raise ConnectionFailed(f"broker {addr} did not confirm the {what}")
        finished.wait(result_timeout)
        with lock:
            return list(answers)
    finally:
        c.disconnect()
        c.loop_stop()
