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
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field

from serve_app.errors import PublishFailed, describe
from serve_app.ingest.supervisor import TaskHealth
from serve_app.model.backlog import BacklogReading, BrokerLimits, PartBacklog, StoreMemory
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
    """The longest a write waits for more requests before it goes; it goes sooner, once the
    replica's loop turned ``QUIET_TURNS`` times without a new request (nothing else to read)."""


QUIET_TURNS = 3
"""Loop turns in a row without a new request that end a write's linger: a request's last
steps before it joins (its body read, parsed) take a turn or two each."""


@dataclass(frozen=True)
class _Waiting:
    """One request's tweets waiting for a write, and what its caller awaits."""

    tweets: Sequence[Tweet]
    done: asyncio.Future[None]


class Coalescer:
    """Group commit: the tweets of concurrent requests share one publish to both brokers.

    A publish starts as soon as one of ``max_in_flight`` slots is free and carries every
    request that arrived meanwhile (whole requests, at most ``max_tweets`` tweets), after
    lingering while more keep coming: one loop turn at a time, until ``quiet_turns`` turns
    in a row brought none (the loop had nothing else to read), ``max_tweets`` are waiting,
    or ``linger_s`` passed. Under light load a request goes out at once; under
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
        quiet_turns: int = QUIET_TURNS,
    ) -> None:
        self._publish = publish
        self.configure(max_tweets, max_in_flight, linger_s)
        self.quiet_turns = quiet_turns
        self._waiting: deque[_Waiting] = deque()
        self._arrivals = 0  # requests submitted so far (the linger watches it move)
        self._queued = 0  # tweets waiting, abandoned ones included until they are skipped
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
        self._arrivals += 1
        self._queued += len(tweets)
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
                self._queued -= len(self._waiting.popleft().tweets)
                continue
            if taken and size + len(head.tweets) > self.max_tweets:
                break
            taken.append(self._waiting.popleft())
            size += len(head.tweets)
        self._queued -= size
        return taken

    async def _linger(self) -> None:
        """Let more requests join while the loop keeps bringing them: one turn at a time
        (each turn reads what the sockets hold and runs what is ready), ending after
        ``quiet_turns`` turns in a row with no new request, at ``max_tweets`` waiting, or
        after ``linger_s``. A lone request waits a few idle turns (µs), not ``linger_s``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.linger_s
        quiet, seen = 0, self._arrivals
        while quiet < self.quiet_turns and self._queued < self.max_tweets:
            await asyncio.sleep(0)
            if self._arrivals != seen:
                quiet, seen = 0, self._arrivals
            else:
                quiet += 1
            if loop.time() >= deadline:
                return

    async def _write(self) -> None:
        try:
            if self.linger_s:
                await self._linger()
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
    """The volume budget of one broker's undrained backlog (a setting): the bytes its disk
    (or memory) may hold for tweets not yet counted, whatever the broker's own limits."""

    max_bytes: int


STORE_BYTES_PER_BACKLOG_BYTE = 1.5
"""Store memory a broker byte still to be counted will take: a counted tweet took 203 bytes
of Redis (60.7 MB for 299,428 ids on the local stack; Valkey 140) for about 175 bytes of
record body (a lone tweet's record: 191), with a margin."""


def backlog_refusal(reading: BacklogReading, budget: BacklogLimit, ratio: float) -> str:
    """Why a broker with this backlog must not take more tweets ('' if it may): its unconsumed
    bytes reach the volume budget, or any partition (queue) reaches ``ratio`` of a limit the
    broker itself applies (bytes, messages, the age of its oldest unconsumed record). A pure
    function of the reading, so every replica, new or old, decides the same."""
    total = reading.unconsumed_bytes
    if total >= budget.max_bytes:
        return f"{total} unconsumed bytes reach the volume budget of {budget.max_bytes} bytes"
    for part in reading.parts:
        if part.messages:
            why = part_refusal(part, reading.limits, ratio)
            if why:
                return why
    return ""


def part_refusal(part: PartBacklog, limits: BrokerLimits, ratio: float) -> str:
    """Why one non-empty partition (queue) is too close to what its broker deletes."""
    share = f"{ratio:.0%} or more of the"
    if limits.part_bytes is not None and part.unconsumed_bytes >= limits.part_bytes * ratio:
        return (
            f"{part.name} holds {part.unconsumed_bytes} unconsumed bytes, "
            f"{share} {limits.part_bytes} the broker keeps"
        )
    if limits.part_messages is not None and part.messages >= limits.part_messages * ratio:
        return (
            f"{part.name} holds {part.messages} unconsumed messages, "
            f"{share} {limits.part_messages} the broker keeps"
        )
    if limits.age_s is None:
        return ""
    if part.oldest_age_s is None and not limits.ages_measured:
        return (
            f"{part.name} deletes messages older than {limits.age_s:g} s and cannot tell "
            "how old its oldest one is"
        )
    if part.oldest_age_s is not None and part.oldest_age_s >= limits.age_s * ratio:
        return (
            f"the oldest unconsumed record of {part.name} is {part.oldest_age_s:.0f} s old, "
            f"{share} {limits.age_s:g} s the broker keeps it"
        )
    return ""


def store_refusal(memory: StoreMemory, pending_bytes: int, ratio: float) -> str:
    """Why a store must not be sent more tweets ('' if it may): what it uses plus what its
    broker still holds for it reaches ``ratio`` of its ``maxmemory``, so it still has room
    for every tweet already accepted (a full store fails every script, its consumer stops
    and the broker's retention would delete what it holds)."""
    if memory.max_bytes <= 0:
        return ""
    pending = round(pending_bytes * STORE_BYTES_PER_BACKLOG_BYTE)
    if memory.used_bytes + pending < memory.max_bytes * ratio:
        return ""
    return (
        f"uses {memory.used_bytes} bytes with {pending} more to come from its broker: "
        f"{ratio:.0%} or more of its maxmemory of {memory.max_bytes} bytes"
    )


@dataclass(frozen=True)
class AdmissionPolicy:
    """When ingest stops taking tweets in. No limits: it never refuses (tools, tests)."""

    limits: Mapping[str, BacklogLimit] = field(default_factory=dict)
    stores: Mapping[str, str] = field(default_factory=dict)
    """Each store watched, with the broker that feeds it."""
    broker_limit_ratio: float = 0.5
    """Share of each limit a broker applies that a partition's (queue's) backlog may reach."""
    store_memory_ratio: float = 0.8
    """Share of a store's ``maxmemory`` its use plus its broker's backlog may reach."""
    stale_after_s: float = 30.0
    """A backlog unread for longer is unknown, and an unknown backlog is not admitted."""


@dataclass
class Backlog:
    """One broker's last backlog reading."""

    reading: BacklogReading | None = None
    read_at: float = 0.0
    """Clock of the last good reading (the replica's start before the first one)."""
    error: str = ""


@dataclass
class StoreState:
    """One store's last memory reading; it holds while the store cannot be read, since
    nothing can fill a store that cannot be reached (its broker's backlog is watched)."""

    memory: StoreMemory | None = None
    error: str = ""


class Admission:
    """Admission control from what the brokers and stores measure and the limits they apply,
    read by :meth:`run` at most once per interval, never per request.

    A 202 promises a count in both stores, so a tweet must not be taken in while a broker
    may delete it before its consumer reads it (Kafka deletes by size and age, RabbitMQ by
    a queue's length, bytes or TTL when they are set), nor while a store is too full to
    count what its broker still holds. The decision is a function of the latest readings
    alone (:func:`backlog_refusal`, :func:`store_refusal`): every replica, a new one
    included, refuses from the same readings.
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
        self.backlogs = {b: Backlog(read_at=now) for b in brokers if b in policy.limits}
        self.stores = {s: StoreState() for s in policy.stores}
        self.poller = TaskHealth("backlog poller")  # kept running by supervisor.supervise

    def record(self, broker: str, reading: BacklogReading) -> None:
        """A reading of one broker's backlog and limits."""
        self.backlogs[broker] = Backlog(reading, self.clock())

    def record_memory(self, store: str, memory: StoreMemory) -> None:
        """A reading of one store's memory."""
        self.stores[store] = StoreState(memory)

    def failed(self, name: str, exc: BaseException) -> None:
        """A reading that did not come: a broker's last one holds until it is stale, a
        store's for as long as the store cannot be read."""
        state = self.backlogs.get(name) or self.stores[name]
        state.error = describe(exc)

    def pending_bytes(self, store: str) -> int:
        """Unconsumed bytes the store's broker holds for it (0 before a reading)."""
        backlog = self.backlogs.get(self.policy.stores[store])
        return backlog.reading.unconsumed_bytes if backlog and backlog.reading else 0

    def refusals(self) -> dict[str, str]:
        """Each broker or store for which new tweets are refused right now, with why."""
        now, policy = self.clock(), self.policy
        reasons = {}
        for broker, backlog in self.backlogs.items():
            unknown_s = now - backlog.read_at
            if unknown_s > policy.stale_after_s:
                why = f"backlog unknown for {unknown_s:.0f} s ({backlog.error or 'no reading'})"
            elif backlog.reading is None:
                continue
            else:
                why = backlog_refusal(
                    backlog.reading, policy.limits[broker], policy.broker_limit_ratio
                )
            if why:
                reasons[broker] = why
        for store, state in self.stores.items():
            if state.memory is not None:
                pending = self.pending_bytes(store)
                why = store_refusal(state.memory, pending, policy.store_memory_ratio)
                if why:
                    reasons[store] = why
        return reasons

    def check(self) -> None:
        """Raise the 503 of a refused publish (the faces answer it with the ids to retry)."""
        reasons = self.refusals()
        if reasons:
            raise PublishFailed(reasons)

    def report(self) -> dict[str, dict[str, Any]]:
        """What ``GET /health`` shows for each broker and store watched."""
        reasons = self.refusals()
        report = {
            broker: {
                "admitting": broker not in reasons,
                **backlog_report(backlog.reading),
                "max_bytes": self.policy.limits[broker].max_bytes,
                "read_error": backlog.error,
                "detail": reasons.get(broker, "ok"),
            }
            for broker, backlog in self.backlogs.items()
        }
        for store, state in self.stores.items():
            memory = state.memory
            report[store] = {
                "admitting": store not in reasons,
                "used_memory": memory.used_bytes if memory else None,
                "maxmemory": memory.max_bytes if memory else None,
                "pending_bytes": self.pending_bytes(store),
                "read_error": state.error,
                "detail": reasons.get(store, "ok"),
            }
        return report

    async def poll(
        self, readers: Mapping[str, Callable[[], Awaitable[Any]]], metrics: MetricsSink
    ) -> None:
        """Read every broker and store once (concurrently) and export whether each refuses."""
        names = [n for n in readers if n in self.backlogs or n in self.stores]
        readings = await asyncio.gather(*(readers[n]() for n in names), return_exceptions=True)
        for name, reading in zip(names, readings, strict=True):
            if isinstance(reading, BaseException):
                self.failed(name, reading)
            elif name in self.backlogs:
                self.record(name, reading)
            else:
                self.record_memory(name, reading)
        reasons = self.refusals()
        for name in [*self.backlogs, *self.stores]:
            metrics.set(ADMISSION_REFUSING, float(name in reasons), broker=name)

    async def run(
        self,
        readers: Mapping[str, Callable[[], Awaitable[Any]]],
        metrics: MetricsSink,
        interval_s: float,
    ) -> None:
        """Poll forever, one round per ``interval_s`` at most (the replica's background task)."""
        while True:
            await self.poll(readers, metrics)
            await asyncio.sleep(interval_s)


def backlog_report(reading: BacklogReading | None) -> dict[str, Any]:
    """A broker's last reading as ``GET /health`` shows it (None before the first one)."""
    if reading is None:
        return {
            "backlog_messages": None,
            "unconsumed_bytes": None,
            "oldest_unconsumed_age_s": None,
            "limits": None,
        }
    age = reading.oldest_age_s
    return {
        "backlog_messages": reading.messages,
        "unconsumed_bytes": reading.unconsumed_bytes,
        "oldest_unconsumed_age_s": None if age is None else round(age, 1),
        "limits": asdict(reading.limits),
    }
