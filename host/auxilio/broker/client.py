"""A paho MQTT client set up the Auxilio way (TCP_NODELAY, credentials, TLS), and its errors."""

from __future__ import annotations

import socket
from typing import Any

import paho.mqtt.client as mqtt

from auxilio.broker.url import BrokerAddress
from auxilio.errors import AuxilioError

# CONNACK refusals that no retry can fix: MQTT 3.1.1 §3.2.2.3 return codes 4 (bad user
# name or password) and 5 (not authorized), which paho 2 reports as the MQTT 5
# reason codes 0x86 and 0x87.
_AUTH_REFUSALS = (4, 5, 0x86, 0x87)


class AuthenticationFailed(AuxilioError):
    """The broker refused our credentials: retrying cannot help."""

    exit_code = 5


def nodelay(client: mqtt.Client, userdata: Any, sock: Any) -> None:
    """on_socket_open: Nagle + delayed ACK costs ~88 ms per MQTT round trip (NOTES.md)."""
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (OSError, AttributeError):
        pass


def make_client(
    addr: BrokerAddress, client_id: str = "", *, clean_session: bool = True, **kwargs: Any
) -> mqtt.Client:
    c = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2,
        client_id=client_id,
        clean_session=clean_session,
        **kwargs,
    )
    if addr.username:
        c.username_pw_set(addr.username, addr.password)
    if addr.tls:
        c.tls_set()
    c.on_socket_open = nodelay
    return c


def is_auth_refusal(rc: Any) -> bool:
    return getattr(rc, "value", rc) in _AUTH_REFUSALS
