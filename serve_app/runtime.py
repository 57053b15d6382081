"""The :class:`~serve_app.model.metrics.MetricsSink` of the Ray processes: ``ray.util.metrics``.

Ray exports them on each node's metrics endpoint (``MetricsExportPort`` of ``ray.nodes()``),
which Prometheus scrapes; names and tags come from :mod:`serve_app.model.metrics`.
"""

from __future__ import annotations

import functools

from ray.util.metrics import Counter, Gauge, Histogram

from serve_app.model.metrics import ALL, Metric


class RayMetrics:
    """One Ray metric object per :class:`~serve_app.model.metrics.Metric`, made once per process."""

    def __init__(self, metrics: tuple[Metric, ...] = ALL) -> None:
        self._counters = {
            m.name: Counter(m.name, description=m.description, tag_keys=m.tag_keys)
            for m in metrics
            if m.kind == "counter"
        }
        self._gauges = {
            m.name: Gauge(m.name, description=m.description, tag_keys=m.tag_keys)
            for m in metrics
            if m.kind == "gauge"
        }
        self._histograms = {
            m.name: Histogram(
                m.name,
                description=m.description,
                boundaries=list(m.boundaries),
                tag_keys=m.tag_keys,
            )
            for m in metrics
            if m.kind == "histogram"
        }

    def inc(self, metric: Metric, value: float = 1, **tags: str) -> None:
        if value > 0:  # Ray refuses a zero increment; nothing to count anyway
            self._counters[metric.name].inc(value, tags)

    def set(self, metric: Metric, value: float, **tags: str) -> None:
        self._gauges[metric.name].set(value, tags)

    def observe(self, metric: Metric, value: float, **tags: str) -> None:
        """One sample, kept in this process until Ray's agent collects it (no remote call);
        callers observe once per write to the brokers, not per request or tweet."""
        self._histograms[metric.name].observe(value, tags)


@functools.cache
def ray_metrics() -> RayMetrics:
    """The process's sink: every replica or actor in a worker process shares it."""
    return RayMetrics()
