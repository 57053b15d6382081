"""How fresh a consumer's store is: the age of the newest tweet it counted (no Ray in here).

Each consumer exports the age itself (:data:`~serve_app.model.metrics.FRESHNESS`, tagged
with its store) once per :data:`FRESHNESS_EXPORT_S`, so the gauge keeps growing while
nothing new arrives, a stalled consumer included; Grafana takes the smallest age over a
store's consumers (the newest tweet that store holds).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Collection, Sequence

from serve_app.model.metrics import FRESHNESS, MetricsSink
from serve_app.model.schema import Tweet

FRESHNESS_EXPORT_S = 1.0
"""How often a consumer sets its freshness gauge."""


def newest_accepted_at(tweets: Sequence[Tweet], refused: Collection[int] = ()) -> float | None:
    """The acceptance time (epoch seconds) of the newest tweet a batch counted: every
    decoded tweet but those the store refused (``refused``: indexes into ``tweets``)."""
    times = (t.accepted_at for i, t in enumerate(tweets) if i not in refused)
    newest = max(times, default=None)
    return None if newest is None else newest.timestamp()


def freshness_s(newest_at: float | None, now: float) -> float | None:
    """Seconds since ``newest_at``; never negative (the ingest node's clock may run a little
    ahead of the consumer's). None before anything was counted."""
    return None if newest_at is None else max(0.0, now - newest_at)


class Freshness:
    """The newest acceptance time a consumer counted, exported as its store's age."""

    def __init__(self, store: str, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.clock = clock
        self.newest_at: float | None = None

    def counted(self, accepted_at: float | None) -> None:
        """A batch was counted whose newest tweet was accepted at ``accepted_at`` (a
        redelivered, older batch never makes the store look staler)."""
        if accepted_at is not None and (self.newest_at is None or accepted_at > self.newest_at):
            self.newest_at = accepted_at

    def age_s(self) -> float | None:
        return freshness_s(self.newest_at, self.clock())

    def export(self, metrics: MetricsSink) -> None:
        age = self.age_s()
        if age is not None:
            metrics.set(FRESHNESS, age, store=self.store)

    async def run(self, metrics: MetricsSink, interval_s: float = FRESHNESS_EXPORT_S) -> None:
        """Export forever, once per ``interval_s`` (the consumer's background task)."""
        while True:
            self.export(metrics)
            await asyncio.sleep(interval_s)
