"""The C4 gateway service: MQTT in, verify, group-commit, signed ACK out, supervise, forward.

One thread runs paho's network loop itself (no loop_start): it reads every
message that is waiting (manual PUBACK), verifies the batch, commits it in one
transaction, and only then publishes the ACKs and the MQTT PUBACKs (SPEC §12.4).
One thread, because handing messages to a worker and ACKs back to paho's
network thread cost two thread wake-ups per alert (~0.3 ms of a ~1 ms round
trip here); group commit comes from reading everything waiting before committing.
A gateway killed at any point before the commit leaves the messages un-PUBACKed
in its persistent session, so the broker redelivers them; killed after the
commit, the redelivered copies are duplicates and get the stored disposition.
"""

from __future__ import annotations

import json
import logging
import os
import select
import signal
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import paho.mqtt.client as mqtt

from auxilio.errors import ConnectionFailed, UsageError
from auxilio.gateway import verifier as V
from auxilio.gateway.forward import Forwarder, NullForwarder
from auxilio.gateway.store import SUPERVISION_LOST, SUPERVISION_RESTORED, Batch, Store
from auxilio.gateway.supervision import GRACE_S, Supervisor
from auxilio.protocol import codec

log = logging.getLogger(__name__)

# Largest group commit. The broker's in-flight window (mosquitto
# max_inflight_messages, default 20) usually bounds a batch well below this.
MAX_BATCH = 512
# A frame whose verification raised this many times is dropped (counted as
# "drop_poison") instead of being redelivered forever.
POISON_LIMIT = 3
# Longest wait for network traffic in one loop turn (bounds stop() latency).
NET_WAIT_S = 0.1
# How often supervision deadlines are checked when idle.
SUPERVISION_TICK_S = 0.5
# Reconnect backoff towards the broker (first attempt, then doubling up to the cap).
RECONNECT_MIN_S = 0.5
RECONNECT_MAX_S = 30.0
KEEPALIVE_S = 30
# Backoff while the registry refuses a commit (nothing is acked meanwhile).
COMMIT_RETRY_MIN_S = 0.2
COMMIT_RETRY_MAX_S = 10.0
# Lifecycle state (revoked, lost...) of a cached device is re-read from the
# registry when older than this: a revocation bites within this delay, and the
# hot path does not pay a query per batch.
STATE_REFRESH_S = 1.0
# acked_at bookkeeping rides on the next group commit; when the gateway has been
# idle this long it is flushed on its own (never on the ACK path).
ACKED_FLUSH_S = 1.0
# Debug hook for the crash tests: "before_commit" or "after_commit" makes the
# process SIGKILL itself at that point of the first batch holding a new frame.
CRASH_ENV = "AUXILIO_GATEWAY_CRASH_AT"
CONTROL_LEAF = "c4/attend"  # <prefix>/c4/attend: {"alert": id, "operator": name}

# Frame types that are raised as C4 events (besides being stored and acked).
EVENT_TYPES = {
    codec.TAMPER: "TAMPER",
    codec.POWER: "POWER",
    codec.LOW_BATTERY: "LOW_BATTERY",
    codec.BOOT: "BOOT",
}
ALERT_TYPES = (codec.ALERT, codec.CANCEL)


@dataclass
class BrokerAddress:
    host: str
    port: int
    tls: bool
    username: str | None
    password: str | None


def _redact(url: str) -> str:
    """The URL with any password replaced, for error messages."""
    head, sep, tail = url.rpartition("@")
    if not sep or ":" not in head.split("//", 1)[-1]:
        return url
    scheme, _s, cred = head.partition("//")
    return f"{scheme}//{cred.split(':', 1)[0]}:***@{tail}"


def parse_broker_url(url: str) -> BrokerAddress:
    """mqtt://[user:pass@]host[:port] or mqtts://… ; anything else is a UsageError."""
    try:
        u = urlsplit(url)
        port = u.port
    except ValueError:
        raise UsageError(f"bad broker URL {_redact(url)!r}") from None
    if u.scheme not in ("mqtt", "mqtts") or not u.hostname:
        raise UsageError(
            f"bad broker URL {_redact(url)!r} (expected mqtt://host:port or mqtts://host:port)"
        )
    tls = u.scheme == "mqtts"
    return BrokerAddress(
        u.hostname,
        port or (8883 if tls else 1883),
        tls,
        unquote(u.username) if u.username else None,
        unquote(u.password) if u.password else None,
    )


def with_credentials(url: str, path: str | os.PathLike[str] | None) -> str:
    """Add the username/password from a credentials file ({"username", "password"},
    as `auxilio broker config` writes for the gateway) to a broker URL, so the
    password never appears on a command line."""
    if not path:
        return url
    from urllib.parse import quote

    try:
        data = json.loads(open(path).read())
        user, password = data["username"], data["password"]
    except (OSError, ValueError, KeyError, TypeError):
        raise UsageError(f"cannot read broker credentials from {path}") from None
    b = parse_broker_url(url)
    scheme = "mqtts" if b.tls else "mqtt"
    return (
        f"{scheme}://{quote(str(user), safe='')}:{quote(str(password), safe='')}@{b.host}:{b.port}"
    )


def _nodelay(client: mqtt.Client, userdata: Any, sock: Any) -> None:
    # Nagle + delayed ACK costs ~88 ms per MQTT round trip (NOTES.md).
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (OSError, AttributeError):
        pass


def _event(
    device: int | None, etype: str, at: float, detail: dict[str, Any] | None = None
) -> dict[str, Any]:
    return {"device_id": device, "type": etype, "at": at, "detail": detail or {}, "alert_id": None}


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t * 1000) % 1000:03d}Z"


class Gateway:
    """One gateway process. start()/stop(), or run() until SIGINT/SIGTERM."""

    def __init__(
        self,
        registry: Any,
        private_key: Any,
        broker_url: str,
        *,
        prefix: str = codec.DEFAULT_PREFIX,
        client_id: str = "auxilio-gateway",
        forwarder: Forwarder | None = None,
        grace_s: float = GRACE_S,
        clock: Any = time.time,
    ) -> None:
        self.registry = registry
        self.store = Store(registry)
        self._private_key = private_key
        self.broker = parse_broker_url(broker_url)
        self.prefix = prefix
        self.client_id = client_id
        self.forwarder = forwarder or NullForwarder()
        self.clock = clock
        self.stats: Counter[str] = Counter()  # drop reasons and outcomes, read by tests
        self.verifier = V.Verifier(self._load_device)
        self.supervisor = Supervisor(grace_s)
        self._inbox: list[tuple[str, bytes, int, int]] = []
        self._failures: dict[int, int] = {}  # hash(frame) -> verification crashes (poison guard)
        self._stop = threading.Event()
        self._worker: threading.Thread | None = None
        self._pending_acked: list[tuple[int, int, float]] = []
        self._crash_at = os.environ.get(CRASH_ENV, "")
        self._ack_payload = bytearray(codec.MAX_FRAME)
        self.connected = threading.Event()
        self._client = self._make_client()

    # ------------------------------------------------------------ MQTT ---

    def _make_client(self) -> mqtt.Client:
        c = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            clean_session=False,  # persistent session: unacked QoS1 frames are redelivered
            manual_ack=True,  # PUBACK only after the frame is durable
        )
        if self.broker.username:
            c.username_pw_set(self.broker.username, self.broker.password)
        if self.broker.tls:
            c.tls_set()
        c.on_socket_open = _nodelay
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_message = self._on_message
        c.reconnect_delay_set(RECONNECT_MIN_S, RECONNECT_MAX_S)
        c.max_queued_messages_set(0)
        return c

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any = None
    ) -> None:
        if rc.is_failure:
            log.warning("gateway: broker refused the connection (%s)", rc)
            return
        client.subscribe(
            [
                (f"{self.prefix}/v1/+/up", 1),
                (f"{self.prefix}/v1/+/status", 1),
                (f"{self.prefix}/{CONTROL_LEAF}", 1),
            ]
        )
        log.info("gateway: connected to %s:%d", self.broker.host, self.broker.port)
        self.connected.set()

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any = None
    ) -> None:
        self.connected.clear()
        if not self._stop.is_set():
            log.warning("gateway: lost the broker (%s); reconnecting", rc)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        # Called from our own loop (_net): only collect; the batch is processed after the read.
        try:
            topic = msg.topic
        except UnicodeDecodeError:
            topic = ""
        self._inbox.append((topic, msg.payload, msg.mid, msg.qos))

    def connect(self, attempts: int | None = None, first: bool = True) -> None:
        """Connect (or reconnect) with backoff, one log line per failed attempt."""
        delay = RECONNECT_MIN_S
        n = 0
        while not self._stop.is_set():
            n += 1
            try:
                if first:
                    self._client.connect(self.broker.host, self.broker.port, KEEPALIVE_S)
                else:
                    self._client.reconnect()
                break
            except (OSError, ValueError) as exc:
                if attempts is not None and n >= attempts:
                    raise ConnectionFailed(
                        f"broker {self.broker.host}:{self.broker.port} unreachable ({type(exc).__name__})"
                    ) from None
                log.warning(
                    "gateway: broker %s:%d unreachable (%s), attempt %d; retrying in %.1fs",
                    self.broker.host,
                    self.broker.port,
                    getattr(exc, "strerror", None) or type(exc).__name__,
                    n,
                    delay,
                )
                self._stop.wait(delay)
                delay = min(delay * 2, RECONNECT_MAX_S)

    def _net(self) -> bool:
        """Wait for traffic and read everything waiting (up to MAX_BATCH); False if the link is down.

        paho's external-loop API (loop_read/loop_write/loop_misc around our own
        select) rather than loop(): loop() adds a wake-up socketpair that costs
        an extra send() per outgoing packet, and we never need waking.
        """
        c = self._client
        ok = mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS
        sock = c.socket()
        if sock is None:
            return False
        pending = getattr(sock, "pending", None)  # bytes already decrypted by TLS
        wait = 0.0 if pending is not None and pending() else NET_WAIT_S
        try:
            readable, writable, _x = select.select(
                [sock], [sock] if c.want_write() else [], [], wait
            )
        except (OSError, ValueError, TypeError):
            return False
        if writable and c.loop_write() != ok:
            return False
        if readable or wait == 0.0:
            while len(self._inbox) < MAX_BATCH:
                n = len(self._inbox)
                if c.loop_read() != ok:
                    return False
                if len(self._inbox) == n:
                    break
        return c.loop_misc() == ok

    # ------------------------------------------------------- lifecycle ---

    def start(self, connect_attempts: int | None = None) -> Gateway:
        self._load_supervision()
        self.connect(connect_attempts)
        self._worker = threading.Thread(target=self._work, name="gateway", daemon=True)
        self._worker.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._worker is not None:
            self._worker.join(timeout=10)
        if self._pending_acked:
            try:
                self.store.commit(Batch(acked=self._take_acked()))
            except Exception:  # noqa: BLE001 - bookkeeping only; the alerts themselves are durable
                log.warning("gateway: could not record the last acked_at times")
        try:
            self._client.disconnect()
        except Exception:  # noqa: BLE001 - shutting down anyway
            pass
        self.forwarder.close()

    def run(self) -> None:
        """Run until SIGINT/SIGTERM."""
        done = threading.Event()

        def _sig(signum: int, frame: Any) -> None:
            done.set()
            self._stop.set()  # also ends a connect-retry loop

        signal.signal(signal.SIGTERM, _sig)
        signal.signal(signal.SIGINT, _sig)
        self.start()
        log.info("gateway: running (prefix %s)", self.prefix)
        while not done.wait(0.5):
            if self._worker is not None and not self._worker.is_alive():
                break
        self.stop()

    # ------------------------------------------------------ device load ---

    def _load_device(self, device_id: int) -> V.DeviceState | None:
        from auxilio.keys import unseal

        rec = self.registry.get_device(device_id)
        if rec is None:
            return None
        try:
            secret = unseal(rec.sealed_secret, self._private_key, device_id)
        except Exception as exc:  # noqa: BLE001 - one device's bad key must not stop others
            log.warning(
                "gateway: %s: cannot unseal its secret (%s)", codec.device_str(device_id), exc
            )
            self.stats["unseal_failed"] += 1
            return None
        return V.DeviceState(
            id=device_id,
            kind=rec.kind,
            state=rec.state,
            keys=codec.Keys(secret),
            high_water=-1 if rec.high_water is None else int(rec.high_water),
            window=int(rec.window or 0),
            heartbeat_s=rec.heartbeat_s,
            key_epoch=rec.key_epoch,
            checked_at=time.monotonic(),
        )

    def _load_supervision(self) -> None:
        # Every device gets a full window from the gateway's start: silence
        # while the gateway itself was down is not the device's.
        now = self.clock()
        for r in self.store.supervised_devices():
            interval = Supervisor.interval(r["kind"], None, r["heartbeat_s"])
            last = max(r["last_seen"].timestamp(), now)
            self.supervisor.load(r["id"], r["kind"], last, interval, r["lost"])

    # ---------------------------------------------------------- worker ---

    def _work(self) -> None:
        last_tick = 0.0
        last_batch = time.monotonic()
        while not self._stop.is_set():
            batch: list[tuple[str, bytes, int, int]] = []
            try:
                link_ok = self._net()
                batch, self._inbox = self._inbox, []
                if batch:
                    self._process(batch)
                    last_batch = time.monotonic()
                elif self._pending_acked and time.monotonic() - last_batch >= ACKED_FLUSH_S:
                    self._commit_retrying(Batch(acked=self._take_acked()))
                now = self.clock()
                if now - last_tick >= SUPERVISION_TICK_S:
                    last_tick = now
                    self._supervise(now)
                if not link_ok and not self._stop.is_set():
                    # Frames read but not PUBACKed are redelivered by the broker.
                    self._stop.wait(RECONNECT_MIN_S)
                    self.connect(first=False)
            except Exception as exc:  # noqa: BLE001 - the loop must survive anything
                self.stats["internal_error"] += 1
                # Type only at error level: database errors can quote row values.
                log.error(
                    "gateway: internal error (%s), batch of %d; continuing",
                    type(exc).__name__,
                    len(batch),
                )
                log.debug("gateway: internal error detail", exc_info=True)
                if batch and not self._stop.is_set():
                    self._resync()

    def _resync(self) -> None:
        """After a failed batch: reconnect so the broker redelivers what was not PUBACKed.

        Un-PUBACKed messages hold the broker's in-flight slots for this client;
        leaving them would eventually stall all delivery to the gateway.
        """
        self.verifier.forget()  # reload replay state from what is durable
        try:
            self._client.disconnect()
        except Exception:  # noqa: BLE001 - already disconnected
            pass
        self._stop.wait(RECONNECT_MIN_S)
        self.connect(first=False)

    def _take_acked(self) -> list[tuple[int, int, float]]:
        acked, self._pending_acked = self._pending_acked, []
        return acked

    def _commit_retrying(self, batch: Batch) -> list[tuple[int, int]]:
        delay = COMMIT_RETRY_MIN_S
        attempt = 0
        while True:
            attempt += 1
            try:
                return self.store.commit(batch)
            except Exception as exc:  # noqa: BLE001 - registry down: keep the frames, ack nothing
                if self._stop.is_set():
                    raise
                log.warning(
                    "gateway: registry commit failed (%s), attempt %d; retrying in %.1fs",
                    type(exc).__name__,
                    attempt,
                    delay,
                )
                self._stop.wait(delay)
                delay = min(delay * 2, COMMIT_RETRY_MAX_S)

    def _crash(self, point: str) -> None:
        if self._crash_at == point:
            os.kill(os.getpid(), signal.SIGKILL)

    def _process(self, msgs: list[tuple[str, bytes, int, int]]) -> None:
        now = self.clock()
        up_suffix = "/up"
        control = f"{self.prefix}/{CONTROL_LEAF}"
        results: list[V.Verdict] = []
        raws: list[bytes] = []
        topics: list[str] = []
        controls: list[bytes] = []
        statuses: list[tuple[str, bytes]] = []
        hold: set[int] = set()  # mids not to PUBACK: the broker redelivers them after _resync
        for topic, payload, mid, _qos in msgs:
            if topic.endswith(up_suffix):
                try:
                    v = self.verifier.verify(V.topic_device(topic, self.prefix), payload, now)
                except Exception as exc:  # noqa: BLE001 - e.g. the registry failed a lookup
                    self.stats["internal_error"] += 1
                    log.error("gateway: verifier error (%s)", type(exc).__name__)
                    key = hash(payload)
                    self._failures[key] = self._failures.get(key, 0) + 1
                    if self._failures[key] < POISON_LIMIT:
                        hold.add(mid)  # transient, most likely: have it redelivered
                        v = V.Verdict(V.DROP, "retry")
                    else:  # the same bytes keep failing: count and drop, never loop forever
                        v = V.Verdict(V.DROP, "poison")
                    if len(self._failures) > 10_000:
                        self._failures.clear()
                results.append(v)
                raws.append(payload)
                topics.append(topic)
            elif topic == control:
                controls.append(payload)
            elif topic.endswith("/status"):
                statuses.append((topic, payload))
            else:
                self.stats["bad_topic"] += 1

        # Lifecycle state is re-read for cached devices older than STATE_REFRESH_S
        # (bad tags too: the device may have been re-keyed since it was cached).
        mono = time.monotonic()
        touched = {
            v.device.id
            for v in results
            if v.device is not None
            and (v.action != V.DROP or v.reason == "bad_tag")
            and mono - v.device.checked_at > STATE_REFRESH_S
        }
        if touched:
            fresh = self.store.device_rows(sorted(touched))
            for dev_id in touched:
                row = fresh.get(dev_id)
                dev = self.verifier.devices.get(dev_id)
                if row is None or dev is None:
                    continue
                if row["key_epoch"] != dev.key_epoch:
                    # Re-keyed: verify this device's frames again with the new key
                    # (frames under the old key now fail, as they must).
                    self.verifier.forget(dev_id)
                    for i, v in enumerate(results):
                        if v.device is dev:
                            results[i] = self.verifier.verify(
                                V.topic_device(topics[i], self.prefix), raws[i], now
                            )
                    continue
                dev.state, dev.heartbeat_s = row["state"], row["heartbeat_s"]
                dev.checked_at = mono
                if dev.state in V.REJECTED_STATES:
                    self.supervisor.forget(dev_id)  # out of service: no supervision
            for v in results:
                if v.action == V.STORE and v.device is not None:
                    reject = V.REJECTED_STATES.get(v.device.state)
                    v.disposition, v.reason = (
                        ("rejected", reject) if reject else ("received", "none")
                    )

        batch = Batch(acked=self._take_acked())
        records: list[dict[str, Any]] = []
        restored: list[int] = []
        accepted: dict[tuple[int, int], str] = {}
        for v, raw in zip(results, raws, strict=True):
            if v.action == V.DROP:
                if v.reason != "retry":  # held for redelivery, not dropped
                    self.stats["drop_" + v.reason] += 1
                if v.device is not None:
                    log.info("gateway: %s: dropped (%s)", codec.device_str(v.device.id), v.reason)
                continue
            dev = v.device
            assert dev is not None
            # Any verified frame counts for supervision (SPEC §12.7).
            batch.devices[dev.id] = {
                "high_water": dev.high_water,
                "window": dev.window,
                "last_seen": now,
            }
            interval = Supervisor.interval(dev.kind, dev.interval_s, dev.heartbeat_s)
            if dev.state not in V.REJECTED_STATES and self.supervisor.seen(
                dev.id, dev.kind, now, interval
            ):
                restored.append(dev.id)
            if v.action == V.HEARTBEAT:
                self.stats["heartbeat"] += 1
                continue
            if v.action != V.STORE:
                continue
            self.stats["stored"] += 1
            lost = dev.state == "lost"
            batch.alerts.append(
                {
                    "device_id": dev.id,
                    "counter": v.counter,
                    "type": v.type_name,
                    "flags": v.flags,
                    "device_ts": v.timestamp,
                    "payload": v.fields,
                    "raw": bytes(raw),  # as received: ALERT/TEST payloads stay ciphertext
                    "received_at": now,
                    "acked_at": None,
                    "attending_at": None,
                    "attending_by": None,
                    "disposition": v.disposition,
                    "forwarded_at": None,
                    "cancelled_at": None,
                    "test": v.test,
                    "lost": lost,
                }
            )
            accepted[(dev.id, v.counter)] = v.disposition
            if v.code == codec.CANCEL and v.disposition == "received":
                batch.cancels.append((dev.id, v.fields["ref_counter"], now))
            records.extend(self._events_and_records(v, now, batch))
        for dev_id in restored:
            batch.events.append(_event(dev_id, SUPERVISION_RESTORED, now))
            records.append(self._event_record(dev_id, SUPERVISION_RESTORED, now, None, {}))

        if batch.alerts:
            self._crash("before_commit")
        self.forwarder.enqueue(records)
        try:
            collided = self._commit_retrying(batch)
        except Exception:
            # Stopping while the registry is down: nothing was acked; drop the
            # cached replay state so it is reloaded from what is durable.
            self.verifier.forget()
            raise
        if batch.alerts:
            self._crash("after_commit")
        self.stats["counter_collision"] += len(collided)
        self.forwarder.release()

        # Duplicates and below-window frames: re-ack the stored disposition.
        lookups = [
            (v.device.id, v.counter)
            for v in results
            if v.action in (V.DUPLICATE, V.BELOW)
            and v.device is not None
            and (v.device.id, v.counter) not in accepted
        ]
        stored = self.store.stored(lookups) if lookups else {}
        server_time = int(now)
        for v in results:
            if v.action == V.DROP or v.action == V.HEARTBEAT or v.device is None:
                continue
            key = (v.device.id, v.counter)
            if v.action in (V.DUPLICATE, V.BELOW):
                if key in accepted:
                    disp, reason = accepted[key], V.REJECTED_STATES.get(v.device.state, "none")
                elif key in stored:
                    row = stored[key]
                    disp = (
                        "attending"
                        if row["attending_at"] is not None
                        else (row["disposition"] or "received")
                    )
                    reason = (
                        V.REJECTED_STATES.get(v.device.state, "policy")
                        if disp == "rejected"
                        else "none"
                    )
                elif v.code == codec.HEARTBEAT:
                    self.stats["duplicate_heartbeat"] += 1
                    continue
                else:
                    disp, reason = "rejected", "replay"
                    self.stats["rejected_replay"] += 1
                    log.info(
                        "gateway: %s #%d: replay rejected", codec.device_str(v.device.id), v.counter
                    )
                if reason != "replay":
                    self.stats["duplicate"] += 1
            elif v.action == V.TIME_NAK:
                disp, reason = "time_nak", "none"
                self.stats["time_nak"] += 1
            else:  # STORE
                disp, reason = v.disposition, v.reason
            self._send_ack(v.device, v.counter, v.code, disp, reason, server_time)
            if disp in ("received", "attending"):
                # acked_at is bookkeeping, written with the next group commit.
                self._pending_acked.append((v.device.id, v.counter, now))
            log.info("gateway: %s #%d: ack %s", codec.device_str(v.device.id), v.counter, disp)

        for topic, payload in statuses:
            self._status(topic, payload, now)
        for payload in controls:
            self._control(payload)
        for _topic, _payload, mid, qos in msgs:
            if qos > 0 and mid not in hold:
                self._client.ack(mid, qos)
        if hold:
            self._resync()

    def _events_and_records(self, v: V.Verdict, now: float, batch: Batch) -> list[dict[str, Any]]:
        """C4 events for a stored frame, and the forward records (never for test frames)."""
        dev = v.device
        assert dev is not None
        out: list[dict[str, Any]] = []
        ref = {"counter": v.counter, "type": v.type_name}
        if v.disposition == "rejected":
            batch.events.append(_event(dev.id, "REJECTED", now, {**ref, "reason": v.reason}))
            log.warning(
                "gateway: %s #%d: rejected (%s)", codec.device_str(dev.id), v.counter, v.reason
            )
            out.append(
                self._event_record(
                    dev.id, "REJECTED", now, v.counter, {"reason": v.reason, "type": v.type_name}
                )
            )
            return out
        if dev.state == "lost":
            batch.events.append(_event(dev.id, "LOST_DEVICE", now, ref))
            if not v.test:
                out.append(
                    self._event_record(dev.id, "LOST_DEVICE", now, v.counter, {"type": v.type_name})
                )
        if v.test:
            self.stats["test"] += 1
            return out
        if v.code in EVENT_TYPES:
            etype = EVENT_TYPES[v.code]
            batch.events.append(_event(dev.id, etype, now, {**ref, **v.fields}))
            out.append(self._event_record(dev.id, etype, now, v.counter, v.fields))
        elif v.code in ALERT_TYPES:
            out.append(
                {
                    "schema": "auxilio.forward/1",
                    "key": f"alert:{codec.device_str(dev.id)}:{v.counter}",
                    "kind": "alert",
                    "type": v.type_name,
                    "device": codec.device_str(dev.id),
                    "counter": v.counter,
                    "at": _iso(now),
                    "fields": v.fields,
                    "lost": dev.state == "lost",
                    "disposition": v.disposition,
                    "detail": "",
                }
            )
        return out

    def _event_record(
        self, device: int, etype: str, now: float, counter: int | None, fields: dict[str, Any]
    ) -> dict[str, Any]:
        dev = codec.device_str(device)
        key = (
            f"event:{dev}:{etype}:{counter}"
            if counter is not None
            else f"event:{dev}:{etype}:{now:.3f}"
        )
        return {
            "schema": "auxilio.forward/1",
            "key": key,
            "kind": "event",
            "type": etype,
            "device": dev,
            "counter": counter,
            "at": _iso(now),
            "fields": fields,
            "lost": False,
            "disposition": None,
            "detail": "",
        }

    def _send_ack(
        self, dev: V.DeviceState, counter: int, acked_code: int, disp: str, reason: str, ts: int
    ) -> None:
        payload = codec.pack_payload(
            codec.ACK,
            (
                acked_code,
                codec.DISPOSITIONS.index(disp),
                codec.REJECT_REASONS.index(reason),
                max(dev.high_water, 0),
            ),
        )
        buf = self._ack_payload
        n = codec.encode_into(buf, dev.keys, codec.ACK, 0, dev.id, counter, ts, payload)
        self._client.publish(codec.topic(self.prefix, dev.id, "down"), bytes(buf[:n]), qos=1)
        self.stats["acks"] += 1

    # ------------------------------------------------ status, control ---

    def _status(self, topic: str, payload: bytes, now: float) -> None:
        dev_s = V.topic_device(topic, self.prefix)
        try:
            dev_id = codec.device_int(dev_s) if dev_s else None
        except Exception:  # noqa: BLE001
            dev_id = None
        if dev_id is None or payload not in (b"online", b"offline"):
            self.stats["drop_bad_status"] += 1
            return
        self.supervisor.status(dev_id, payload == b"online", now)
        self.stats["status_" + payload.decode()] += 1

    def _control(self, payload: bytes) -> None:
        """An operator console asks for the 'attending' ACK of an alert it marked in the registry."""
        try:
            req = json.loads(payload)
            alert_id = int(req["alert"])
        except (ValueError, KeyError, TypeError):
            self.stats["drop_bad_control"] += 1
            return
        row = self.store.alert(alert_id)
        if row is None or row["attending_at"] is None:
            # The registry is the authority: only alerts an operator marked get the ACK.
            self.stats["drop_control_unmarked"] += 1
            return
        dev = self.verifier.device(row["device_id"])
        if dev is None:
            self.stats["drop_control_unknown_device"] += 1
            return
        self._send_ack(
            dev,
            row["counter"],
            codec.type_code(row["type"]),
            "attending",
            "none",
            int(self.clock()),
        )
        self.stats["attending_sent"] += 1
        log.info("gateway: %s #%d: ack attending", codec.device_str(dev.id), row["counter"])

    # ------------------------------------------------------ supervision ---

    def _supervise(self, now: float) -> None:
        lost = self.supervisor.due(now)
        if not lost:
            return
        rows = [
            _event(d, SUPERVISION_LOST, now, {"interval_s": self.supervisor.tracks[d].interval})
            for d in lost
        ]
        records = [self._event_record(d, SUPERVISION_LOST, now, None, {}) for d in lost]
        self.forwarder.enqueue(records)
        self._commit_retrying(Batch(events=rows))
        self.forwarder.release()
        for d in lost:
            self.stats["supervision_lost"] += 1
            log.warning("gateway: %s: supervision lost", codec.device_str(d))
