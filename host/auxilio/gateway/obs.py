"""What operations see of the gateway: counters by reason, Prometheus metrics, summaries, quiet logs.

One Counter (`stats`) is the source of truth for every count; the Prometheus
collector reads it at scrape time and the periodic summary prints its deltas,
so the three can never disagree. Per-device warnings are rate-limited: one
line per (device, reason) per window, then a count of what was suppressed,
so a replay flood cannot drown the log (issue 8 §10).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

log = logging.getLogger("auxilio.gateway")

# One warning per (device, reason) per this many seconds.
WARN_WINDOW_S = 60.0
# The one-line summary of counts, at most this often (only when something changed).
SUMMARY_EVERY_S = 60.0


class RateLimitedLog:
    """log.warning, at most once per key per window; the next line says how many were held back."""

    def __init__(self, logger: logging.Logger, window_s: float = WARN_WINDOW_S) -> None:
        self.logger = logger
        self.window_s = window_s
        self._last: dict[Any, float] = {}
        self._held: Counter[Any] = Counter()

    def warning(self, key: Any, msg: str, *args: Any) -> None:
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self.window_s:
            self._held[key] += 1
            return
        held = self._held.pop(key, 0)
        self._last[key] = now
        if len(self._last) > 10_000:  # bounded memory under a flood of distinct keys
            self._last.clear()
        if held:
            self.logger.warning(
                msg + " (%d more like this in the last %.0fs)", *args, held, self.window_s
            )
        else:
            self.logger.warning(msg, *args)


class Summary:
    """Prints the counts that changed since the last summary, on one line."""

    def __init__(self, stats: Counter[str], every_s: float = SUMMARY_EVERY_S) -> None:
        self.stats = stats
        self.every_s = every_s
        self._last = Counter(stats)
        self._at = time.monotonic()

    def tick(self) -> None:
        now = time.monotonic()
        if now - self._at < self.every_s:
            return
        delta = {k: v - self._last.get(k, 0) for k, v in self.stats.items()}
        delta = {k: v for k, v in delta.items() if v}
        span = now - self._at
        self._at = now
        self._last = Counter(self.stats)
        if delta:
            text = " ".join(f"{k}={v}" for k, v in sorted(delta.items()))
            log.info("gateway: last %.0fs: %s", span, text)


# Prefixes of `stats` keys -> (metric name, label name) for the Prometheus view.
_FAMILIES = (
    ("drop_", "auxilio_gateway_dropped_total", "reason"),
    ("dead_", "auxilio_gateway_dead_letters_total", "reason"),
    ("ack_", "auxilio_gateway_acks_total", "disposition"),
    ("attend_", "auxilio_gateway_attend_requests_total", "result"),
)


class StatsCollector:
    """A prometheus_client collector over the gateway's Counter and a few gauges."""

    def __init__(self, stats: Counter[str], gauges: Callable[[], dict[str, float]]) -> None:
        self.stats = stats
        self.gauges = gauges

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        snapshot = dict(self.stats)
        families = {
            name: CounterMetricFamily(name, f"gateway {label} counts", labels=[label])
            for _p, name, label in _FAMILIES
        }
        other = CounterMetricFamily(
            "auxilio_gateway_events_total", "gateway outcome counts", labels=["what"]
        )
        for key, value in sorted(snapshot.items()):
            for prefix, name, _label in _FAMILIES:
                if key.startswith(prefix):
                    families[name].add_metric([key[len(prefix) :]], value)
                    break
            else:
                other.add_metric([key], value)
        yield from families.values()
        yield other
        for name, value in self.gauges().items():
            g = GaugeMetricFamily(f"auxilio_gateway_{name}", f"gateway {name}")
            g.add_metric([], value)
            yield g


def serve_metrics(
    address: str, stats: Counter[str], gauges: Callable[[], dict[str, float]]
) -> Callable[[], None]:
    """Serve Prometheus text format on host:port (loopback by default); returns a stop function."""
    from prometheus_client import CollectorRegistry
    from prometheus_client.exposition import start_http_server

    from auxilio.errors import UsageError

    host, _sep, port_s = address.rpartition(":")
    try:
        port = int(port_s)
    except ValueError:
        raise UsageError(f"bad --metrics address {address!r} (expected host:port)") from None
    reg = CollectorRegistry()
    reg.register(StatsCollector(stats, gauges))
    try:
        server, thread = start_http_server(port, addr=host or "127.0.0.1", registry=reg)
    except OSError as exc:
        raise UsageError(f"cannot serve metrics on {address}: {exc.strerror}") from None

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)

    return stop
