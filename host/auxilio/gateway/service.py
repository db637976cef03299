"""The C4 gateway service: MQTT in, the pipeline, signed ACKs out, supervision, forwarding, attends.

One thread runs paho's network loop itself (no loop_start): it reads every
message that is waiting (manual PUBACK), runs the pipeline over the batch
(pipeline.py: verify, decide, build), commits it in one transaction, and only
then publishes the ACKs and the MQTT PUBACKs (SPEC §12.4). One thread,
because handing messages to a worker and ACKs back to paho's network thread
cost two thread wake-ups per alert (~0.3 ms of a ~1 ms round trip here);
group commit comes from reading everything waiting before committing.

A gateway killed before the commit leaves the messages un-PUBACKed in its
persistent session, so the broker redelivers them; killed after the commit,
the redelivered copies are duplicates and get the stored disposition, and at
start-up every stored frame whose ACK the broker never confirmed is acked
again at once (issue 8 §8). Forward records are committed with their frames
and delivered by forward.ForwardWorker.
"""

from __future__ import annotations

import logging
import random
import select
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt

from auxilio.broker.client import AuthenticationFailed, is_auth_refusal, make_client
from auxilio.broker.url import parse_broker_url
from auxilio.errors import AuxilioError, ConnectionFailed
from auxilio.gateway import attend as A
from auxilio.gateway import records as R
from auxilio.gateway import selftest as ST
from auxilio.gateway import verifier as V
from auxilio.gateway.clock import ClockState
from auxilio.gateway.crash import CrashHook, env_crash_hook
from auxilio.gateway.forward import ForwardWorker, Sink, describe
from auxilio.gateway.obs import Summary, serve_metrics
from auxilio.gateway.pipeline import AckOut, Pipeline, Turn
from auxilio.gateway.retention import DEFAULT_RETENTION_DAYS, RETENTION_EVERY_S, purge_locations
from auxilio.gateway.seal import RowSealer
from auxilio.gateway.store import Batch, Conflicts, Store
from auxilio.gateway.supervision import GRACE_S, Supervisor
from auxilio.protocol import codec

log = logging.getLogger("auxilio.gateway")

# Largest group commit. The broker's in-flight window (mosquitto
# max_inflight_messages, default 20) usually bounds a batch well below this.
MAX_BATCH = 512
# QoS 1 publishes (ACKs) the gateway keeps in flight towards the broker. paho's
# default of 20 made ACKs of a burst wait behind each other (issue 8 §8); the
# bound stays far below paho's 16-bit packet ids (65535).
MAX_INFLIGHT_OUT = 4096
# Longest wait for network traffic in one loop turn (bounds stop() latency).
NET_WAIT_S = 0.1
# How often supervision deadlines are checked when idle.
SUPERVISION_TICK_S = 0.5
# Reconnect backoff towards the broker: capped exponential with equal jitter.
RECONNECT_MIN_S = 0.5
RECONNECT_MAX_S = 30.0
KEEPALIVE_S = 30
# Backoff while the registry refuses a commit (nothing is acked meanwhile).
COMMIT_RETRY_MIN_S = 0.2
COMMIT_RETRY_MAX_S = 10.0
# acked_at bookkeeping rides on the next group commit; when the gateway has been
# idle this long it is flushed on its own (never on the ACK path).
ACKED_FLUSH_S = 1.0
# At start-up, stored frames younger than this whose ACK the broker never
# confirmed are acked again at once (a crash between commit and ACK).
REACK_HORIZON_S = 7 * 24 * 3600
REACK_LIMIT = 20_000
CONTROL_LEAF = A.CONTROL_LEAF
# Scheduled self-tests (--selftest-every): how often the registry is asked who is
# due, how many devices are asked per look (a fleet is spread over several), and
# how soon a device that missed one is asked again (at most; never more often
# than the schedule itself).
SELFTEST_SCHEDULE_TICK_S = 60.0
SELFTEST_SCHEDULE_BATCH = 50
SELFTEST_RETRY_S = 6 * 3600.0


class Gateway:
    """One gateway process. start()/stop(), or run() until SIGINT/SIGTERM."""

    def __init__(
        self,
        registry: Any,
        private_key: Any,
        broker_url: str,
        *,
        prefix: str = codec.DEFAULT_PREFIX,
        client_id: str | None = None,
        sink: Sink | None = None,
        grace_s: float = GRACE_S,
        clock: Callable[[], float] = time.time,
        clock_state: ClockState | None = None,
        retention_days: int = DEFAULT_RETENTION_DAYS,
        metrics: str | None = None,
        crash: CrashHook | None = None,
        forward_options: dict[str, Any] | None = None,
        sms_sources: list[Any] | None = None,
        selftest_every_s: float | None = None,
        selftest_deadline_s: float | None = None,
        selftest_tick_s: float = SELFTEST_SCHEDULE_TICK_S,
    ) -> None:
        self.registry = registry
        self.store = Store(registry)
        self._private_key = private_key
        self.broker = parse_broker_url(broker_url)
        self.prefix = prefix
        # The broker config ties client ids to usernames (use_username_as_clientid):
        # with a login, the session is the username's.
        self.client_id = client_id or self.broker.username or "auxilio-gateway"
        self.sink = sink
        self.clock = clock
        self.clock_state = clock_state or ClockState()
        self.retention_days = retention_days
        self.metrics_address = metrics
        self.stats: Counter[str] = Counter()  # every count, by reason (obs.py, tests)
        self.verifier = V.Verifier(self._load_device)
        self.supervisor = Supervisor(grace_s)
        self.sealer = RowSealer(private_key)
        self.control_topic = f"{prefix}/{A.CONTROL_LEAF}"
        self.selftest_topic = f"{prefix}/{ST.CONTROL_LEAF}"
        self.pipeline = Pipeline(
            self.store,
            self.verifier,
            self.supervisor,
            self.sealer,
            self.stats,
            prefix=prefix,
            control_topic=self.control_topic,
            forwarding=sink is not None,
            clock_synced=self.clock_state.synced,
            selftest_topic=self.selftest_topic,
        )
        self.desk = A.AttendDesk(self.store, self.verifier, self.sealer)
        self.tests = ST.SelftestDesk(registry, self.verifier, selftest_deadline_s)
        self.selftest_every_s = selftest_every_s
        self.selftest_tick_s = selftest_tick_s
        self._next_schedule = 0.0
        self.forwarder: ForwardWorker | None = None
        self._crash = crash or env_crash_hook()
        if sink is not None:
            # forward_options: ForwardWorker tunables (failing_after_s, retry_min_s).
            kw = dict(forward_options or {})
            self.forwarder = ForwardWorker(
                self.store,
                sink,
                self.stats,
                clock=clock,
                on_fatal=self._fatal_error,
                crash=self._crash,
                mark=self._queue_marks,
                drop=self._queue_drop,
                **kw,
            )
        self.summary = Summary(self.stats)
        self._inbox: list[tuple[str, bytes, int, int]] = []
        # SMS ingest (gateway/sms.py): sources deliver from their own threads.
        self.sms_sources = {s.name: s for s in sms_sources or []}
        self._sms: list[Any] = []
        self._sms_lock = threading.Lock()
        self._stop = threading.Event()
        self._worker: threading.Thread | None = None
        self._pending_acked: list[tuple[int, int, int, float]] = []
        # Forward marks from the forwarder thread, committed by this one (one writer).
        self._marks: list[tuple[list[int], float, bool]] = []
        self._drop_before: float | None = None
        self._marks_lock = threading.Lock()
        # mid of an in-flight publish -> what to record when the broker confirms it.
        self._inflight: dict[int, tuple[str, Any]] = {}
        self._ack_payload = bytearray(codec.MAX_FRAME)
        self._reacked = False
        self._link_state = "down"
        self._stop_metrics: Callable[[], None] | None = None
        self.fatal: AuxilioError | None = None
        self.connected = threading.Event()  # set once subscribed (SUBACK), not on CONNACK
        self.subscribed_at = 0.0
        self._client = self._make_client()

    # ------------------------------------------------------------ MQTT ---

    def _make_client(self) -> mqtt.Client:
        c = make_client(
            self.broker,
            self.client_id,
            clean_session=False,  # persistent session: unacked QoS1 frames are redelivered
            manual_ack=True,  # PUBACK only after the frame is durable
        )
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_message = self._on_message
        c.on_subscribe = self._on_subscribe
        c.on_publish = self._on_publish
        c.reconnect_delay_set(RECONNECT_MIN_S, RECONNECT_MAX_S)
        c.max_queued_messages_set(0)
        c.max_inflight_messages_set(MAX_INFLIGHT_OUT)
        return c

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any = None
    ) -> None:
        if rc.is_failure:
            if is_auth_refusal(rc):
                self._fatal_error(
                    AuthenticationFailed(
                        f"broker {self.broker} refused the gateway's credentials ({rc}); "
                        "check --broker-credentials"
                    )
                )
            else:
                self._link(f"refused by the broker ({rc})")
            return
        client.subscribe(
            [
                (f"{self.prefix}/v1/+/up", 1),
                (f"{self.prefix}/v1/+/status", 1),
                (self.control_topic, 1),
                (self.selftest_topic, 1),
            ]
        )

    def _on_subscribe(self, client: mqtt.Client, *_: Any) -> None:
        self.subscribed_at = time.perf_counter()  # for the restart figures (tests/bench)
        self._link("up")
        self.connected.set()
        if not self._reacked:
            self._reacked = True
            self._reack_stored()

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any = None
    ) -> None:
        self.connected.clear()
        if not self._stop.is_set():
            self._link(f"lost ({rc})")

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        # Called from our own loop (_net): only collect; the batch is processed after the read.
        try:
            topic = msg.topic
        except UnicodeDecodeError:
            topic = ""
        self._inbox.append((topic, msg.payload, msg.mid, msg.qos))

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, *_: Any) -> None:
        """The broker confirmed one of our QoS 1 publishes (an ACK or an attend result)."""
        item = self._inflight.pop(mid, None)
        if item is None:
            return
        kind, what = item
        if kind == "ack":
            self._pending_acked.append((*what, self.clock()))
        elif kind == "attend":
            self._attend_confirmed(what)
        elif kind == "selftest":
            self._selftest_sent(what)

    def _link(self, state: str) -> None:
        """Log the broker link once per state change (never once per retry)."""
        if state == self._link_state:
            return
        self._link_state = state
        if state == "up":
            log.info("gateway: connected to %s", self.broker)
        else:
            log.warning("gateway: broker %s %s; reconnecting with backoff", self.broker, state)

    def connect(self, attempts: int | None = None, first: bool = True) -> None:
        """Connect (or reconnect) with capped, jittered exponential backoff."""
        delay = RECONNECT_MIN_S
        n = 0
        while not self._stop.is_set():
            n += 1
            try:
                if first:
                    self._client.connect(self.broker.host, self.broker.port, KEEPALIVE_S)
                else:
                    self._client.reconnect()
                return
            except (OSError, ValueError) as exc:
                if attempts is not None and n >= attempts:
                    raise ConnectionFailed(
                        f"broker {self.broker} unreachable ({type(exc).__name__})"
                    ) from None
                self._link(f"unreachable ({getattr(exc, 'strerror', None) or type(exc).__name__})")
                self._stop.wait(delay / 2 + random.random() * delay / 2)
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
        self._load_selftests()
        if self.metrics_address:
            self._stop_metrics = serve_metrics(self.metrics_address, self.stats, self.gauges)
        self.connect(connect_attempts)
        if self.forwarder is not None:
            self.forwarder.start()
        for source in self.sms_sources.values():
            source.start(self._deliver_sms)
        self._worker = threading.Thread(target=self._work, name="gateway", daemon=True)
        self._worker.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._worker is not None:
            self._worker.join(timeout=10)
        try:
            self._client.disconnect()
        except Exception:  # noqa: BLE001 - shutting down anyway
            pass
        for source in self.sms_sources.values():
            source.close()
        if self.forwarder is not None:
            self.forwarder.close()  # its last round queues its marks here
        if self._pending_acked or self._marks:
            try:
                self.store.commit(Batch(acked=self._take_acked(), forwarded=self._take_marks()))
            except Exception:  # noqa: BLE001 - bookkeeping only; the alerts themselves are durable
                log.warning("gateway: could not record the last acked_at and forward marks")
        if self._stop_metrics is not None:
            self._stop_metrics()

    def kill(self) -> None:
        """Die on the spot, as kill -9 would: every thread stops at its next step, the socket
        closes without DISCONNECT, nothing is flushed (in-process crash tests)."""
        self._stop.set()
        if self.forwarder is not None:
            self.forwarder.kill()
        sock = self._client.socket()
        if sock is not None:
            try:
                sock.close()
            except OSError:
                pass

    def abort(self) -> None:
        """kill(), then wait for the threads to be gone."""
        self.kill()
        if self._worker is not None and self._worker is not threading.current_thread():
            self._worker.join(timeout=10)
        if self.forwarder is not None:
            self.forwarder.join()
        if self._stop_metrics is not None:
            self._stop_metrics()

    def _fatal_error(self, exc: BaseException) -> None:
        if isinstance(exc, AuxilioError) and self.fatal is None:
            self.fatal = exc
        self._stop.set()

    def run(self) -> None:
        """Run until SIGINT/SIGTERM or a fatal error (raised: one line and its exit code)."""
        done = threading.Event()

        def _sig(signum: int, frame: Any) -> None:
            done.set()
            self._stop.set()  # also ends a connect-retry loop

        signal.signal(signal.SIGTERM, _sig)
        signal.signal(signal.SIGINT, _sig)
        self.start()
        log.info(
            "gateway: running: broker %s, registry %s, forward %s, clock %s, prefix %s",
            self.broker,
            self.registry.engine.url.render_as_string(hide_password=True),
            describe(self.sink),
            self.clock_state.describe(),
            self.prefix,
        )
        while not done.wait(0.5):
            if self._stop.is_set() or (self._worker is not None and not self._worker.is_alive()):
                break
        self.stop()
        if self.fatal is not None:
            raise self.fatal

    # ------------------------------------------------------ device load ---

    def _load_device(self, device_id: int) -> V.DeviceState | None:
        rec = self.registry.get_device(device_id)
        if rec is None:
            return None
        keys = self._unseal(rec.sealed_secret, device_id)
        if keys is None:
            return None
        dev = V.DeviceState(
            id=device_id,
            kind=rec.kind,
            state=rec.state,
            keys=keys,
            high_water=-1 if rec.high_water is None else int(rec.high_water),
            window=int(rec.window or 0),
            heartbeat_s=rec.heartbeat_s,
            key_epoch=rec.key_epoch,
            checked_at=time.monotonic(),
        )
        old = rec.previous_key
        if old is not None and old.valid_until.timestamp() > self.clock():
            # A rekey's grace (SPEC §12.1): the replaced key, with its own replay state.
            old_keys = self._unseal(old.sealed_secret, device_id)
            if old_keys is not None:
                dev.prev = V.DeviceState(
                    id=device_id,
                    kind=rec.kind,
                    state=rec.state,
                    keys=old_keys,
                    high_water=-1 if old.high_water is None else int(old.high_water),
                    window=old.window,
                    heartbeat_s=rec.heartbeat_s,
                    key_epoch=old.epoch,
                    checked_at=dev.checked_at,
                    valid_until=old.valid_until.timestamp(),
                )
        return dev

    def _unseal(self, sealed: bytes, device_id: int) -> Any:
        """The device's codec.Keys from a sealed secret; None (warned, counted) if it will not open."""
        from auxilio.keys import unseal

        try:
            return codec.Keys(unseal(sealed, self._private_key, device_id))
        except Exception as exc:  # noqa: BLE001 - one device's bad key must not stop others
            self.pipeline.warn.warning(
                (device_id, "unseal"),
                "gateway: %s: cannot unseal its secret (%s)",
                codec.device_str(device_id),
                type(exc).__name__,
            )
            self.stats["unseal_failed"] += 1
            return None

    def _load_supervision(self) -> None:
        # Every device gets a full window from the gateway's start: silence
        # while the gateway itself was down is not the device's.
        now = self.clock()
        for r in self.store.supervised_devices():
            interval = Supervisor.interval(r["kind"], None, r["heartbeat_s"])
            last = max(r["last_seen"].timestamp(), now)
            self.supervisor.load(r["id"], r["kind"], last, interval, r["lost"])

    def gauges(self) -> dict[str, float]:
        return {
            "broker_connected": 1.0 if self.connected.is_set() else 0.0,
            "forward_backlog": float(self.forwarder.backlog if self.forwarder else 0),
            "forward_failing": 1.0 if self.forwarder and self.forwarder.failing else 0.0,
            "supervision_lost_devices": float(
                sum(1 for t in self.supervisor.tracks.values() if t.lost)
            ),
            "clock_synced": 1.0 if self.clock_state.synced() else 0.0,
        }

    # ---------------------------------------------------------- worker ---

    def _work(self) -> None:
        last_tick = 0.0
        last_batch = time.monotonic()
        next_retention = time.monotonic()
        while not self._stop.is_set():
            batch: list[tuple[str, bytes, int, int]] = []
            try:
                link_ok = self._net()
                batch, self._inbox = self._inbox, []
                with self._sms_lock:
                    sms, self._sms = self._sms, []
                if batch or sms:
                    try:
                        self._process(batch, sms)
                    except Exception:
                        # Nothing of this turn was committed: every SMS comes back next turn.
                        for m in sms:
                            m.outcome = ""
                        with self._sms_lock:
                            self._sms[:0] = sms
                        raise
                    last_batch = time.monotonic()
                elif self._marks or self._drop_before is not None:  # the forwarder's
                    self._commit_bookkeeping()
                elif self._pending_acked and time.monotonic() - last_batch >= ACKED_FLUSH_S:
                    self._commit_bookkeeping()
                now = self.clock()
                if now - last_tick >= SUPERVISION_TICK_S:
                    last_tick = now
                    self._supervise(now)
                    self._selftest_tick(now)
                    self.summary.tick()
                if self.retention_days and time.monotonic() >= next_retention:
                    next_retention = time.monotonic() + RETENTION_EVERY_S
                    self._retention(now)
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

    def _take_acked(self) -> list[tuple[int, int, int, float]]:
        acked, self._pending_acked = self._pending_acked, []
        return acked

    def _queue_marks(self, ids: list[int], at: float, keep: bool) -> None:
        """The forwarder's marks (its thread): committed with this thread's next batch."""
        with self._marks_lock:
            self._marks.append((ids, at, keep))

    def _queue_drop(self, before: float) -> None:
        with self._marks_lock:
            self._drop_before = before

    def _take_marks(self) -> list[tuple[list[int], float, bool]]:
        with self._marks_lock:
            marks, self._marks = self._marks, []
        return marks

    def _take_drop(self) -> float | None:
        with self._marks_lock:
            before, self._drop_before = self._drop_before, None
        return before

    def _marks_committed(self, marks: list[tuple[list[int], float, bool]]) -> None:
        if marks and self.forwarder is not None:
            self.forwarder.marked([i for ids, _at, _keep in marks for i in ids])

    def _commit_bookkeeping(self) -> None:
        batch = Batch(
            acked=self._take_acked(),
            forwarded=self._take_marks(),
            forward_drop_before=self._take_drop(),
        )
        self._commit_retrying(batch)
        self._marks_committed(batch.forwarded)

    def _commit_retrying(self, batch: Batch) -> None:
        delay = COMMIT_RETRY_MIN_S
        attempt = 0
        while True:
            attempt += 1
            try:
                return self.store.commit(batch)
            except Conflicts:
                raise
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

    def _deliver_sms(self, sms: Any) -> None:
        """A source's thread hands one SMS over; the worker takes it with its next turn."""
        with self._sms_lock:
            self._sms.append(sms)

    def _process(self, msgs: list[tuple[str, bytes, int, int]], sms: list[Any] = ()) -> None:
        p = self.pipeline
        turn = p.route(msgs, self.clock())
        if sms:
            p.add_sms(turn, list(sms))
        p.verify(turn)
        p.refresh(turn)
        p.decide(turn)
        self._commit_turn(turn)
        self._send_acks(p.acks(turn), int(turn.now))
        self._tests_stored(turn)
        for topic, payload in turn.statuses:
            self._status(turn, topic, payload)
        for payload in turn.controls:
            self._control(turn, payload)
        for payload in turn.selftests:
            self._selftest(turn, payload)
        late = turn.dead[turn.dead_committed :]
        if late:  # statuses and attend requests found unusable: durable before PUBACK
            self._commit_retrying(Batch(dead=late))
        for _topic, _payload, mid, qos in msgs:
            if qos > 0 and mid not in turn.hold:
                self._client.ack(mid, qos)
        for m in turn.sms:  # committed (or refused, and kept as a dead letter): tell the source
            if not m.outcome:  # undecided (the registry failed a lookup): next turn
                self._deliver_sms(m)
                continue
            ok = m.outcome.startswith(("sms_stored", "sms_duplicate"))
            self.sms_sources[m.source].done(m, ok)
        if turn.hold:
            self._resync()

    def _commit_turn(self, turn: Turn) -> None:
        p = self.pipeline
        p.observe(turn)
        for _attempt in range(3):
            batch = p.build(turn, self._take_acked())
            batch.forwarded = self._take_marks()
            turn.dead_committed = len(turn.dead)
            if batch.alerts:
                self._crash("before_commit")
            try:
                self._commit_retrying(batch)
            except Conflicts as conflicts:
                # Names the window had not seen were taken: decide again (SPEC §12.2).
                self._pending_acked.extend(batch.acked)
                with self._marks_lock:
                    self._marks[:0] = batch.forwarded
                p.redecide(turn, conflicts)
                continue
            except Exception:
                # Stopping while the registry is down: nothing was acked; drop the
                # cached replay state so it is reloaded from what is durable.
                self.verifier.forget()
                raise
            p.committed(turn)
            self._marks_committed(batch.forwarded)
            if batch.alerts:
                self._crash("after_commit")
            if batch.forward and self.forwarder is not None:
                self.forwarder.wake()
            return
        raise RuntimeError("frame names kept changing under the gateway")

    def _crash_during_ack(self, acks: list[AckOut], i: int) -> None:
        if i == 1 or len(acks) == 1:
            self._crash("during_ack")

    def _send_acks(self, acks: list[AckOut], server_time: int) -> None:
        for i, a in enumerate(acks, 1):
            self._send_ack(a.device, a.counter, a.code, a.disposition, a.reason, server_time)
            if a.disposition in ("received", "attending", "rejected"):
                self._crash_during_ack(acks, i)
            log.debug(
                "gateway: %s #%d: ack %s", codec.device_str(a.device.id), a.counter, a.disposition
            )

    def _send_ack(
        self,
        dev: V.DeviceState,
        counter: int,
        acked_code: int,
        disp: str,
        reason: str,
        ts: int,
        track: tuple[str, Any] | None = None,
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
        flags = codec.FLAG_CLOCK_SYNCED if self.clock_state.synced() else 0
        buf = self._ack_payload
        n = codec.encode_into(buf, dev.keys, codec.ACK, flags, dev.id, counter, ts, payload)
        info = self._client.publish(codec.topic(self.prefix, dev.id, "down"), bytes(buf[:n]), qos=1)
        if track is None and disp in ("received", "attending", "rejected"):
            track = ("ack", (dev.id, dev.key_epoch, counter))
        if track is not None:
            self._inflight[info.mid] = track
        self.stats["acks"] += 1

    def _reack_stored(self) -> None:
        """Stored frames whose ACK the broker never confirmed get it now, not on a device's
        next retry (which may be a minute away on a real backoff)."""
        try:
            rows = self.store.unacked(self.clock() - REACK_HORIZON_S, REACK_LIMIT)
        except Exception as exc:  # noqa: BLE001 - a registry hiccup: devices retry anyway
            log.warning("gateway: could not look for unacked frames (%s)", type(exc).__name__)
            return
        n = 0
        now = int(self.clock())
        for r in rows:
            dev = self.verifier.device(r["device_id"])
            if dev is not None and dev.prev is not None and dev.prev.key_epoch == r["key_epoch"]:
                dev = dev.prev  # stored under the key a rekey replaced: answered with it
            if dev is None or dev.key_epoch != r["key_epoch"]:
                continue
            disp = (
                "attending" if r["attending_at"] is not None else (r["disposition"] or "received")
            )
            reason = "none"
            if disp == "rejected":
                reason = dev.state if dev.state in ("revoked", "retired") else "policy"
            self._send_ack(dev, r["counter"], codec.type_code(r["type"]), disp, reason, now)
            n += 1
        if n:
            self.stats["reacked_at_start"] += n
            log.info("gateway: re-sent %d ACK(s) the broker had not confirmed before a restart", n)

    # ------------------------------------------------ status, control ---

    def _status(self, turn: Turn, topic: str, payload: bytes) -> None:
        dev_s = V.topic_device(topic, self.prefix)
        try:
            dev_id = codec.device_int(dev_s) if dev_s else None
        except Exception:  # noqa: BLE001
            dev_id = None
        if dev_id is None or payload not in (b"online", b"offline"):
            self.pipeline.reject(turn, "status", topic, payload, "bad_status")
            return
        self.supervisor.status(dev_id, payload == b"online", turn.now)
        self.stats["status_" + payload.decode()] += 1

    def _control(self, turn: Turn, payload: bytes) -> None:
        """An operator console asks for the `attending` ACK of an alert (attend.py)."""
        req = self._parse(turn, A.parse_request, "attend", self.control_topic, payload)
        if req is None:
            return
        try:
            signed, result = self.desk.handle(req, turn.now)
        except Exception as exc:  # noqa: BLE001 - e.g. the registry is down: say so, go on
            self.stats["attend_error"] += 1
            log.warning("gateway: attend request failed (%s)", type(exc).__name__)
            self._publish_result(A.RESULT_LEAF, A.result(req, A.FAILED, "gateway_error"))
            return
        if result is not None:
            self.stats["attend_" + result["state"]] += 1
            self._publish_result(A.RESULT_LEAF, result)
        if signed is not None:
            self._send_ack(
                signed.device,
                signed.counter,
                codec.ALERT,
                "attending",
                "none",
                int(turn.now),
                track=("attend", signed),
            )
            log.info(
                "gateway: %s #%d: attending ACK signed for %s",
                codec.device_str(signed.device.id),
                signed.counter,
                signed.request.operator,
            )

    def _attend_confirmed(self, signed: A.Signed) -> None:
        """The broker took the `attending` ACK: now, and only now, the alert is attended."""
        req = signed.request
        try:
            self.store.attend_sent(req.request, req.alert, req.operator, self.clock())
        except Exception as exc:  # noqa: BLE001 - the ACK is out; the record follows on retry
            log.warning("gateway: could not record attend %s (%s)", req.request, type(exc).__name__)
        self.stats["attend_sent"] += 1
        self._publish_result(A.RESULT_LEAF, A.result(req, A.SENT))

    def _publish_result(self, leaf: str, result: dict[str, Any]) -> None:
        """A console's answer on <prefix>/<leaf>/<request> (attend or self-test)."""
        import json

        topic = f"{self.prefix}/{leaf}/{result['request']}"
        self._client.publish(topic, json.dumps(result), qos=1)

    # -------------------------------------------------------- self-test ---

    def _selftest(self, turn: Turn, payload: bytes) -> None:
        """A console or station asks for a device's TEST frame (selftest.py)."""
        req = self._parse(turn, ST.parse_request, "selftest", self.selftest_topic, payload)
        if req is not None:
            self._start_selftest(req, turn.now)

    def _parse(
        self, turn: Turn, parse: Callable[[bytes], Any], kind: str, topic: str, payload: bytes
    ) -> Any:
        """A console request, or None once an unreadable one is a dead letter (kind_reason)."""
        try:
            return parse(payload)
        except A.BadRequest as exc:
            self.pipeline.reject(turn, kind, topic, payload, f"{kind}_{exc.reason}")
            return None

    def _start_selftest(self, req: ST.Request, now: float) -> None:
        """Take a config sequence, record the request, sign and publish the CONFIG."""
        who = codec.device_str(req.device)
        try:
            p, dev, res = self.tests.take(req, now)  # seq, audit and event: one transaction
            if p is not None:
                frame = codec.encode(ST.config_fields(req, p.seq, now), dev.keys)
        except Exception as exc:  # noqa: BLE001 - e.g. the registry is down: say so, go on
            self.tests.pending.pop(req.request, None)
            self.stats["selftest_error"] += 1
            log.warning("gateway: %s: self-test request failed (%s)", who, type(exc).__name__)
            res, p = ST.result(req, ST.FAILED, "gateway_error"), None
        if res is not None:
            self.stats["selftest_" + res["state"]] += 1
            log.warning("gateway: %s: self-test refused (%s)", who, res["reason"])
            if not req.scheduled:
                self._publish_result(ST.RESULT_LEAF, res)
            return
        if p is None:
            return  # a redelivered request: its answers are already on their way
        info = self._client.publish(codec.topic(self.prefix, req.device, "down"), frame, qos=1)
        self._inflight[info.mid] = ("selftest", p)
        log.info(
            "gateway: %s: self-test (%s%s) CONFIG %d signed for %s",
            who,
            req.mode,
            f" {req.seconds} s" if req.seconds else "",
            p.seq,
            req.operator,
        )

    def _load_selftests(self) -> None:
        """Self-tests asked before a restart are still waited for (and missed when due)."""
        horizon = ST.WINDOW_MAX_S + ST.WINDOW_MARGIN_S + ST.NOW_DEADLINE_S
        try:
            n = self.tests.restore(self.store.selftest_open(self.clock() - horizon))
        except Exception as exc:  # noqa: BLE001 - they will time out at the console instead
            log.warning("gateway: could not reload open self-tests (%s)", type(exc).__name__)
            return
        if n:
            log.info("gateway: %d self-test(s) from before the restart still awaited", n)

    def _selftest_sent(self, p: ST.Pending) -> None:
        """The broker took the CONFIG: tell the console (the device gets it when it is online)."""
        p.sent = True
        self.stats["selftest_sent"] += 1
        if not p.req.scheduled:
            self._publish_result(ST.RESULT_LEAF, ST.result(p.req, ST.SENT, config_seq=p.seq))

    def _tests_stored(self, turn: Turn) -> None:
        """TEST frames this turn stored and acked: they answer the oldest waiting request."""
        tests = self.pipeline.tests_stored(turn)
        stored = self.clock()  # committed and acked by now: the round trip ends here
        for v in tests:
            p = self.tests.stored(v.device.id, v.counter, v.fields.get("pressed_at"), stored)
            if p is None:
                continue
            self.stats["selftest_received"] += 1
            log.info(
                "gateway: %s #%d: self-test TEST stored, %.1f ms after the request",
                codec.device_str(v.device.id),
                v.counter,
                p.extra["round_trip_ms"],
            )
            if not p.req.scheduled:
                self._publish_result(ST.RESULT_LEAF, p.extra)

    def _selftest_tick(self, now: float) -> None:
        """Requests whose TEST never came become SELFTEST_MISSED; due devices are asked."""
        missed = self.tests.expired(now)
        if missed:
            batch = Batch()
            for p in missed:
                detail = {"request": p.req.request, "mode": p.req.mode, "config_seq": p.seq}
                detail["scheduled"] = p.req.scheduled
                batch.events.append(R.event_row(p.req.device, ST.SELFTEST_MISSED, now, detail))
                if self.forwarder is not None:
                    from auxilio.gateway.pipeline import forward_row

                    rec = R.event_record(p.req.device, ST.SELFTEST_MISSED, now, detail)
                    batch.forward.append(forward_row(rec, now))
            self._commit_retrying(batch)
            if self.forwarder is not None:
                self.forwarder.wake()
            for p in missed:
                self.stats["selftest_missed"] += 1
                log.warning(
                    "gateway: %s: self-test missed (no TEST frame in time)",
                    codec.device_str(p.req.device),
                )
                if not p.req.scheduled:
                    self._publish_result(
                        ST.RESULT_LEAF, ST.result(p.req, ST.MISSED, "no_test_frame")
                    )
        every = self.selftest_every_s
        if not every or now < self._next_schedule:
            return
        self._next_schedule = now + self.selftest_tick_s
        retry = min(every, SELFTEST_RETRY_S)
        try:
            due = self.store.selftest_due(now - every, now - retry)
        except Exception as exc:  # noqa: BLE001 - asked again at the next tick
            log.warning("gateway: could not look for due self-tests (%s)", type(exc).__name__)
            return
        asked = 0
        for d in due:
            if asked >= SELFTEST_SCHEDULE_BATCH:
                break
            if not self.tests.waiting(d):
                self._start_selftest(ST.scheduled_request(d), now)
                asked += 1

    # ------------------------------------------------------ supervision ---

    def _supervise(self, now: float) -> None:
        lost = self.supervisor.due(now)
        if not lost:
            return
        batch = Batch(
            events=[
                R.event_row(
                    d, R.SUPERVISION_LOST, now, {"interval_s": self.supervisor.tracks[d].interval}
                )
                for d in lost
            ]
        )
        if self.forwarder is not None:
            from auxilio.gateway.pipeline import forward_row

            batch.forward = [
                forward_row(R.event_record(d, R.SUPERVISION_LOST, now, {}), now) for d in lost
            ]
        self._commit_retrying(batch)
        if self.forwarder is not None:
            self.forwarder.wake()
        for d in lost:
            self.stats["supervision_lost"] += 1
            log.warning("gateway: %s: supervision lost", codec.device_str(d))

    def _retention(self, now: float) -> None:
        try:
            n = purge_locations(self.registry, self.retention_days, now)
            # A rekey's replaced key is never used past its grace: do not keep it either.
            keys = self.registry.drop_expired_previous_keys(now)
        except Exception as exc:  # noqa: BLE001 - retried at the next period
            log.warning("gateway: retention purge failed (%s)", type(exc).__name__)
            return
        if keys:
            log.info("gateway: dropped %d replaced key(s) past their grace", keys)
        if n:
            log.info(
                "gateway: erased the locations of %d record(s) older than %d days",
                n,
                self.retention_days,
            )
