"""A test C4 on the broker: paho + the codec. Verifies uplinks, answers signed ACKs, records all.

The one test peer for firmware, modem and emulator tests (and downstream
projects): it is not the gateway (auxilio.testing.c4 runs the real one), it is
a C4 a test can steer::

    peer = C4Peer(mqtt_broker, {device: secret})   # ACKs every non-heartbeat uplink
    peer.mode = "none"                             # ...or answers nothing
    alert = peer.wait("ALERT")[0]                  # verified and decoded with the codec
    peer.ack(device, alert["counter"], "ALERT", "attending")

It also records every message on the topics it subscribes to (``messages``),
so a test of the MQTT layer can watch raw payloads and publish its own.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any, Protocol

import paho.mqtt.client as paho

from auxilio.protocol import FrameError, codec
from auxilio.testing.wait import WAIT_S, wait_for

# Answers the peer gives to verified uplinks (HEARTBEATs are never answered, SPEC §12.4).
MODES = ("ack", "none", "time_nak_once", "attending")
# How long the constructor waits for the broker's CONNACK and SUBACK.
CONNECT_S = 15.0
# paho's reconnect backoff after the broker went away (a test restarts it on the same port).
RECONNECT_MIN_S, RECONNECT_MAX_S = 0.1, 1.0
# Keys of a decoded frame that may differ between two transmissions of one counter (§12.3).
_PER_TRANSMISSION = {
    "raw",
    "dup",
    "at",
    "received_at",
    "timestamp",
    "retransmission",
    "clock_synced",
}


class _Broker(Protocol):
    host: str
    port: int


class C4Peer:
    """Subscribes to every device's uplink and status; ACKs what it can verify, as `mode` says."""

    def __init__(
        self,
        broker: _Broker | tuple[str, int],
        secrets: dict[str, bytes | str] | None = None,
        *,
        prefix: str = "auxilio",
        mode: str = "ack",
        topics: list[str] | None = None,
        client_id: str | None = None,
        clean: bool = True,
    ) -> None:
        """secrets: device id -> secret (bytes or hex). topics: exactly these instead of
        every device's up and status topics. clean=False keeps a persistent session."""
        host, port = broker if isinstance(broker, tuple) else (broker.host, broker.port)
        self.secrets = {
            d: bytes.fromhex(s) if isinstance(s, str) else bytes(s)
            for d, s in (secrets or {}).items()
        }
        self.prefix = prefix
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}")
        self.mode = mode
        self.ack_delay = 0.0  # seconds before each automatic answer
        self.frames: list[dict[str, Any]] = []  # verified frames, in arrival order
        self.bad: list[str] = []  # reasons of uplinks from known devices that failed (§11)
        self.status: dict[str, str] = {}  # last status (LWT/online) per device
        self.messages: list[paho.MQTTMessage] = []  # everything received, raw
        self.acks_sent: list[bytes] = []
        self.topics = (
            [f"{prefix}/v1/+/up", f"{prefix}/v1/+/status"] if topics is None else list(topics)
        )
        self.subscribed = threading.Event()  # set on each (re)connection's SUBACK
        self._lock = threading.Lock()
        self._nakked: set[tuple[str, int]] = set()
        self.client = paho.Client(
            paho.CallbackAPIVersion.VERSION2,
            client_id=client_id or f"c4peer-{os.getpid()}-{id(self)}",
            clean_session=clean,
        )
        self.client.on_message = self._on_message
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *_a: self.subscribed.set()
        self.client.reconnect_delay_set(RECONNECT_MIN_S, RECONNECT_MAX_S)
        self.client.connect(host, port, keepalive=30)
        self.client.loop_start()
        if not self.subscribed.wait(CONNECT_S):
            self.close()
            raise AssertionError(f"the C4 peer could not subscribe on {host}:{port}")

    # -- receiving ----------------------------------------------------------------

    def _on_connect(
        self, client: paho.Client, _u: object, _f: object, _rc: object, _p=None
    ) -> None:  # noqa: ANN001
        if self.topics:
            client.subscribe([(t, 1) for t in self.topics])
        else:
            self.subscribed.set()

    def _on_message(self, client: paho.Client, _u: object, msg: paho.MQTTMessage) -> None:
        with self._lock:
            self.messages.append(msg)
        parts = msg.topic.split("/")
        if len(parts) != 4 or parts[0] != self.prefix or parts[1] != "v1":
            return
        dev, leaf = parts[2], parts[3]
        if leaf == "status":
            self.status[dev] = msg.payload.decode(errors="replace")
            return
        secret = self.secrets.get(dev)
        if leaf not in ("up", "down") or secret is None:
            return
        try:
            f = codec.decode(msg.payload, secret)
        except FrameError as e:
            with self._lock:
                self.bad.append(e.reason)
            return
        f["raw"] = bytes(msg.payload)
        f["dup"] = bool(msg.dup)
        f["at"] = time.monotonic()
        f["received_at"] = time.time()
        with self._lock:
            self.frames.append(f)
        if leaf == "down" or f["type"] == "HEARTBEAT" or self.mode == "none":
            return  # a downlink (the gateway's, when subscribed) or fire-and-forget (§12.4)
        if self.mode == "time_nak_once" and (dev, f["counter"]) not in self._nakked:
            self._nakked.add((dev, f["counter"]))
            self._answer(dev, f["counter"], f["type"], "time_nak")
            return
        disp = "attending" if self.mode == "attending" else "received"
        self._answer(dev, f["counter"], f["type"], disp)

    def _answer(self, dev: str, counter: int, ftype: str, disp: str) -> None:
        if self.ack_delay:
            threading.Timer(self.ack_delay, self.ack, (dev, counter, ftype, disp)).start()
        else:
            self.ack(dev, counter, ftype, disp)

    # -- queries --------------------------------------------------------------------

    def of(self, ftype: str | None = None, dev: str | None = None) -> list[dict[str, Any]]:
        """Verified frames (every reception), optionally of one type and device."""
        with self._lock:
            return [
                f
                for f in self.frames
                if (ftype is None or f["type"] == ftype) and (dev is None or f["device"] == dev)
            ]

    def distinct(self, ftype: str | None = None) -> list[dict[str, Any]]:
        """Uplinks after dedup by (device, counter), first reception kept."""
        seen: dict[tuple[str, int], dict[str, Any]] = {}
        for f in self.of(ftype):
            seen.setdefault((f["device"], f["counter"]), f)
        return list(seen.values())

    def wait(
        self, ftype: str, count: int = 1, timeout: float = WAIT_S, raw: bool = False
    ) -> list[dict[str, Any]]:
        """Wait for count frames of ftype: distinct counters, or every reception with raw."""
        get = self.of if raw else self.distinct
        return wait_for(
            lambda: (lambda got: got if len(got) >= count else None)(get(ftype)),
            timeout,
            f"{count} {ftype} frame(s)",
        )

    def wait_frame(self, timeout: float = WAIT_S, **fields: Any) -> dict[str, Any]:
        """The first verified uplink with these field values (type=, device=, counter=...)."""

        def find() -> dict[str, Any] | None:
            for f in self.of():
                if all(f.get(k) == v for k, v in fields.items()):
                    return f
            return None

        return wait_for(find, timeout, f"an uplink with {fields}")

    def received(self, topic: str) -> list[paho.MQTTMessage]:
        """Raw messages received on one topic, in order."""
        with self._lock:
            return [m for m in self.messages if m.topic == topic]

    def wait_message(self, topic: str, payload: bytes, timeout: float = WAIT_S) -> paho.MQTTMessage:
        """The first raw message with this payload on this topic."""

        def find() -> paho.MQTTMessage | None:
            return next((m for m in self.received(topic) if m.payload == payload), None)

        return wait_for(find, timeout, f"{payload!r} on {topic}")

    def counters_consistent(self) -> dict[tuple[str, int], dict[str, Any]]:
        """Assert every (device, counter) seen carries one content (type + payload), SPEC §12.1."""
        seen: dict[tuple[str, int], dict[str, Any]] = {}
        for f in self.of():
            key = (f["device"], f["counter"])
            content = {k: v for k, v in f.items() if k not in _PER_TRANSMISSION}
            if key in seen:
                assert seen[key] == content, f"counter {key} reused with different content"
            else:
                seen[key] = content
        return seen

    # -- sending --------------------------------------------------------------------

    def ack_frame(
        self,
        dev: str,
        counter: int,
        ftype: str,
        disposition: str = "received",
        reason: str = "none",
        secret: bytes | None = None,
        timestamp: int | None = None,
        high_water: int | None = None,
        clock_synced: bool = True,
    ) -> bytes:
        """A signed ACK (SPEC §8.9); another secret makes a forgery."""
        return codec.encode(
            {
                "type": "ACK",
                "device": dev,
                "counter": counter,
                "timestamp": int(time.time()) if timestamp is None else timestamp,
                "clock_synced": clock_synced,
                "acked_type": ftype,
                "disposition": disposition,
                "reason": reason,
                "high_water": counter if high_water is None else high_water,
            },
            secret or self.secrets[dev],
        )

    def ack(
        self, dev: str, counter: int, ftype: str, disposition: str = "received", **kw: Any
    ) -> None:
        """Send an ACK for (counter, ftype) to the device (kw: reason, timestamp, ...)."""
        frame = self.ack_frame(dev, counter, ftype, disposition, **kw)
        with self._lock:
            self.acks_sent.append(frame)
        self.send_raw(dev, frame)

    def send_config(self, dev: str, seq: int, **fields: Any) -> None:
        """A signed CONFIG (SPEC §8.10) with sequence number seq."""
        frame = codec.encode(
            {
                "type": "CONFIG",
                "device": dev,
                "counter": seq,
                "timestamp": int(time.time()),
                **fields,
            },
            self.secrets[dev],
        )
        self.send_raw(dev, frame)

    def send_raw(self, dev: str, frame: bytes) -> None:
        """Any bytes on the device's down topic (replays, garbage)."""
        self.publish(f"{self.prefix}/v1/{dev}/down", frame)

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        """Publish; waits for the broker's PUBACK unless called from paho's own thread."""
        info = self.client.publish(topic, payload, qos, retain)
        if threading.current_thread() is not getattr(self.client, "_thread", None):
            info.wait_for_publish(CONNECT_S)  # inside paho's callback thread it would deadlock

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()
