"""The pipeline's application metrics: names, tags and the sink the cores count through.

The one place metric names are defined: the cores count through a :class:`MetricsSink`
(``serve_app.runtime`` turns it into ``ray.util.metrics`` in the Serve replicas and
consumer actors; unit tests pass a plain fake), and ``grafana/dashboard.py`` builds its
PromQL from :attr:`Metric.prometheus`. Ray-free: nothing here imports Ray.

Names follow Prometheus' conventions: the unit comes last (``_tweets``, ``_messages``,
``_requests``, ``_seconds``; a 0/1 gauge has none), and Ray's exporter adds ``ray_`` in
front and ``_total`` after a counter's name.
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
    kind: Literal["counter", "gauge", "histogram"]
    description: str
    tag_keys: tuple[str, ...]
    boundaries: tuple[float, ...] = ()
    """A histogram's bucket upper bounds (Prometheus ``le``), increasing."""

    @property
    def prometheus(self) -> str:
        """The series name Prometheus scrapes (Ray adds ``ray_``; counters end in ``_total``;
        a histogram's series are this name plus ``_bucket``, ``_sum`` and ``_count``)."""
        suffix = "_total" if self.kind == "counter" else ""
        return f"{RAY_PREFIX}{self.name}{suffix}"


LATENCY_BUCKETS_S: tuple[float, ...] = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0
)  # fmt: skip
"""Publish latency buckets: from a write to local brokers (a few ms) to past the publish
timeout (5 s by default), so a write that timed out still lands in a finite bucket."""


ACCEPTED = Metric(
    "weather_accepted_tweets",
    "counter",
    "Tweets accepted (202 / OK: both brokers confirmed), by face.",
    ("face",),
)
REJECTED = Metric(
    "weather_rejected_requests",
    "counter",
    "Publish requests refused, by face and status (HTTP status or gRPC code name).",
    ("face", "code"),
)
UNAVAILABLE = Metric(
    "weather_unavailable_requests",
    "counter",
    "Publish requests answered 503 / UNAVAILABLE, per broker that did not confirm.",
    ("face", "broker"),
)
CHUNKS_PUBLISHED = Metric(
    "weather_published_messages",
    "counter",
    "Broker messages (chunks of tweets) a broker confirmed.",
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
    "weather_broker_backlog_messages",
    "gauge",
    "Messages waiting for the consumers: Kafka consumer-group lag, RabbitMQ ready messages.",
    ("broker",),
)
DEAD_LETTERS = Metric(
    "weather_broker_dead_letter_messages",
    "gauge",
    "Messages in the dead-letter topic (Kafka) or dead-letter queue (RabbitMQ).",
    ("broker",),
)
ADMISSION_REFUSING = Metric(
    "weather_ingest_refusing",
    "gauge",
    "1 while a Gateway replica refuses new tweets (503) because a broker's undrained "
    "backlog is near what the broker keeps, or unknown, or (broker=redis, valkey) a store "
    "is near its maxmemory; else 0 (set once per second).",
    ("broker",),
)
PARKED_DEAD_LETTERS = Metric(
    "weather_parked_dead_letter_messages",
    "gauge",
    "Dead letters in a consumer's store (its outbox) the dead-letter broker has not confirmed "
    "yet; published as fast as the broker takes them.",
    ("consumer",),
)
SKIPPED_RECORDS = Metric(
    "weather_skipped_messages",
    "counter",
    "Broker records deleted before a consumer read them (Kafka retention): never counted.",
    ("consumer",),
)
POLLER_RESTARTS = Metric(
    "weather_admission_poller_restarts",
    "counter",
    "Times a Gateway replica's backlog poller ended and was started again (its reason is in "
    "GET /health); while it is down the replica's admission readings go stale.",
    ("task",),
)
PUBLISH_LATENCY = Metric(
    "weather_publish_latency_seconds",
    "histogram",
    "Seconds from the start of a write to both brokers (one group commit of a Gateway "
    "replica) until every broker confirmed it (outcome=confirmed) or one did not (failed).",
    ("outcome",),
    LATENCY_BUCKETS_S,
)
OVERLOAD_REFUSED = Metric(
    "weather_overload_refused_requests",
    "counter",
    "Publish requests a Gateway replica refused at once (503 + Retry-After, body unread) "
    "because it had as many in flight as its adaptive concurrency limit allows, by face.",
    ("face",),
)
CONCURRENCY_LIMIT = Metric(
    "weather_concurrency_limit_requests",
    "gauge",
    "A Gateway replica's adaptive concurrency limit (publish requests of a face it works "
    "on at once), moved by publish latency; set at most once per window, when it changes.",
    ("face",),
)
FRESHNESS = Metric(
    "weather_store_freshness_seconds",
    "gauge",
    "Seconds between now and the acceptance of the newest tweet a consumer counted in its "
    "store (set every second by each consumer; it grows while nothing new arrives).",
    ("store",),
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
    POLLER_RESTARTS,
    PARKED_DEAD_LETTERS,
    SKIPPED_RECORDS,
    PUBLISH_LATENCY,
    FRESHNESS,
    OVERLOAD_REFUSED,
    CONCURRENCY_LIMIT,
)

FACES = ("rest", "grpc", "stream")
OUTCOMES = ("applied", "duplicate", "dead_lettered")
UNKNOWN_BROKER = "unknown"
"""The ``broker`` of a 503 whose cause named no broker (e.g. a writer replica died)."""


class MetricsSink(Protocol):
    """Where the cores count; tags are passed as keywords and must match ``tag_keys``."""

    def inc(self, metric: Metric, value: float = 1, **tags: str) -> None: ...

    def set(self, metric: Metric, value: float, **tags: str) -> None: ...

    def observe(self, metric: Metric, value: float, **tags: str) -> None: ...


class NoMetrics:
    """The sink of a core nobody observes (unit tests, tooling)."""

    def inc(self, metric: Metric, value: float = 1, **tags: str) -> None:
        return None

    def set(self, metric: Metric, value: float, **tags: str) -> None:
        return None

    def observe(self, metric: Metric, value: float, **tags: str) -> None:
        return None


NO_METRICS = NoMetrics()
