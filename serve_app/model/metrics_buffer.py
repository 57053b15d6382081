"""Counters summed in the process, handed to the real sink at most once per interval.

A Ray counter's ``inc`` is tens of µs of Python (tag validation, the recorder's lock and
bookkeeping); the Gateway counted two or three per request. :class:`BufferedMetrics` adds
an increment to a dict entry instead (well under a µs) and hands each sum to the real sink
once per ``interval_s``: a timer is armed by the first increment after a flush, so an idle
process schedules nothing at all. Gauges and histograms go straight through: gauges are set
once per second at most, and a histogram is observed once per write to the brokers (one
write carries many requests), never per request. Ray-free: unit tests drive it with a fake.

What it costs: a counter shows increments up to ``interval_s`` late (Ray's own export runs
every few seconds anyway), and a process that ends loses at most its last interval's sums.
"""

from __future__ import annotations

import asyncio
import threading

from serve_app.model.metrics import Metric, MetricsSink

FLUSH_INTERVAL_S = 1.0

_Key = tuple[Metric, tuple[tuple[str, str], ...]]


class BufferedMetrics:
    """A :class:`~serve_app.model.metrics.MetricsSink` that sums counters before ``sink``."""

    def __init__(self, sink: MetricsSink, interval_s: float = FLUSH_INTERVAL_S) -> None:
        self.sink = sink
        self.interval_s = interval_s
        self._sums: dict[_Key, float] = {}
        self._armed = False
        self._lock = threading.Lock()  # a replica's handlers share one loop; tools may not

    def inc(self, metric: Metric, value: float = 1, **tags: str) -> None:
        key = (metric, tuple(tags.items()))
        with self._lock:
            self._sums[key] = self._sums.get(key, 0) + value
            if self._armed:
                return
            self._armed = True
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop to wake us later (a tool, a sync test): hand it on now
            self.flush()
            return
        loop.call_later(self.interval_s, self.flush)

    def set(self, metric: Metric, value: float, **tags: str) -> None:
        self.sink.set(metric, value, **tags)

    def observe(self, metric: Metric, value: float, **tags: str) -> None:
        self.sink.observe(metric, value, **tags)

    def flush(self) -> None:
        """Hand every sum to the sink now (the timer's callback; also for a clean stop)."""
        with self._lock:
            sums, self._sums, self._armed = self._sums, {}, False
        for (metric, tags), value in sums.items():
            self.sink.inc(metric, value, **dict(tags))
