"""Plain fakes for the Ray-free cores: no server, no Ray."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Sequence
from typing import Any

import grpc

from serve_app.errors import BrokerUnavailable
from serve_app.ingest.core import Ingest, IngestLimits
from serve_app.model.codec import Chunk, decode_message
from serve_app.model.metrics import NO_METRICS, Metric, MetricsSink
from serve_app.model.schema import Tweet, TweetRules

RULES = TweetRules(("Lluvioso", "Nubloso", "Soleado"))
LIMITS = IngestLimits(max_body_bytes=65_536, max_batch_tweets=50, max_json_depth=8, retry_after_s=2)


class FakeWriter:
    """Records every chunk it confirms; can be told to fail or to hang."""

    def __init__(self, broker: str, by_country: bool) -> None:
        self.broker = broker
        self.by_country = by_country
        self.chunks: list[Chunk] = []
        self.fail: str | None = None
        self.hang = False

    async def write(self, chunks: Sequence[Chunk], timeout_s: float) -> int:
        if self.hang:
            await asyncio.sleep(3600)
        if self.fail:
            raise BrokerUnavailable(self.broker, self.fail)
        self.chunks.extend(chunks)
        return len(chunks)

    async def health(self, timeout_s: float) -> dict[str, Any]:
        return {"ok": not self.fail, "detail": self.fail or "reachable"}

    def tweets(self) -> list[Tweet]:
        return [t for c in self.chunks for t in decode_message(c.body).tweets]


def make_ingest(
    timeout_s: float = 1.0, metrics: MetricsSink = NO_METRICS
) -> tuple[Ingest, FakeWriter, FakeWriter]:
    kafka, rabbit = FakeWriter("kafka", by_country=True), FakeWriter("rabbitmq", by_country=False)
    ingest = Ingest(
        [kafka, rabbit],
        RULES,
        LIMITS,
        max_chunk_bytes=8192,
        publish_timeout_s=timeout_s,
        metrics=metrics,
    )
    return ingest, kafka, rabbit


class FakeGrpcContext:
    """What a servicer sets on a gRPC context."""

    def __init__(self) -> None:
        self.code: grpc.StatusCode = grpc.StatusCode.OK
        self.details = ""
        self.trailing: list[tuple[str, str]] = []

    def set_code(self, code: grpc.StatusCode) -> None:
        self.code = code

    def set_details(self, details: str) -> None:
        self.details = details

    def set_trailing_metadata(self, trailing_metadata: list[tuple[str, str]]) -> None:
        self.trailing = trailing_metadata


class RecordingMetrics:
    """A metrics sink that keeps counts, gauges and histogram samples in memory; like Ray,
    it refuses a sample whose tags are not exactly the metric's ``tag_keys``."""

    def __init__(self) -> None:
        self.counts: Counter[tuple[str, tuple[tuple[str, str], ...]]] = Counter()
        self.gauges: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        self.samples: dict[tuple[str, tuple[tuple[str, str], ...]], list[float]] = {}

    @staticmethod
    def _key(metric: Metric, tags: dict[str, str]) -> tuple[str, tuple[tuple[str, str], ...]]:
        if set(tags) != set(metric.tag_keys):
            raise ValueError(f"{metric.name}: tags {sorted(tags)} != {sorted(metric.tag_keys)}")
        return metric.name, tuple(sorted(tags.items()))

    def inc(self, metric: Metric, value: float = 1, **tags: str) -> None:
        assert metric.kind == "counter" and value >= 0, (metric, value)
        self.counts[self._key(metric, tags)] += value

    def set(self, metric: Metric, value: float, **tags: str) -> None:
        assert metric.kind == "gauge", metric
        self.gauges[self._key(metric, tags)] = value

    def observe(self, metric: Metric, value: float, **tags: str) -> None:
        assert metric.kind == "histogram" and value >= 0, (metric, value)
        self.samples.setdefault(self._key(metric, tags), []).append(value)

    def observed(self, metric: Metric, **tags: str) -> list[float]:
        return self.samples.get(self._key(metric, tags), [])

    def count(self, metric: Metric, **tags: str) -> float:
        return self.counts[self._key(metric, tags)]

    def gauge(self, metric: Metric, **tags: str) -> float | None:
        return self.gauges.get(self._key(metric, tags))

    def by_tag(self, metric: Metric, tag: str) -> dict[str, float]:
        """Non-zero totals of a counter grouped by one tag."""
        totals: Counter[str] = Counter()
        for (name, tags), value in self.counts.items():
            if name == metric.name and value:
                totals[dict(tags)[tag]] += value
        return dict(totals)


class FakeTime:
    """A clock and an asyncio-style sleep that only moves the clock."""

    def __init__(self) -> None:
        self.now = 0.0
        self.waits: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.waits.append(seconds)
        self.now += seconds
