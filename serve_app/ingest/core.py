"""Stage 1 core: take tweets in and publish them to both brokers (no Ray in here).

validate → assign ids → encode once (chunks, :mod:`serve_app.model.codec`) → write to every
broker concurrently → done, or :class:`PublishFailed` naming each broker that did not
confirm. The REST and gRPC faces and the Serve ``Gateway`` are thin layers over this; the
unit tests drive it with plain fake writers.

A request is accepted (202 / OK) only when every writer confirmed every chunk. Anything
less raises :class:`PublishFailed`, and the faces answer 503 / UNAVAILABLE with the ids:
a retry with those ids is never counted twice, because the stores count an id once.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from serve_app.errors import PublishFailed, describe
from serve_app.model.codec import Chunk, EncodedBatch
from serve_app.model.metrics import (
    ACCEPTED,
    CHUNKS_PUBLISHED,
    NO_METRICS,
    REJECTED,
    UNAVAILABLE,
    UNKNOWN_BROKER,
    MetricsSink,
)
from serve_app.model.schema import Tweet, TweetIn, TweetRules, validate_tweets


class Writer(Protocol):
    """One broker's writer: returns only once the broker confirmed every chunk.
    ``by_country``: whether it wants chunks of one country each (Kafka's keyed order)."""

    broker: str
    by_country: bool

    async def write(self, chunks: Sequence[Chunk], timeout_s: float) -> int: ...

    async def health(self, timeout_s: float) -> dict[str, Any]: ...


def request_id_prefix() -> str:
    """Ids the pipeline assigns are ``<one uuid per request>-<index in the request>``: unique,
    and a client can rebuild every one of them from the prefix alone (gRPC errors carry
    only the prefix, since metadata cannot hold a thousand ids)."""
    return str(uuid.uuid4())


def accept(
    tweets: Sequence[TweetIn], prefix: str | None = None, now: datetime | None = None
) -> list[Tweet]:
    """Give every tweet an id (the client's, else ``<prefix>-<index>``) and the acceptance
    time. The tweets are already validated, so they are built without validating again."""
    prefix = prefix or request_id_prefix()
    accepted_at = now or datetime.now(UTC)
    return [
        Tweet.model_construct(
            id=t.id or f"{prefix}-{i}",
            description=t.description,
            country=t.country,
            weather=t.weather,
            accepted_at=accepted_at,
        )
        for i, t in enumerate(tweets)
    ]


class FaceMetrics:
    """What a face (``rest`` or ``grpc``) counts: accepted tweets, refusals, 503s per broker."""

    def __init__(self, sink: MetricsSink, face: str) -> None:
        self.sink = sink
        self.face = face

    def accepted(self, tweets: int) -> None:
        self.sink.inc(ACCEPTED, tweets, face=self.face)

    def rejected(self, code: str) -> None:
        self.sink.inc(REJECTED, face=self.face, code=code)

    def unavailable(self, code: str, exc: BaseException) -> None:
        """A 503 / UNAVAILABLE: counted once as a refusal and once per broker it names."""
        self.rejected(code)
        brokers = exc.reasons if isinstance(exc, PublishFailed) else (UNKNOWN_BROKER,)
        for broker in brokers:
            self.sink.inc(UNAVAILABLE, face=self.face, broker=broker)


@dataclass(frozen=True)
class IngestLimits:
    """Request limits both faces enforce (documented in the README and the OpenAPI)."""

    max_body_bytes: int
    max_batch_tweets: int
    max_json_depth: int
    retry_after_s: int


class Ingest:
    """Validation and the write to both brokers, over any two :class:`Writer` objects."""

    def __init__(
        self,
        writers: Sequence[Writer],
        rules: TweetRules,
        limits: IngestLimits,
        max_chunk_bytes: int,
        publish_timeout_s: float,
        metrics: MetricsSink = NO_METRICS,
    ) -> None:
        self.writers = tuple(writers)
        self.rules = rules
        self.limits = limits
        self.max_chunk_bytes = max_chunk_bytes
        self.publish_timeout_s = publish_timeout_s
        self.metrics = metrics

    def face_metrics(self, face: str) -> FaceMetrics:
        return FaceMetrics(self.metrics, face)

    def validate(self, items: list[Any], *, index_errors: bool = True) -> list[TweetIn]:
        """All-or-nothing: raises TweetValidationError naming every bad field."""
        return validate_tweets(items, self.rules, index_errors=index_errors)

    async def publish(self, tweets: Sequence[Tweet]) -> None:
        """Encode once, write to every broker at the same time, within one deadline."""
        encoded = EncodedBatch(tweets, self.max_chunk_bytes)
        timeout_s = self.publish_timeout_s
        results = await asyncio.gather(
            *(self._write(w, encoded.chunks(w.by_country), timeout_s) for w in self.writers),
            return_exceptions=True,
        )
        failures = {
            w.broker: describe(r)
            for w, r in zip(self.writers, results, strict=True)
            if isinstance(r, BaseException)
        }
        if failures:
            raise PublishFailed(failures)

    async def _write(self, writer: Writer, chunks: list[Chunk], timeout_s: float) -> int:
        async with asyncio.timeout(timeout_s):
            confirmed = await writer.write(chunks, timeout_s)
        self.metrics.inc(CHUNKS_PUBLISHED, confirmed, broker=writer.broker)
        return confirmed

    async def health(self) -> dict[str, dict[str, Any]]:
        """Each broker: a real round trip, bounded by the publish timeout."""
        timeout_s = self.publish_timeout_s

        async def check(writer: Writer) -> dict[str, Any]:
            try:
                async with asyncio.timeout(timeout_s + 1):
                    return await writer.health(timeout_s)
            except Exception as exc:  # the writer itself is unreachable
                return {"ok": False, "detail": describe(exc)}

        reports = await asyncio.gather(*(check(w) for w in self.writers))
        return {w.broker: r for w, r in zip(self.writers, reports, strict=True)}
