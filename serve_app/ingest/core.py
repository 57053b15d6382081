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
import contextvars
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field

from serve_app.errors import PublishFailed, describe
from serve_app.ingest.supervisor import TaskHealth
from serve_app.model.codec import Chunk, EncodedBatch
from serve_app.model.metrics import (
    ACCEPTED,
    ADMISSION_REFUSING,
    CHUNKS_PUBLISHED,
    NO_METRICS,
    PUBLISH_LATENCY,
    REJECTED,
    UNAVAILABLE,
    UNKNOWN_BROKER,
    MetricsSink,
)
from serve_app.model.schema import (
    Tweet,
    TweetIn,
    TweetRules,
    TweetValidationError,
    accepted_tweets,
    validate_tweets,
)


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
    time (:func:`~serve_app.model.schema.accepted_tweets`). A prefix is drawn only when some
    tweet has no id (a uuid is a system call)."""
    if prefix is None and any(t.id is None for t in tweets):
        prefix = request_id_prefix()
    ids = [t.id or f"{prefix}-{i}" for i, t in enumerate(tweets)]
    return accepted_tweets(tweets, ids, now or datetime.now(UTC))


def id_conflicts(tweets: Sequence[TweetIn]) -> list[dict[str, Any]]:
    """One error per item whose id an earlier item of the same request uses with other
    content, naming both indexes: the stores would keep only one of the two, and which one
    would depend on the order each broker delivers them in."""
    first: dict[str, int] = {}
    errors: list[dict[str, Any]] = []
    for index, tweet in enumerate(tweets):
        if tweet.id is None:
            continue
        earlier = first.setdefault(tweet.id, index)
        if earlier != index and _content(tweets[earlier]) != _content(tweet):
            errors.append(
                {
                    "loc": [index, "id"],
                    "msg": f"id {tweet.id!r} is also the id of tweets[{earlier}], "
                    "whose content differs",
                    "type": "id_conflict",
                }
            )
    return errors


def _content(tweet: TweetIn) -> tuple[str, str, str]:
    """What the stores fingerprint: the normalised fields, not the client's spelling."""
    return tweet.description, tweet.country, tweet.weather


def distinct(tweets: Sequence[Tweet]) -> list[Tweet]:
    """The tweets to publish: a tweet repeated in one request (same id, same content, as
    :func:`id_conflicts` guarantees) is published once, so it costs one broker write and
    the stores see no duplicate to discard."""
    seen: set[str] = set()
    return [t for t in tweets if not (t.id in seen or seen.add(t.id))]


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
    """Request limits both faces enforce (documented in docs/api.md and the OpenAPI)."""

    max_body_bytes: int
    max_batch_tweets: int
    max_json_depth: int
    retry_after_s: int
    stream_max_in_flight: int = 8
    """Frames of one WebSocket connection being published at once; beyond it the face stops
    reading, so a client faster than the brokers is slowed by TCP instead of buffered."""
    stream_max_open: int = 64
    """WebSocket streams a replica serves at once; one more is closed at once (1013)."""
    stream_idle_timeout_s: float = 60.0
    """A stream with no frame for this long, and none in flight, is closed (1000)."""
    stream_max_bytes_in_flight: int = 67_108_864
    """Frame bytes all streams of a replica hold while publishing; beyond it readers wait."""


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
        admission: Admission | None = None,
    ) -> None:
        self.writers = tuple(writers)
        self.rules = rules
        self.limits = limits
        self.max_chunk_bytes = max_chunk_bytes
        self.publish_timeout_s = publish_timeout_s
        self.metrics = metrics
        self.admission = admission or Admission(AdmissionPolicy(), ())

    def face_metrics(self, face: str) -> FaceMetrics:
        return FaceMetrics(self.metrics, face)

    def validate(self, items: list[Any], *, index_errors: bool = True) -> list[TweetIn]:
        """All-or-nothing: raises TweetValidationError naming every bad field, and every
        id that two items of the request use with different content."""
        tweets = validate_tweets(items, self.rules, index_errors=index_errors)
        conflicts = id_conflicts(tweets)
        if conflicts:
            raise TweetValidationError(conflicts)
        return tweets

    async def publish(self, tweets: Sequence[Tweet]) -> None:
        """Encode once, write to every broker at the same time, within one deadline; refused
        up front (PublishFailed, i.e. 503) while admission control holds new tweets back.
        Its latency is observed once per write (a write carries many requests)."""
        self.admission.check()
        started = time.perf_counter()
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
        outcome = "failed" if failures else "confirmed"
        self.metrics.observe(PUBLISH_LATENCY, time.perf_counter() - started, outcome=outcome)
        if failures:
            raise PublishFailed(failures)

    async def _write(self, writer: Writer, chunks: list[Chunk], timeout_s: float) -> int:
        async with asyncio.timeout(timeout_s):
            confirmed = await writer.write(chunks, timeout_s)
        self.admission.published(writer.broker, chunks)
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


class BatchConfig(BaseModel):
    """The Gateway's ``user_config`` (``serve_config.yaml``): how the :class:`Coalescer`
    groups concurrent requests. Unknown keys are refused, so a stale one fails the deploy."""

    model_config = ConfigDict(extra="forbid")

    max_batch_tweets: int = Field(default=1000, ge=1)
    """Most tweets one write to the brokers carries (at least ``MAX_BATCH_TWEETS``)."""
    max_writes_in_flight: int = Field(default=1, ge=1)
    """Writes to the brokers at once; arrivals meanwhile join the next write."""
    linger_s: float = Field(default=0.005, ge=0)
    """How long a write waits for more requests before it goes: with 10 ms the stack's CPU
    per tweet was 16-22 % below ``serve.batch``'s (docs/results/2026-12-01-bench.md)."""


@dataclass(frozen=True)
class _Waiting:
    """One request's tweets waiting for a write, and what its caller awaits."""

    tweets: Sequence[Tweet]
    done: asyncio.Future[None]


class Coalescer:
    """Group commit: the tweets of concurrent requests share one publish to both brokers.

    A publish starts as soon as one of ``max_in_flight`` slots is free and carries every
    request that arrived meanwhile (whole requests, at most ``max_tweets`` tweets), after
    waiting ``linger_s`` for more. Under light load a request goes out at once; under
    heavy load a write grows with the queue. So the per-write costs (two handle calls, two
    broker round trips, the consumers' per-message work) are shared by as many tweets as
    the load allows at every rate. A timer-closed batch (``serve.batch``) instead sends a
    write every window however busy the brokers are: at half rate it sent 2.4 times as
    many writes per second as at full rate, each a third as full (docs/benchmarks.md).
    """

    def __init__(
        self,
        publish: Callable[[list[Tweet]], Awaitable[None]],
        max_tweets: int,
        max_in_flight: int = 1,
        linger_s: float = 0.0,
    ) -> None:
        self._publish = publish
        self.configure(max_tweets, max_in_flight, linger_s)
        self._waiting: deque[_Waiting] = deque()
        self._in_flight = 0
        self._writes: set[asyncio.Task[None]] = set()

    def configure(self, max_tweets: int, max_in_flight: int, linger_s: float) -> None:
        """Takes effect from the next write (Serve's ``reconfigure``)."""
        if max_tweets < 1 or max_in_flight < 1 or linger_s < 0:
            raise ValueError(
                f"max_tweets={max_tweets} and max_in_flight={max_in_flight} must be >= 1, "
                f"linger_s={linger_s} >= 0"
            )
        self.max_tweets, self.max_in_flight, self.linger_s = max_tweets, max_in_flight, linger_s

    async def submit(self, tweets: Sequence[Tweet]) -> None:
        """Return once a write carrying these tweets was confirmed by every broker; raise
        what that write raised. A caller that gives up (cancelled, e.g. by its deadline)
        before its tweets were taken leaves them out of every write."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append(_Waiting(tweets, done))
        self._start_writes()
        await done

    def _start_writes(self) -> None:
        """A write serves many requests, so it runs in a context of its own, not in the one
        request's that happened to start it: what a request scopes (Serve cancels the
        calls made in a request's context when its client goes away) must not fail the
        tweets of every other request in the write."""
        while self._waiting and self._in_flight < self.max_in_flight:
            self._in_flight += 1
            task = asyncio.create_task(self._write(), context=contextvars.Context())
            self._writes.add(task)
            task.add_done_callback(self._writes.discard)

    def _take(self) -> list[_Waiting]:
        """The next write: waiting requests in arrival order, skipping abandoned ones, while
        they fit in ``max_tweets`` (the first always goes, whatever its size)."""
        taken: list[_Waiting] = []
        size = 0
        while self._waiting:
            head = self._waiting[0]
            if head.done.done():
                self._waiting.popleft()
                continue
            if taken and size + len(head.tweets) > self.max_tweets:
                break
            taken.append(self._waiting.popleft())
            size += len(head.tweets)
        return taken

    async def _write(self) -> None:
        try:
            if self.linger_s:
                await asyncio.sleep(self.linger_s)
            taken = self._take()
            if taken:
                await self._publish_for(taken)
        finally:
            self._in_flight -= 1
            self._start_writes()

    async def _publish_for(self, taken: list[_Waiting]) -> None:
        try:
            await self._publish([t for w in taken for t in w.tweets])
        except asyncio.CancelledError:
            for waiting in taken:
                waiting.done.cancel()
            raise
        except Exception as exc:
            for waiting in taken:
                if not waiting.done.done():
                    waiting.done.set_exception(exc)
        else:
            for waiting in taken:
                if not waiting.done.done():
                    waiting.done.set_result(None)


@dataclass(frozen=True)
class BacklogLimit:
    """What one broker keeps of an undrained backlog before anything could be lost: a byte
    budget (below its retention bytes or its alarms) and, for a broker that deletes by age,
    how long a backlog may go without draining (``None``: kept until consumed)."""

    max_bytes: int
    max_stall_s: float | None = None


@dataclass(frozen=True)
class AdmissionPolicy:
    """When ingest stops taking tweets in. No limits: it never refuses (tools, tests)."""

    limits: Mapping[str, BacklogLimit] = field(default_factory=dict)
    resume_ratio: float = 0.8
    """Refusing stops only below this share of ``max_bytes``, so the answer does not flap."""
    stale_after_s: float = 30.0
    """A backlog unread for longer is unknown, and an unknown backlog is not admitted."""
    assumed_message_bytes: int = 1024
    """Bytes per broker message until this replica has published one (then its mean)."""


@dataclass
class Backlog:
    """One broker's last backlog reading and what admission made of it."""

    messages: int | None = None
    read_at: float = 0.0
    """Clock of the last good reading (the replica's start before the first one)."""
    draining_at: float = 0.0
    """Clock when the backlog was last empty or shrinking: the consumer's last sign of life."""
    error: str = ""
    refusing: str = ""
    """Why new tweets are refused; empty while admitting."""


class Admission:
    """Admission control from the brokers' backlogs (Kafka consumer-group lag, RabbitMQ
    queue depth), read by :meth:`run` at most once per interval, never per request.

    A 202 promises a count in both stores, so a tweet must not be taken in while a broker
    may delete it before its consumer reads it: Kafka deletes by size and age (retention),
    and RabbitMQ blocks every publisher (and the dead-letter step) at its memory and disk
    alarms. Bytes are estimated as messages × the mean size of the messages this replica
    published to that broker (the probes count messages, the limits are in bytes).
    """

    def __init__(
        self,
        policy: AdmissionPolicy,
        brokers: Sequence[str],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.policy = policy
        self.clock = clock
        now = clock()
        watched = [b for b in brokers if b in policy.limits]
        self.backlogs = {b: Backlog(read_at=now, draining_at=now) for b in watched}
        self._sent = {b: [0, 0] for b in watched}  # [messages, bytes] published
        self.poller = TaskHealth("backlog poller")  # kept running by supervisor.supervise

    def published(self, broker: str, chunks: Sequence[Chunk]) -> None:
        """Learn the size of this broker's messages from what it just confirmed."""
        sent = self._sent.get(broker)
        if sent is not None:
            sent[0] += len(chunks)
            sent[1] += sum(len(c.body) for c in chunks)

    def message_bytes(self, broker: str) -> float:
        messages, size = self._sent[broker]
        return size / messages if messages else self.policy.assumed_message_bytes

    def estimated_bytes(self, broker: str) -> int:
        messages = self.backlogs[broker].messages or 0
        return round(messages * self.message_bytes(broker))

    def record(self, broker: str, messages: int) -> None:
        """A reading of the backlog, in messages."""
        backlog, now = self.backlogs[broker], self.clock()
        if backlog.messages is None or messages == 0 or messages < backlog.messages:
            backlog.draining_at = now
        backlog.messages, backlog.read_at, backlog.error = messages, now, ""
        backlog.refusing = self._decide(broker, backlog, now)

    def failed(self, broker: str, exc: BaseException) -> None:
        """A reading that did not come: the last one holds until it is stale."""
        self.backlogs[broker].error = describe(exc)

    def _decide(self, broker: str, backlog: Backlog, now: float) -> str:
        limit = self.policy.limits[broker]
        ratio = self.policy.resume_ratio if backlog.refusing else 1.0
        estimate = self.estimated_bytes(broker)
        if estimate >= limit.max_bytes * ratio:
            return (
                f"backlog of {backlog.messages} messages (~{estimate} bytes) is over "
                f"{ratio:.0%} of the {limit.max_bytes} bytes admitted before the consumers drain it"
            )
        stalled_s = now - backlog.draining_at
        if limit.max_stall_s is not None and backlog.messages and stalled_s >= limit.max_stall_s:
            return (
                f"backlog of {backlog.messages} messages has not drained for {stalled_s:.0f} s "
                f"(limit {limit.max_stall_s:g} s)"
            )
        return ""

    def refusals(self) -> dict[str, str]:
        """Each broker for which new tweets are refused right now, with why."""
        now, stale_s = self.clock(), self.policy.stale_after_s
        reasons = {}
        for broker, backlog in self.backlogs.items():
            unknown_s = now - backlog.read_at
            if unknown_s > stale_s:
                reasons[broker] = (
                    f"backlog unknown for {unknown_s:.0f} s ({backlog.error or 'no reading'})"
                )
            elif backlog.refusing:
                reasons[broker] = backlog.refusing
        return reasons

    def check(self) -> None:
        """Raise the 503 of a refused publish (the faces answer it with the ids to retry)."""
        reasons = self.refusals()
        if reasons:
            raise PublishFailed(reasons)

    def report(self) -> dict[str, dict[str, Any]]:
        """What ``GET /health`` shows for each broker watched."""
        reasons = self.refusals()
        return {
            broker: {
                "admitting": broker not in reasons,
                "backlog_messages": backlog.messages,
                "backlog_bytes_estimate": self.estimated_bytes(broker),
                "max_bytes": self.policy.limits[broker].max_bytes,
                "detail": reasons.get(broker, "ok"),
            }
            for broker, backlog in self.backlogs.items()
        }

    async def poll(
        self, readers: Mapping[str, Callable[[], Awaitable[int]]], metrics: MetricsSink
    ) -> None:
        """Read every backlog once (concurrently) and export whether each broker refuses."""
        brokers = [b for b in readers if b in self.backlogs]
        readings = await asyncio.gather(*(readers[b]() for b in brokers), return_exceptions=True)
        for broker, reading in zip(brokers, readings, strict=True):
            if isinstance(reading, BaseException):
                self.failed(broker, reading)
            else:
                self.record(broker, reading)
        reasons = self.refusals()
        for broker in self.backlogs:
            metrics.set(ADMISSION_REFUSING, float(broker in reasons), broker=broker)

    async def run(
        self,
        readers: Mapping[str, Callable[[], Awaitable[int]]],
        metrics: MetricsSink,
        interval_s: float,
    ) -> None:
        """Poll forever, one round per ``interval_s`` at most (the replica's background task)."""
        while True:
            await self.poll(readers, metrics)
            await asyncio.sleep(interval_s)
