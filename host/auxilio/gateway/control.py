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
from dataclasses import dataclass

from auxilio.broker.client import AuthenticationFailed, is_auth_refusal, make_client
from auxilio.broker.url import parse_broker_url
from auxilio.errors import ConnectionFailed, UsageError
from auxilio.gateway.attend import CONTROL_LEAF, FAILED, REQUESTED, RESULT_LEAF, SENT

# How long to wait for the broker (connection, SUBACK, PUBACK) and for the gateway's answer.
BROKER_TIMEOUT_S = 10.0
RESULT_TIMEOUT_S = 10.0

__all__ = ["FAILED", "REQUESTED", "SENT", "AttendResult", "request_attend"]


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
    addr = parse_broker_url(broker_url)
    rid = "op-" + uuid.uuid4().hex
    # With a login the broker ties the session to the username (use_username_as_clientid).
    c = make_client(addr, addr.username or f"auxilio-attend-{uuid.uuid4().hex[:12]}")
    ready = threading.Event()
    answered = threading.Event()
    refused: list[str] = []
    answer: dict[str, object] = {}

    def on_connect(client, userdata, flags, rc, props=None):  # noqa: ANN001, ANN202 - paho API
        if rc.is_failure:
            refused.append("auth" if is_auth_refusal(rc) else str(rc))
            ready.set()
            return
        client.subscribe(f"{prefix}/{RESULT_LEAF}/{rid}", qos=1)

    def on_subscribe(client, *_a):  # noqa: ANN001, ANN202 - paho API
        ready.set()

    def on_message(client, userdata, msg):  # noqa: ANN001, ANN202 - paho API
        try:
            body = json.loads(msg.payload)
        except ValueError:
            return
        if isinstance(body, dict) and body.get("request") == rid:
            answer.update(body)
            answered.set()

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
        info = c.publish(
            f"{prefix}/{CONTROL_LEAF}",
            json.dumps({"alert": alert_id, "operator": operator, "request": rid}),
            qos=1,
        )
        info.wait_for_publish(BROKER_TIMEOUT_S)
        if not info.is_published():
            raise ConnectionFailed(f"broker {addr} did not confirm the attend request")
        if not answered.wait(result_timeout):
            return AttendResult(rid, alert_id, REQUESTED, "no answer from the gateway yet")
        return AttendResult(
            rid, alert_id, str(answer.get("state", FAILED)), str(answer.get("reason", ""))
        )
    finally:
        c.disconnect()
        c.loop_stop()
