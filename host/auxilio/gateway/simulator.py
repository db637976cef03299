"""A CPython simulated device (codec + paho): publishes signed uplinks and collects verified ACKs.

For tests, the gateway bench and the demo before real firmware is available.
It is not the firmware: it keeps no outbox and retries only when told to.
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import paho.mqtt.client as mqtt

from auxilio.protocol import FrameError, codec

# Default ALERT location for simulations (a public square, not a person).
SIM_LOCATION = {
    "lat_e7": 194326080,
    "lon_e7": -991332080,
    "accuracy_m": 12,
    "fix_age_s": 3,
    "pressed_at": None,
    "battery": 80,
    "rssi": -61,
    "bearer": "wifi",
}


class SimDevice:
    """One simulated device on its own MQTT connection (TCP_NODELAY, clean session off)."""

    def __init__(
        self,
        device: int,
        secret: bytes,
        host: str,
        port: int,
        *,
        prefix: str = codec.DEFAULT_PREFIX,
        counter: int = 1,
        password: str | None = None,
        username: str | None = None,
    ) -> None:
        """``username``: log in as someone else than the device (default: its printed id)."""
        self.device = device
        self.label = codec.device_str(device)
        self.keys = codec.Keys(secret)
        self.prefix = prefix
        self.counter = counter
        self.acks: dict[int, list[dict[str, Any]]] = {}
        self.ack_times: dict[int, float] = {}
        self.bad_downlinks = 0
        self._cond = threading.Condition()
        self.up = codec.topic(prefix, device, "up")
        self.down = codec.topic(prefix, device, "down")
        c = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=username or self.label, clean_session=False
        )
        c.on_socket_open = lambda cl, ud, s: s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        c.on_message = self._on_message
        if password is not None:
            # username = printed device id (SPEC §10.2)
            c.username_pw_set(username or self.label, password)
        c.will_set(codec.topic(prefix, device, "status"), b"offline", qos=1, retain=True)
        self._subscribed = threading.Event()
        c.on_connect = self._on_connect
        c.on_subscribe = lambda *a: self._subscribed.set()
        self.client = c
        c.connect(host, port, 30)
        c.loop_start()
        if not self._subscribed.wait(10):
            raise TimeoutError("simulated device: no SUBACK from the broker")

    def _on_connect(self, client: mqtt.Client, *_: Any) -> None:
        client.subscribe(self.down, qos=1)
        client.publish(
            codec.topic(self.prefix, self.device, "status"), b"online", qos=1, retain=True
        )

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        t = time.perf_counter()
        try:
            f = codec.decode(msg.payload, self.keys)
        except FrameError:
            self.bad_downlinks += 1
            return
        if f["type"] != "ACK":
            return
        with self._cond:
            self.acks.setdefault(f["counter"], []).append(f)
            self.ack_times.setdefault(f["counter"], t)
            self._cond.notify_all()

    # ------------------------------------------------------------ frames ---

    def frame(
        self, ftype: str = "ALERT", counter: int | None = None, **fields: Any
    ) -> tuple[int, bytes]:
        """Encode the next frame (or the given counter); returns (counter, bytes)."""
        if counter is None:
            counter = self.counter
            self.counter += 1
        f: dict[str, Any] = {
            "type": ftype,
            "device": self.device,
            "counter": counter,
            "timestamp": 0,
        }
        if ftype in ("ALERT", "TEST"):
            f.update(SIM_LOCATION)
        elif ftype == "HEARTBEAT":
            f.update(
                battery=90, rssi=-60, bearer="wifi", outbox=0, fw="0.1.0", status=0, interval_s=60
            )
        elif ftype == "CANCEL":
            f.update(ref_counter=max(counter - 1, 0), reason="gesture")
        elif ftype == "TAMPER":
            f.update(open=True)
        elif ftype == "POWER":
            f.update(mains=False, battery=70)
        elif ftype == "LOW_BATTERY":
            f.update(battery=15, threshold=20)
        elif ftype == "BOOT":
            f.update(reset_cause="power_on", fw="0.1.0", outbox=0)
        f.update(fields)
        return counter, codec.encode(f, self.keys)

    def publish(self, frame: bytes, topic: str | None = None) -> None:
        self.client.publish(topic or self.up, frame, qos=1)

    def send(self, ftype: str = "ALERT", **fields: Any) -> int:
        counter, frame = self.frame(ftype, **fields)
        self.publish(frame)
        return counter

    def wait_ack(self, counter: int, timeout: float = 15.0, n: int = 1) -> dict[str, Any] | None:
        """The n-th verified ACK for counter, or None after timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self.acks.get(counter, [])) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(left)
            return self.acks[counter][n - 1]

    def wait_disposition(
        self, counter: int, disposition: str, timeout: float = 15.0
    ) -> dict[str, Any] | None:
        """The first verified ACK for counter with this disposition, or None after timeout.

        A restarted gateway may re-send "received" first (it re-acks what it stored),
        so waiting for the n-th ACK would race it.
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for ack in self.acks.get(counter, []):
                    if ack["disposition"] == disposition:
                        return ack
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(left)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
