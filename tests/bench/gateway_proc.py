"""A bench gateway process: the real Gateway, plus the time each group commit became durable.

``python -m tests.bench.gateway_proc BROKER REGISTRY KEYFILE COMMITS [jsonl|webhook URL]``

Runs ``auxilio.gateway.Gateway`` as ``auxilio gateway`` does (Gateway.run:
SIGTERM stops it cleanly), with the clock taken as synchronised (production)
and, if asked, the transactional forwarder to a JSONL stream that discards
(/dev/null) or to a webhook. It prints one JSON line on stdout when it is
subscribed: ``{"subscribed": <time.perf_counter()>}``, and on exit writes
COMMITS: ``[[t, [[device, counter], ...]], ...]``, one entry per committed
batch that stored frames. perf_counter is CLOCK_MONOTONIC on Linux, one clock
for every process on the host, so the bench compares these times with its
own arrival times directly.

The commit time comes from wrapping this process's ``gateway.store.commit``
(the call the gateway makes for each group commit): no hook in the gateway
itself. ``$AUXILIO_GATEWAY_CRASH_AT`` works as in production (crash.py).
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from typing import Any

from auxilio.gateway import Gateway
from auxilio.gateway.clock import ClockState
from auxilio.gateway.forward import JsonlSink, Sink, WebhookSink
from auxilio.keys import load_private_key
from auxilio.registry import open_registry

SUBSCRIBE_TIMEOUT_S = 60.0


def make_sink(spec: list[str]) -> Sink | None:
    if not spec:
        return None
    if spec[0] == "jsonl":
        return JsonlSink(open(os.devnull, "w"))  # noqa: SIM115 - lives as long as the process
    if spec[0] == "webhook":
        return WebhookSink(spec[1])
    raise SystemExit(f"unknown sink {spec!r}")


def main(argv: list[str]) -> int:
    broker, registry_url, key_file, commits_file, *forward = argv
    registry = open_registry(registry_url)
    gw = Gateway(
        registry,
        load_private_key(key_file),
        broker,
        sink=make_sink(forward),
        clock_state=ClockState(True),
    )
    commits: list[tuple[float, list[tuple[int, int]]]] = []
    real_commit = gw.store.commit

    def timed_commit(batch: Any) -> None:
        real_commit(batch)
        t = time.perf_counter()
        if batch.alerts:
            commits.append((t, [(a["device_id"], a["counter"]) for a in batch.alerts]))

    gw.store.commit = timed_commit  # type: ignore[method-assign]

    def announce() -> None:
        if gw.connected.wait(SUBSCRIBE_TIMEOUT_S):
            # The gateway's own moment (its re-ACKs may beat this thread's wake-up).
            print(json.dumps({"subscribed": gw.subscribed_at}), flush=True)

    threading.Thread(target=announce, daemon=True).start()
    try:
        gw.run()
    finally:
        with open(commits_file, "w") as f:
            json.dump(commits, f)
        registry.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
