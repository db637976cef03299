"""Operator actions towards devices: mark an alert attended and have the gateway send the signed ACK.

Design choice: the operator console never holds the gateway private key. It
writes "attending" to the registry (the authority, with an audit row) and asks
the running gateway, over the MQTT control topic ``<prefix>/c4/attend``
(QoS 1, so a request survives a gateway restart through its persistent
session), to sign and publish the ``attending`` ACK. The gateway only honours
requests for alerts the registry marks attending, so a forged control message
cannot make it ACK anything on its own.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from typing import Any

import paho.mqtt.client as mqtt

from auxilio.errors import ConnectionFailed, NotFoundError, UsageError
from auxilio.gateway.service import CONTROL_LEAF, parse_broker_url
from auxilio.gateway.store import Store

# How long to wait for the broker to take the request (PUBACK).
PUBLISH_TIMEOUT_S = 10.0


def publish_attend_request(
    broker_url: str, alert_id: int, operator: str, prefix: str = "auxilio"
) -> None:
    """Publish {"alert": id, "operator": name} on the control topic and wait for the PUBACK."""
    addr = parse_broker_url(broker_url)
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"auxilio-attend-{time.time_ns()}")
    if addr.username:
        c.username_pw_set(addr.username, addr.password)
    if addr.tls:
        c.tls_set()
    c.on_socket_open = lambda cl, ud, s: s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    done = threading.Event()
    c.on_connect = lambda *a: done.set()
    try:
        c.connect(addr.host, addr.port, 30)
    except OSError as exc:
        raise ConnectionFailed(
            f"broker {addr.host}:{addr.port} unreachable ({type(exc).__name__})"
        ) from None
    c.loop_start()
    try:
        if not done.wait(PUBLISH_TIMEOUT_S):
            raise ConnectionFailed(f"broker {addr.host}:{addr.port} did not accept the connection")
        info = c.publish(
            f"{prefix}/{CONTROL_LEAF}", json.dumps({"alert": alert_id, "operator": operator}), qos=1
        )
        info.wait_for_publish(PUBLISH_TIMEOUT_S)
        if not info.is_published():
            raise ConnectionFailed("broker did not confirm the attend request")
    finally:
        c.disconnect()
        c.loop_stop()


def attend(
    registry: Any, alert_id: int, operator: str, broker_url: str | None, prefix: str = "auxilio"
) -> dict[str, Any]:
    """Mark the alert attended by operator; then ask the gateway to send the ACK. Returns the row."""
    if not operator or len(operator) > 64:
        raise UsageError("operator name must be 1-64 characters")
    row = Store(registry).mark_attending(alert_id, operator, time.time())
    if row is None:
        raise NotFoundError(f"alert {alert_id} not found")
    if row["type"] not in ("ALERT", "TEST"):
        # Still recorded, but only alerts make a device show "help is coming".
        return row
    if broker_url:
        publish_attend_request(broker_url, alert_id, operator, prefix)
    return row
