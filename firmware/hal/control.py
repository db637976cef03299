# Host HAL control channel: the firmware side connects as a TCP client and speaks JSON lines.
#
# When AUXILIO_HAL_CONTROL=127.0.0.1:PORT is set, one ControlChannel per
# interpreter connects to that address (the controller owns the port;
# reconnect with backoff) and multiplexes every HostHal by its index:
#   controller -> device: {"op":"press"|"release"|"battery"|"mains"|"tamper"|"link"|"reset"|"gc"|"status", "dev":N, ...}
#   device -> controller: {"ev":"hello"|"haptic"|"led"|"buzzer"|"state"|"log"|"mem"|"status", "dev":N, ...}
# ("gc" / "mem" are test extras: a gc.collect() then gc.mem_alloc()/mem_free();
# "status" answers the transport's status() (bearer, modem state, AT counters);
# "state" events also carry "us", the device's ticks_us, for latency figures).
#
# RAM budget: at most QUEUE_MAX queued event lines plus one stream pair.

import asyncio
import json

QUEUE_MAX = 256  # event lines buffered while the controller is not connected
RECONNECT_MAX_MS = 2000  # reconnect backoff cap


class ControlChannel:
    """One TCP client per interpreter, multiplexing every HostHal by its index."""

    def __init__(self, host, port):
        self.host = host
        self.port = port
        self.hals = {}
        self._q = []
        self._ev = asyncio.Event()
        self.connected = False

    def register(self, index, hal):
        self.hals[index] = hal

    def emit(self, obj):
        q = self._q
        if len(q) >= QUEUE_MAX:
            del q[0]
        q.append(json.dumps(obj))
        self._ev.set()

    async def run(self):
        delay = 50
        while True:
            try:
                reader, writer = await asyncio.open_connection(self.host, self.port)
            except OSError:
                await asyncio.sleep_ms(delay)
                delay = min(delay * 2, RECONNECT_MAX_MS)
                continue
            delay = 50
            try:
                # 6 = IPPROTO_TCP, 1 = TCP_NODELAY (names missing on the unix port). With
                # Nagle, an event line written while the previous one is unacked waits for
                # the controller's delayed ACK (~18 ms on loopback): every other alert's
                # "sent"/"acked" looked ~18 ms late in bench_gateway.
                writer.s.setsockopt(6, 1, 1)
            except (OSError, AttributeError):
                pass  # still works, only with late events
            self.connected = True
            wt = asyncio.create_task(self._writer(writer))
            try:
                while True:
                    line = await reader.readline()
                    if not line:
                        break
                    self._dispatch(line)
            except OSError:
                pass
            self.connected = False
            wt.cancel()
            try:
                writer.close()
            except OSError:
                pass

    async def _writer(self, writer):
        q = self._q
        while True:
            if not q:
                await self._ev.wait()
                self._ev.clear()
            while q:
                writer.write(q[0].encode() + b"\n")
                del q[0]
            await writer.drain()

    def _dispatch(self, line):
        try:
            cmd = json.loads(line)
            op = cmd["op"]
            hal = self.hals[cmd.get("dev", 0)]
        except (ValueError, KeyError, TypeError):
            self.emit({"ev": "log", "dev": -1, "msg": "control: bad command ignored"})
            return
        if op == "press":
            hal.press()
        elif op == "release":
            hal.release()
        elif op == "battery":
            hal.set_battery(cmd.get("pct"))
        elif op == "mains":
            hal.set_mains(cmd.get("on", True))
        elif op == "tamper":
            hal.set_tamper(cmd.get("open", False))
        elif op == "link":
            hal.set_link(cmd.get("up", True))
        elif op == "reset":
            hal.reset()
        elif op == "status":
            st = getattr(hal.transport, "status", None)  # issue 12: bearer and modem health
            self.emit({"ev": "status", "dev": hal.index, "status": st() if st else None})
        elif op == "gc":
            import gc

            gc.collect()
            self.emit(
                {"ev": "mem", "dev": hal.index, "alloc": gc.mem_alloc(), "free": gc.mem_free()}
            )
        else:
            self.emit({"ev": "log", "dev": hal.index, "msg": "control: unknown op"})


def channel_from_env():
    """A ControlChannel for AUXILIO_HAL_CONTROL=host:port, or None when unset/invalid."""
    import os

    addr = os.getenv("AUXILIO_HAL_CONTROL")
    if not addr or ":" not in addr:
        return None
    host, port = addr.rsplit(":", 1)
    try:
        return ControlChannel(host, int(port))
    except ValueError:
        print("AUXILIO_HAL_CONTROL must look like 127.0.0.1:PORT; control channel off")
        return None
