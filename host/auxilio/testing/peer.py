"""A minimal C4 peer: paho + the codec; verifies uplinks and ACKs them (tests, emulated figures)."""

from __future__ import annotations

import threading
import time
from typing import Any

import paho.mqtt.client as mqtt

from auxilio.protocol import FrameError, codec


class AckPeer:
    """Subscribes to every device's uplink; decodes with the known secrets; ACKs non-heartbeats."""

    def __init__(self, host: str, port: int, secrets: dict[str, bytes], ack: bool = True) -> None:
        self.secrets = dict(secrets)
        self.ack = ack
        self.frames: list[dict[str, Any]] = []  # decoded uplinks, in arrival order
        self.bad = 0
        self._cond = threading.Condition()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"peer-{id(self)}")
        self.client.on_message = self._on_message
        self.client.connect(host, port)
        self.client.subscribe("auxilio/v1/+/up", qos=1)
        self.client.loop_start()

    def _on_message(self, client: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        device = msg.topic.split("/")[2]
        secret = self.secrets.get(device)
        if secret is None:
            return
        try:
            f = codec.decode(msg.payload, secret)
        except FrameError:
            with self._cond:
                self.bad += 1
            return
        f["received_at"] = time.time()
        with self._cond:
            self.frames.append(f)
            self._cond.notify_all()
        if self.ack and f["type"] != "HEARTBEAT":
            reply = codec.encode(
                {
                    "type": "ACK",
                    "device": device,
                    "counter": f["counter"],
                    "timestamp": int(time.time()),
                    "acked_type": f["type"],
                    "disposition": "received",
                    "reason": "none",
                    "high_water": f["counter"],
                },
                secret,
            )
            client.publish(codec.topic("auxilio", codec.device_int(device), "down"), reply, qos=1)

    def wait_frame(self, timeout: float = 30.0, **fields: Any) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for f in self.frames:
                    if all(f.get(k) == v for k, v in fields.items()):
                        return f
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no uplink with {fields}")
                self._cond.wait(min(left, 0.25))

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()
