"""The pipeline's application metrics: names, tags and the sink the cores count through.

The one place metric names are defined: the cores count through a :class:`MetricsSink`
(``serve_app.runtime`` turns it into ``ray.util.metrics`` in the Serve replicas and
consumer actors; unit tests pass a plain fake), and ``grafana/dashboard.py`` builds its
PromQL from :attr:`Metric.prometheus`. Ray-free: nothing here imports Ray.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

RAY_PREFIX = "ray_"
"""Ray's Prometheus exporter puts this in front of every application metric."""


@dataclass(frozen=True)
class Metric:
    """One application metric; ``tag_keys`` are the only tags a sample may carry."""

    name: str
    kind: Literal["counter", "gauge"]
    description: str
    tag_keys: tuple[str, ...]

    @property
    def prometheus(self) -> str:
        """The series name Prometheus scrapes (Ray adds ``ray_``; counters end in ``_total``)."""
        suffix = "_total" if self.kind == "counter" else ""
        return f"{RAY_PREFIX}{self.name}{suffix}"


ACCEPTED = Metric(
    "weather_tweets_accepted",
    "counter",
    "Tweets accepted (202 / OK: both brokers confirmed), by face.",
    ("face",),
)
REJECTED = Metric(
    "weather_requests_rejected",
    "counter",
    "Publish requests refused, by face and status (HTTP status or gRPC code name).",
    ("face", "code"),
)
UNAVAILABLE = Metric(
    "weather_publish_unavailable",
    "counter",
    "Publish requests answered 503 / UNAVAILABLE, per broker that did not confirm.",
    ("face", "broker"),
)
CHUNKS_PUBLISHED = Metric(
    "weather_chunks_published",
    "counter",
    "Chunks (broker messages) a broker confirmed.",
    ("broker",),
)
CONSUMER_TWEETS = Metric(
    "weather_consumer_tweets",
    "counter",
    "Tweets a consumer handled: applied (new in its store), duplicate (id already "
    "counted) or dead_lettered (poison).",
    ("consumer", "outcome"),
)
BACKLOG = Metric(
    "weather_broker_backlog",
    "gauge",
    "Messages waiting for the consumers: Kafka consumer-group lag, RabbitMQ ready messages.",
    ("broker",),
)
DEAD_LETTERS = Metric(
    "weather_broker_dead_letters",
    "gauge",
    "Messages in the dead-letter topic (Kafka) or dead-letter queue (RabbitMQ).",
    ("broker",),
)
ADMISSION_REFUSING = Metric(
    "weather_ingest_refusing",
    "gauge",
    "1 while a Gateway replica refuses new tweets (503) because a broker's undrained "
    "backlog is near what the broker keeps, or unknown; else 0 (set once per second).",
    ("broker",),
)
PARKED_DEAD_LETTERS = Metric(
    "weather_parked_dead_letters",
    "gauge",
    "Dead letters parked in a consumer's store because the dead-letter broker could not take "
    "them (alarm, outage); published again in the background.",
    ("consumer",),
)
SKIPPED_RECORDS = Metric(
    "weather_skipped_records",
    "counter",
    "Broker records deleted before a consumer read them (Kafka retention): never counted.",
    ("consumer",),
)

ALL: tuple[Metric, ...] = (
    ACCEPTED,
    REJECTED,
    UNAVAILABLE,
    CHUNKS_PUBLISHED,
    CONSUMER_TWEETS,
    BACKLOG,
    DEAD_LETTERS,
    ADMISSION_REFUSING,
    PARKED_DEAD_LETTERS,
    SKIPPED_RECORDS,
)

FACES = ("rest", "grpc", "stream")
OUTCOMES = ("applied", "duplicate", "dead_lettered")
UNKNOWN_BROKER = "unknown"
"""The ``broker`` of a 503 whose cause named no broker (e.g. a writer replica died)."""


class MetricsSink(Protocol):
    """Where the cores count; tags are passed as keywords and must match ``tag_keys``."""

    def inc(self, metric: Metric, value: float = 1, **tags: str) -> None: ...

    def set(self, metric: Metric, value: float, **tags: str) -> None: ...


class NoMetrics:
    """The sink of a core nobody observes (unit tests, tooling)."""

    def inc(self, metric: Metric, value: float = 1, **tags: str) -> None:
        return None

    def set(self, metric: Metric, value: float, **tags: str) -> None:
        return None


NO_METRICS = NoMetrics()
