"""Many device MQTT sessions on one bench thread: fire a burst of uplinks, time every downlink's arrival.

Each device is a real paho client with its own TCP connection (TCP_NODELAY),
subscribed at QoS 1 to its own ``.../down`` topic as the firmware is. All of
them run on paho's external-loop API under one epoll selector on the calling
thread: no network thread per client, so an arrival time is taken when the
bytes are read, not when a thread is next scheduled under the GIL (100 paho
loop threads added milliseconds of jitter here). Payloads are kept raw with
their arrival time and decoded afterwards, off the timed path.
"""

from __future__ import annotations

import selectors
import socket
import time
from collections.abc import Callable, Iterable
from typing import Any

import paho.mqtt.client as mqtt
from auxilio.protocol import FrameError, codec

# Longest select() wait per pump turn (bounds how late a deadline is noticed).
PUMP_WAIT_S = 0.01
# Keepalive bookkeeping (paho's loop_misc) at most this often.
MISC_EVERY_S = 1.0
CONNECT_TIMEOUT_S = 30.0


class Fleet:
    """Device sessions for `devices` (id -> secret) on `broker`, plus optional extra subscriptions."""

    def __init__(
        self,
        broker: Any,
        devices: dict[int, bytes],
        *,
        prefix: str = codec.DEFAULT_PREFIX,
        extra: Callable[[int], Iterable[str]] = lambda dev: (),
    ) -> None:
        self.prefix = prefix
        self.keys = {d: codec.Keys(s) for d, s in devices.items()}
        self.arrivals: list[tuple[float, str, bytes]] = []  # (perf_counter, topic, payload)
        self.sent: dict[tuple[int, int], float] = {}  # (device, counter) -> publish time
        self._decoded: list[tuple[int, dict[str, Any]] | None] = []  # arrivals[i] decoded
        self._sel = selectors.DefaultSelector()
        self._clients: dict[int, mqtt.Client] = {}
        self._subscribed = 0
        self._last_misc = time.monotonic()
        for dev in devices:
            c = mqtt.Client(
                mqtt.CallbackAPIVersion.VERSION2,
                client_id=codec.device_str(dev),
                clean_session=True,
            )
            c.on_socket_open = lambda cl, ud, s: s.setsockopt(
                socket.IPPROTO_TCP, socket.TCP_NODELAY, 1
            )
            topics = [(codec.topic(prefix, dev, "down"), 1)] + [(t, 1) for t in extra(dev)]
            c.on_connect = lambda cl, ud, fl, rc, pr, topics=topics: cl.subscribe(topics)
            c.on_subscribe = self._on_subscribe
            c.on_message = self._on_message
            c.max_inflight_messages_set(0)  # never queue our own burst inside paho
            c.max_queued_messages_set(0)
            c.connect(broker.host, broker.port, 60)
            self._sel.register(c.socket(), selectors.EVENT_READ, c)
            self._clients[dev] = c
        if not self.pump(lambda: self._subscribed == len(self._clients), CONNECT_TIMEOUT_S):
            self.close()
            raise RuntimeError(f"fleet: {self._subscribed}/{len(devices)} devices subscribed")

    def _on_subscribe(self, *_: Any) -> None:
        self._subscribed += 1

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        self.arrivals.append((time.perf_counter(), msg.topic, msg.payload))

    def pump(self, until: Callable[[], bool], timeout: float) -> bool:
        """Run every session's network I/O until `until()` holds (True) or `timeout` s pass."""
        deadline = time.monotonic() + timeout
        while not until():
            now = time.monotonic()
            if now >= deadline:
                return False
            for c in self._clients.values():
                if c.want_write():
                    c.loop_write()
            for key, _mask in self._sel.select(min(PUMP_WAIT_S, deadline - now)):
                key.data.loop_read()
            if now - self._last_misc >= MISC_EVERY_S:
                self._last_misc = now
                for c in self._clients.values():
                    c.loop_misc()
        return True

    def burst(self, frames: list[tuple[int, int, bytes]], topic_leaf: str = "up") -> float:
        """Publish every (device, counter, frame) at QoS 1 as fast as the sockets take them.

        Returns the time the first one was handed to its socket.
        """
        t0 = time.perf_counter()
        for dev, counter, frame in frames:
            self._clients[dev].publish(codec.topic(self.prefix, dev, topic_leaf), frame, qos=1)
            self.sent[(dev, counter)] = time.perf_counter()
        return t0

    def publish(self, dev: int, topic: str, payload: bytes) -> None:
        self._clients[dev].publish(topic, payload, qos=1)

    def received(
        self, since: int = 0, ftype: str = "ACK"
    ) -> dict[tuple[int, int], tuple[float, dict[str, Any]]]:
        """First verified frame of `ftype` per (device, counter) among arrivals[since:], with its
        arrival time. The device is the topic's third level (``<prefix>/v1/<dev>/down``, or an
        echo's ``bench/echo/<dev>``); a payload that fails verification is ignored, as a device
        ignores a forged ACK. Each arrival is decoded once.
        """
        for _t, topic, payload in self.arrivals[len(self._decoded) :]:
            try:
                dev = codec.device_int(topic.split("/")[2])
                self._decoded.append((dev, codec.decode(payload, self.keys[dev])))
            except (FrameError, KeyError, IndexError, ValueError):
                self._decoded.append(None)
        out: dict[tuple[int, int], tuple[float, dict[str, Any]]] = {}
        for (t, _topic, _payload), d in zip(
            self.arrivals[since:], self._decoded[since:], strict=True
        ):
            if d is not None and d[1]["type"] == ftype:
                out.setdefault((d[0], d[1]["counter"]), (t, d[1]))
        return out

    def close(self) -> None:
        for c in self._clients.values():
            try:
                c.disconnect()
                c.loop_write()
            except Exception:  # noqa: BLE001 - closing anyway
                pass
            sock = c.socket()
            if sock is not None:
                try:
                    self._sel.unregister(sock)
                except (KeyError, ValueError):
                    pass
                sock.close()
        self._sel.close()

    def __enter__(self) -> Fleet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
