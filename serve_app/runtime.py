"""The :class:`~serve_app.model.metrics.MetricsSink` of the Ray processes: ``ray.util.metrics``;
and Ray's check of its cluster token, for what only its holders may see.

Ray exports them on each node's metrics endpoint (``MetricsExportPort`` of ``ray.nodes()``),
which Prometheus scrapes; names and tags come from :mod:`serve_app.model.metrics`.
"""

from __future__ import annotations

import functools

from ray.util.metrics import Counter, Gauge, Histogram

from serve_app.model.exposure import TokenCheck
from serve_app.model.metrics import ALL, Metric
from serve_app.model.metrics_buffer import BufferedMetrics


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
def ray_metrics() -> BufferedMetrics:
    """The process's sink: every replica or actor in a worker process shares it; counters
    are summed in the process and handed to Ray once a second
    (:mod:`serve_app.model.metrics_buffer`)."""
    return BufferedMetrics(RayMetrics())


def ray_token_check() -> TokenCheck | None:
    """Ray's own check of an ``Authorization: Bearer`` header against the cluster's token
    (what the Ray dashboard and CLI use: ``RAY_AUTH_TOKEN`` / ``RAY_AUTH_TOKEN_PATH``), or
    None when the cluster runs without token authentication."""
    from ray._private.authentication import authentication_utils

    if not authentication_utils.is_token_auth_enabled():
        return None
    return authentication_utils.validate_request_token
