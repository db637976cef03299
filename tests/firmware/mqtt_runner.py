"""MicroPython test driver for firmware/session.py: JSON config file in argv[1], commands on stdin, events on stdout.

A file, not an inline JSON argument: this unix port build dies ("FATAL: uncaught NLR") on an
argv string longer than about 200 characters.

Events (one per line): ``STATE 1|0``, ``LOG <msg>``, ``MSG <topic> <payload hex>``,
``PUB <tag> ok|fail``, ``STAT <json>``, ``MEM <bytes>``, ``BENCH <json list of us>``.
Commands: ``pub <tag> <topic> <payload hex> <qos> <retain 0|1> <timeout_ms>``, ``stat``, ``mem``,
``bench <n> <topic> [size]``, ``link 0|1`` (the transport link state), ``stop``.
"""

# ruff: noqa: UP031
# (MicroPython code: %-formatting is what the device has cheaply.)

import asyncio
import gc
import json
import sys
import time

# The firmware directory (sources or an .mpy build) comes first on the path, from the config.
with open(sys.argv[1]) as _f:
    _CFG = json.load(_f)
for _p in _CFG.get("path", ()):
    sys.path.insert(0, _p)

import session  # noqa: E402


def _hex(b):
    return "".join("%02x" % x for x in b)


def _unhex(s):
    return bytes(int(s[i : i + 2], 16) for i in range(0, len(s), 2))


def _out(line):
    print(line)


class Runner:
    def __init__(self, cfg):
        self.link = True  # toggled by the "link 0|1" command, read by the session's link_up
        ca = None
        if cfg.get("ca_file"):
            with open(cfg["ca_file"], "rb") as f:
                ca = f.read()
        self.s = session.Session(
            cfg["client_id"],
            cfg["host"],
            cfg["port"],
            user=cfg.get("user"),
            password=cfg.get("password"),
            keepalive=cfg.get("keepalive", 60),
            ssl_ca=ca,
            server_hostname=cfg.get("server_hostname"),
            will_topic=cfg.get("will_topic"),
            online_topic=cfg.get("online_topic"),
            subscriptions=cfg.get("subs", ()),
            on_message=self.on_message,
            link_up=lambda: self.link,
            log=lambda m: _out("LOG " + m),
            max_packet=cfg.get("max_packet", 256),
            on_state=lambda up: _out("STATE %d" % up),
            backoff_min_ms=cfg.get("backoff_min_ms", 200),
            backoff_max_ms=cfg.get("backoff_max_ms", 2000),
            connect_timeout_ms=cfg.get("connect_timeout_ms", 5000),
            tcp_nodelay=cfg.get("tcp_nodelay", True),
        )
        if cfg.get("raise_in_callback"):
            self.raise_in_callback = True
        else:
            self.raise_in_callback = False

    def on_message(self, topic, payload):
        _out("MSG %s %s" % (topic.decode(), _hex(payload)))
        if self.raise_in_callback:
            raise ValueError("test callback failure")

    async def pub(self, tag, topic, payload, qos, retain, timeout):
        ok = await self.s.publish(topic, payload, qos, retain, timeout)
        _out("PUB %s %s" % (tag, "ok" if ok else "fail"))

    async def bench(self, n, topic, size):
        while not self.s.connected():
            await asyncio.sleep_ms(10)
        payload = bytes(size)  # an ALERT frame is at most 64 bytes (DESIGN.md 3)
        times = []
        for _ in range(n):
            t0 = time.ticks_us()
            ok = await self.s.publish(topic, payload, 1, False, 5000)
            dt = time.ticks_diff(time.ticks_us(), t0)
            if ok:
                times.append(dt)
        _out("BENCH " + json.dumps(times))

    def stat(self):
        s = self.s
        return {
            "connected": s.connected(),
            "connects": s.connects,
            "reconnects": s.reconnects,
            "drops": s.drops,
            "pings": s.pings,
            "bad_packets": s.bad_packets,
            "evicted": s.evicted,
            "last_error": s.last_error,
        }

    async def commands(self):
        rd = asyncio.StreamReader(sys.stdin)
        while True:
            line = await rd.readline()
            if not line:
                break
            w = line.decode().split()
            if not w:
                continue
            if w[0] == "pub":
                asyncio.create_task(
                    self.pub(w[1], w[2], _unhex(w[3]), int(w[4]), w[5] == "1", int(w[6]))
                )
            elif w[0] == "stat":
                _out("STAT " + json.dumps(self.stat()))
            elif w[0] == "mem":
                gc.collect()
                _out("MEM %d" % gc.mem_alloc())
            elif w[0] == "bench":
                asyncio.create_task(self.bench(int(w[1]), w[2], int(w[3]) if len(w) > 3 else 64))
            elif w[0] == "link":
                self.link = w[1] == "1"
            elif w[0] == "stop":
                self.s.stop()
                break

    async def main(self):
        task = asyncio.create_task(self.s.run())
        await self.commands()
        self.s.stop()
        await task
        _out("EXIT")


asyncio.run(Runner(_CFG).main())
