"""Stage 3 core: how a consumer drains one broker into one store (no Ray, no broker client).

:class:`ConsumerCore` handles one batch: decode (chunks and v1 messages,
:mod:`serve_app.model.codec`) → apply the good tweets once through the store's script →
dead-letter the poison and the losers of id conflicts → report. :class:`ConsumerLoop` runs
sessions of a broker :class:`Source` (a driver in :mod:`serve_app.brokers`) forever: fetch,
handle, then commit or ack only after the batch was handled. A crash anywhere before
redelivers the batch, and the store counts an id once, so nothing is lost and nothing
counted twice.

A failing store write is retried with capped backoff for as long as it takes, holding the
batch (the store is what a 202 promises): consumption pauses, nothing is committed.

Dead letters exactly once, and never holding good tweets back: a letter becomes part of the
store before its message is let go, in the **outbox** (store/core.py): the loser of an id
conflict in the same script that decides it, poison in a write of its own before the
commit or ack, each under a deterministic letter id written at most once (so a retried or
redelivered batch adds nothing). :class:`OutboxDrain`, a background task of the consumer
holding the store's drainer lease, publishes the oldest letters and removes them only once
the broker confirmed them; it loops while it makes progress (up to ``drain_batch`` letters a
send) and backs off only after a failure, so the outbox drains as fast as the sink takes it
and a new letter never waits behind a "parking mode". Letters not yet confirmed show in
``/consumers`` (``parked_dead_letters``), in ``GET /stats``, in a metric and in ``make
verify``. A sink flattens a letter into an :class:`Envelope` (bounded, valid UTF-8 text
only), so nothing taken from a message can make the publish itself fail.

Skipped records (the broker deleted what the group had not read, e.g. Kafka retention
during a long store outage) are never silent: the source reports each range, the loop
counts it durably in the store (``tweets:skipped``) before the next batch, logs it and shows
it in ``/consumers`` and a metric, and consumption continues from the earliest record kept.
The unit tests drive all of this with plain fakes.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

from serve_app.brokers.base import (
    DeadLetter,
    DeadLetterSink,
    Delivery,
    Envelope,
    Skipped,
    safe_text,
)
from serve_app.consume.freshness import Freshness, newest_accepted_at
from serve_app.errors import describe
from serve_app.model.codec import decode_message
from serve_app.model.metrics import (
    CONSUMER_TWEETS,
    NO_METRICS,
    PARKED_DEAD_LETTERS,
    SKIPPED_RECORDS,
    MetricsSink,
)
from serve_app.model.schema import Tweet
from serve_app.settings import Settings
from serve_app.store.core import (
    CountedTweet,
    Displaced,
    LetterOrigins,
    OutboxLetter,
    PoisonLetter,
    RecordResult,
)

logger = logging.getLogger(__name__)

REASON_LIMIT = 1000
"""Characters of an error kept in a consumer's status."""

ID_CONFLICT = "id-conflict"
"""The dead-letter reason of the loser of two tweets with one id and other content."""

DRAIN_BATCH = 500
"""Most outbox letters published in one send."""
DRAIN_MAX_BYTES = 8 * 1024 * 1024
"""Most bytes of outbox entries published in one send (letters may be up to 768 KiB)."""
DRAIN_IDLE_S = 2.0
"""How often an empty outbox is looked at again (letters another consumer or an older
release wrote; this consumer's own letters wake the drain at once)."""
DRAIN_LEASE_S = 30.0
"""How long the drainer lease lasts unless renewed (longer than one send may take)."""
DRAIN_BACKOFF_START_S = 0.1
DRAIN_BACKOFF_MAX_S = 2.0

BACKOFF_START_S = 0.1
BACKOFF_MAX_S = 2.0

Origin = TypeVar("Origin")
T = TypeVar("T")


class TweetRecorder(Protocol):
    """What a consumer needs of its store (``serve_app.store.client.TweetStore``)."""

    fingerprint_key: bytes
    """The key of the tweets' fingerprints, the same for both stores' consumers."""

    async def record_batch(
        self, tweets: Sequence[CountedTweet], origins: LetterOrigins = ...
    ) -> RecordResult: ...

    async def put_poison(self, letters: Sequence[PoisonLetter]) -> int: ...

    async def outbox(self, limit: int) -> list[OutboxLetter]: ...

    async def remove_letters(self, ids: Sequence[str]) -> int: ...

    async def claim_drainer(self, owner: str, lease_s: float) -> bool: ...

    async def record_skipped(self, source: str, first: int, last: int) -> bool: ...


@dataclass(frozen=True)
class BatchOutcome:
    messages: int
    applied: int
    duplicates: int
    poison: int
    conflicts: int
    newest_accepted_at: float | None = None
    """Acceptance time (epoch seconds) of the newest tweet the batch counted."""

    @property
    def dead_lettered(self) -> int:
        return self.poison + self.conflicts


class Backoff:
    """Capped exponential backoff: 0.1 s, 0.2 s, ... 2 s."""

    def __init__(self, start_s: float = BACKOFF_START_S, max_s: float = BACKOFF_MAX_S) -> None:
        self.start_s, self.max_s = start_s, max_s
        self.delay = start_s

    def reset(self) -> None:
        self.delay = self.start_s

    async def sleep(self) -> None:
        await asyncio.sleep(self.delay)
        self.delay = min(self.delay * 2, self.max_s)


OnRetry = Callable[[BaseException, str], Awaitable[None]]


async def _nothing(exc: BaseException, what: str) -> None:
    return None


class ConsumerCore(Generic[Origin]):
    """Applies batches to one store; ``on_retry`` lets the adapter act while a step is
    being retried (report the error, keep its consumer-group membership alive...)."""

    def __init__(
        self,
        store: TweetRecorder,
        dead_letters: DeadLetterSink[Origin],
        on_retry: OnRetry = _nothing,
        backoff: Backoff | None = None,
    ) -> None:
        self.store = store
        self.dead_letters = dead_letters
        self.on_retry = on_retry
        self.backoff = backoff or Backoff()

    async def handle(self, deliveries: Sequence[Delivery[Origin]]) -> BatchOutcome:
        """Count the batch and put its dead letters in the outbox (both retried until done,
        holding the batch): once this returns, the batch may be committed or acked."""
        counted: list[CountedTweet] = []
        tweets: list[Tweet] = []
        templates: list[str] = []
        of_tweet: list[int] = []
        poison: list[PoisonLetter] = []
        for delivery in deliveries:
            decoded = decode_message(delivery.body)
            if decoded.tweets:
                templates.append(self._template(delivery.origin))
            for tweet in decoded.tweets:
                counted.append(CountedTweet.of(tweet, self.store.fingerprint_key))
                tweets.append(tweet)
                of_tweet.append(len(templates) - 1)
            poison.extend(
                self._poison_letter(
                    delivery, n, DeadLetter(p.body, p.reason, delivery.origin, p.id)
                )
                for n, p in enumerate(decoded.poison)
            )
        origins = LetterOrigins(tuple(templates), tuple(of_tweet))
        result = await self._until_done(
            lambda: self.store.record_batch(counted, origins), "store write"
        )
        if poison:
            await self._until_done(
                lambda: self.store.put_poison(poison), "putting poison in the dead-letter outbox"
            )
        return BatchOutcome(
            messages=len(deliveries),
            applied=result.new,
            duplicates=result.duplicates,
            poison=len(poison),
            conflicts=result.conflicts,
            newest_accepted_at=newest_accepted_at(tweets, set(result.refused)),
        )

    def _envelope(self, letter: DeadLetter[Origin]) -> Envelope:
        """The sink's envelope; should a sink ever fail on a letter, one without origin."""
        try:
            return self.dead_letters.envelope(letter)
        except Exception:
            return Envelope.of(letter.body, letter.reason, letter.id)

    def _template(self, origin: Origin) -> str:
        """The envelope (empty body) of a message whose tweets may lose an id conflict."""
        return self._envelope(DeadLetter(b"", ID_CONFLICT, origin)).to_json()

    def _poison_letter(
        self, delivery: Delivery[Origin], index: int, letter: DeadLetter[Origin]
    ) -> PoisonLetter:
        """The ``index``-th poison of a message, written once however often the message is
        redelivered. With the sink's identity of the message (a Kafka offset), the letter id
        is that identity, its body's hash and ``index``. Without one (RabbitMQ), the first
        delivery's letter gets an id of its own and marks the body's hash and ``index``, and
        a redelivery writes a letter only if no such mark exists."""
        entry = self._envelope(letter).to_json()
        digest = hashlib.blake2b(delivery.body, digest_size=8).hexdigest()
        try:
            identity = self.dead_letters.identity(delivery.origin)
            redelivered = self.dead_letters.redelivered(delivery.origin)
        except Exception:
            identity, redelivered = None, True
        if identity is not None:
            letter_id = f"poison:{safe_text(identity, 512)}:{digest}:{index}"
            return PoisonLetter(letter_id, letter_id, entry)
        marker = f"{digest}:{index}"
        if redelivered:
            return PoisonLetter(marker, f"poison:{marker}", entry)
        return PoisonLetter(marker, f"poison:{marker}:{uuid.uuid4().hex}", entry, always=True)

    async def record_skipped(self, skipped: Sequence[Skipped]) -> None:
        """Count skipped ranges in the store before anything after them is committed."""
        for skip in skipped:
            await self._until_done(
                lambda s=skip: self.store.record_skipped(s.source, s.first, s.last),  # type: ignore[misc]
                "recording skipped records",
            )

    async def _until_done(self, attempt: Callable[[], Awaitable[T]], what: str) -> T:
        """Retry one step with backoff until it succeeds (the batch is held meanwhile)."""
        self.backoff.reset()
        while True:
            try:
                return await attempt()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                await self.on_retry(exc, what)
                await self.backoff.sleep()


def outbox_envelope(entry: str) -> Envelope:
    """An outbox entry (store/core.py) as the envelope to publish: an envelope as it was
    written (poison, letters parked by older releases), or a conflict's loser on its
    message's envelope: the tweet as it came, or as the store knew it (its description was
    never kept). An unreadable entry is dead-lettered as it is."""
    try:
        data = json.loads(entry)
        if "reason" in data:
            return Envelope.from_json(entry)
        origin = Envelope.from_json(data["o"]) if data.get("o") else Envelope(b"", ID_CONFLICT)
        if "seen" in data:
            body = displaced_body(Displaced.of(0, data["id"], data["seen"]), data["by"])
        else:
            body = data["body"].encode()
        return Envelope.of(body, ID_CONFLICT, data["id"], origin.headers, origin.key)
    except (ValueError, KeyError, TypeError, AttributeError):
        return Envelope.of(entry.encode("utf-8", "backslashreplace"), "unreadable outbox entry")


def displaced_body(old: Displaced, winner: str) -> bytes:
    """The dead letter of a tweet counted before and displaced by ``winner``'s content."""
    return json.dumps(
        {
            "id": old.id,
            "country": old.country,
            "weather": old.weather,
            "fingerprint": old.fingerprint,
            "displaced_by": winner,
        }
    ).encode()


def bounded(
    letters: Sequence[OutboxLetter], max_bytes: int = DRAIN_MAX_BYTES
) -> list[OutboxLetter]:
    """The oldest letters whose entries fit in ``max_bytes`` (at least one)."""
    taken: list[OutboxLetter] = []
    size = 0
    for letter in letters:
        size += len(letter.entry)
        if taken and size > max_bytes:
            break
        taken.append(letter)
    return taken


class OutboxDrain(Generic[Origin]):
    """Publishes a store's dead-letter outbox through one sink, oldest first, and removes
    letters only once the broker confirmed them. :meth:`step` is one round and says how
    long to wait before the next: none while letters are left and the sink takes them, a
    capped backoff after a failure, :data:`DRAIN_IDLE_S` once the outbox is empty or
    another consumer holds the lease (one drainer per store: no letter sent twice)."""

    def __init__(
        self,
        store: TweetRecorder,
        sink: DeadLetterSink[Origin],
        owner: str,
        *,
        batch: int = DRAIN_BATCH,
        lease_s: float = DRAIN_LEASE_S,
        on_error: Callable[[BaseException, str], None] | None = None,
    ) -> None:
        self.store, self.sink, self.owner = store, sink, owner
        self.batch, self.lease_s = batch, lease_s
        self.on_error = on_error
        self.pending = 0
        """Letters in the store not yet confirmed, as last seen."""
        self.published = 0
        self.failing = False
        self._delay = DRAIN_BACKOFF_START_S
        self._confirmed: list[str] = []  # sent, confirmed, not yet removed from the store

    async def step(self) -> float:
        """One round; returns the seconds to wait before the next (0: at once)."""
        try:
            return await self._round()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if self.on_error is not None:
                self.on_error(exc, "publishing dead letters from the outbox failed; will retry")
            self.failing = True
            delay, self._delay = self._delay, min(self._delay * 2, DRAIN_BACKOFF_MAX_S)
            return delay

    async def _round(self) -> float:
        if self._confirmed:  # a removal failed after the broker confirmed: never send again
            self.pending = await self.store.remove_letters(self._confirmed)
            self._confirmed = []
        if not await self.store.claim_drainer(self.owner, self.lease_s):
            self.pending = await self.store.remove_letters(())  # another consumer drains
            return self._succeeded(DRAIN_IDLE_S)
        letters = bounded(await self.store.outbox(self.batch))
        if not letters:
            self.pending = 0
            return self._succeeded(DRAIN_IDLE_S)
        self.pending = max(self.pending, len(letters))
        await self.sink.send([outbox_envelope(letter.entry) for letter in letters])
        self._confirmed = [letter.id for letter in letters]
        self.published += len(letters)
        self.pending = await self.store.remove_letters(self._confirmed)
        self._confirmed = []
        return self._succeeded(0.0 if self.pending else DRAIN_IDLE_S)

    def _succeeded(self, delay: float) -> float:
        self.failing = False
        self._delay = DRAIN_BACKOFF_START_S
        return delay


def code_version(package: Path) -> str:
    """A hash of the package's Python files: which code a process imported."""
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        if "__pycache__" not in path.parts:
            digest.update(path.relative_to(package).as_posix().encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def config_version(settings: Settings, code: str) -> str:
    """What a consumer runs: its settings and its code, in one short hash."""
    content = settings.fingerprint().encode() + b"\x00" + code.encode()
    return hashlib.sha256(content).hexdigest()[:16]


def actor_version(settings: Settings, creator_code: str, imported_code: str) -> str:
    """The version a consumer actor reports: its settings and the code of the supervisor
    that created it (a worker imports the files it finds, which on a dev machine may be
    newer than what was deployed: reporting those would make every supervisor replace its
    actors again and again). An actor created without one reports its own code."""
    return config_version(settings, creator_code or imported_code)


def stale_actors(version: str, statuses: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Consumers that answered with another settings-and-code version than ``version`` (an
    actor of an earlier release reports none): they must be replaced. An actor that did not
    answer is not judged here (it is recreated when dead)."""
    return [
        name
        for name, status in statuses.items()
        if not status.get("unreachable") and status.get("config_version") != version
    ]


class Source(Protocol[Origin]):
    """One session with a broker (a driver in :mod:`serve_app.brokers`), opened with
    ``async with`` and closed when the session ends."""

    dead_letters: DeadLetterSink[Origin]

    async def fetch(self) -> Sequence[Delivery[Origin]]:
        """The next batch, or nothing within one poll."""
        ...

    async def hold(self) -> None:
        """Called while a step of the current batch is retried."""
        ...

    async def settle(self, batch: Sequence[Delivery[Origin]]) -> bool:
        """Commit or ack a handled batch; False when it will be redelivered instead."""
        ...

    def take_skipped(self) -> list[Skipped]:
        """Ranges of records the broker deleted before they were read, found since the
        last call (the source has moved on to the earliest record kept)."""
        ...


class Prefetch(Generic[Origin]):
    """The next batch fetched while the current one is written: the store's scripts and
    the broker's fetch (Kafka's round trip, RabbitMQ's batch window) overlap instead of
    taking turns. At most one batch ahead, and never two reads of the source at once:
    :meth:`settle` lets a fetch in flight finish before ``hold()`` reads the source."""

    def __init__(self, source: Source[Origin]) -> None:
        self.source = source
        self._next: asyncio.Future[Sequence[Delivery[Origin]]] | None = None

    def start(self) -> None:
        """Begin fetching the next batch (if not already)."""
        if self._next is None:
            self._next = asyncio.ensure_future(self.source.fetch())

    async def take(self) -> Sequence[Delivery[Origin]]:
        """The next batch: the one fetched ahead, else fetched now."""
        self.start()
        assert self._next is not None
        task, self._next = self._next, None
        return await task

    async def settle(self) -> None:
        """Wait for a fetch in flight (its batch is kept for :meth:`take`)."""
        if self._next is not None:
            await asyncio.wait([self._next])

    async def close(self) -> None:
        """Drop a fetch in flight (what it read is redelivered: never settled)."""
        task, self._next = self._next, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


ErrorReport = Callable[[BaseException, str], None]
OpenSource = Callable[[ErrorReport], AbstractAsyncContextManager[Source[Any]]]


class ConsumerLoop:
    """A consumer's loop over sessions, restarted on any failure, and its status.

    ``open_source`` opens one broker session; ``store`` applies batches; ``node_id`` names
    where it runs (the Ray actor passes its node). Counters in :meth:`status` only grow.
    """

    def __init__(
        self,
        name: str,
        kind: str,
        store: TweetRecorder,
        open_source: OpenSource,
        metrics: MetricsSink = NO_METRICS,
        node_id: str = "",
        config_version: str = "",
        store_name: str = "",
        drain_batch: int = DRAIN_BATCH,
        drain_lease_s: float = DRAIN_LEASE_S,
    ) -> None:
        self.name = name
        self.kind = kind
        self.freshness = Freshness(store_name or kind)
        self.store = store
        self.open_source = open_source
        self.metrics = metrics
        self.node_id = node_id
        self.config_version = config_version
        self.started_at = time.time()
        self.batches = 0
        self.messages = 0
        self.new_tweets = 0
        self.poison = 0
        self.duplicates = 0
        self.conflicts = 0
        self.retries = 0
        self.drain_batch, self.drain_lease_s = drain_batch, drain_lease_s
        self.published_dead_letters = 0
        self.parked_dead_letters = 0
        self._letters_due = asyncio.Event()
        self.skipped = 0
        self.loop_restarts = 0
        self.retrying = False
        self.connected = False
        self.last_error: str | None = None
        self.last_error_at: float | None = None
        self.last_batch_at: float | None = None
        self._task: asyncio.Task[None] | None = None
        self._freshness_task: asyncio.Task[None] | None = None
        self._stopping = False

    # --- lifecycle -------------------------------------------------------------------
    def ensure_task(self) -> bool:
        """Start the loop unless it is running; True if it was (re)started."""
        if self._freshness_task is None or self._freshness_task.done():
            self._freshness_task = asyncio.get_running_loop().create_task(
                self.freshness.run(self.metrics), name=f"{self.name} freshness"
            )
        if self._task is not None and not self._task.done():
            return False
        self._stopping = False
        self._task = asyncio.get_running_loop().create_task(self._supervised(), name=self.name)
        return True

    async def stop(self) -> None:
        """Stop the loop and close the connections (uncommitted work is redelivered)."""
        self._stopping = True
        if self._freshness_task is not None:
            self._freshness_task.cancel()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    def status(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "running": self._task is not None and not self._task.done(),
            "connected": self.connected,
            "retrying": self.retrying,
            "batches": self.batches,
            "messages": self.messages,
            "new_tweets": self.new_tweets,
            "duplicates": self.duplicates,
            "poison": self.poison,
            "conflicts": self.conflicts,
            "retries": self.retries,
            "published_dead_letters": self.published_dead_letters,
            "parked_dead_letters": self.parked_dead_letters,
            "skipped": self.skipped,
            "loop_restarts": self.loop_restarts,
            "last_error": self.last_error,
            "last_error_at": self.last_error_at,
            "last_batch_at": self.last_batch_at,
            "started_at": self.started_at,
            "pid": os.getpid(),
            "node_id": self.node_id,
            "config_version": self.config_version,
        }

    async def _supervised(self) -> None:
        """Run sessions forever; any escape reconnects from scratch after a backoff."""
        backoff = Backoff()
        while not self._stopping:
            try:
                await self._session(backoff)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # broker gone, topology error, bug: start over
                self.error(exc, "session failed; reconnecting")
                self.loop_restarts += 1
            self.connected = False
            await backoff.sleep()

    async def _session(self, backoff: Backoff) -> None:
        async with self.open_source(self.error) as source:
            prefetch = Prefetch(source)

            async def on_retry(exc: BaseException, what: str) -> None:
                await self._retrying(exc, what)
                await prefetch.settle()
                await source.hold()

            core = ConsumerCore(self.store, source.dead_letters, on_retry, backoff)
            drain = OutboxDrain(
                self.store, source.dead_letters, self.name, batch=self.drain_batch,
                lease_s=self.drain_lease_s, on_error=self.error,
            )  # fmt: skip
            self.connected = True
            backoff.reset()
            parked = asyncio.get_running_loop().create_task(self._drain(drain))
            try:
                while not self._stopping:
                    batch = await prefetch.take()
                    await self._skipped(core, source.take_skipped())
                    if batch:
                        prefetch.start()
                        outcome = await core.handle(batch)
                        self._done(outcome, acknowledged=await source.settle(batch))
            finally:
                self.connected = False
                await prefetch.close()
                parked.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await parked

    async def _drain(self, drain: OutboxDrain[Any]) -> None:
        """Publish the outbox for as long as the session lasts: at once while letters are
        left, after a backoff when the sink failed, and when a batch put letters in (or
        every :data:`DRAIN_IDLE_S`) once it is empty."""
        while not self._stopping:
            self._letters_due.clear()
            published = drain.published
            delay = await drain.step()
            self.published_dead_letters += drain.published - published
            self.parked_dead_letters = drain.pending
            self.metrics.set(PARKED_DEAD_LETTERS, self.parked_dead_letters, consumer=self.kind)
            if drain.failing:
                await asyncio.sleep(delay)
            elif delay:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._letters_due.wait(), delay)

    async def _skipped(self, core: ConsumerCore[Any], skipped: Sequence[Skipped]) -> None:
        """Count and report records the broker deleted before they were read."""
        if not skipped:
            return
        await core.record_skipped(skipped)
        for skip in skipped:
            logger.error(
                "%s: %d records of %s (offsets %d-%d) were deleted by the broker before they "
                "were read: skipped, counted in the store's skipped records",
                self.name, skip.count, skip.source, skip.first, skip.last,
            )  # fmt: skip
            self.skipped += skip.count
            self.metrics.inc(SKIPPED_RECORDS, skip.count, consumer=self.kind)

    def error(self, exc: BaseException, what: str) -> None:
        """Keep the last error in the status and log it."""
        self.last_error = describe(exc, REASON_LIMIT)
        self.last_error_at = time.time()
        logger.warning("%s: %s: %s", self.name, what, self.last_error)

    async def _retrying(self, exc: BaseException, what: str) -> None:
        """The core retries a step of the batch: say so in the status."""
        self.retrying = True
        self.retries += 1
        self.error(exc, f"{what} failed; retrying the same batch")

    def _done(self, outcome: BatchOutcome, acknowledged: bool) -> None:
        """Book a batch: metrics once it is applied, the status once it is committed/acked
        (a redelivery after a failed commit shows up as duplicates)."""
        self.retrying = False
        self.freshness.counted(outcome.newest_accepted_at)
        for name, value in (
            ("applied", outcome.applied),
            ("duplicate", outcome.duplicates),
            ("dead_lettered", outcome.dead_lettered),
        ):
            self.metrics.inc(CONSUMER_TWEETS, value, consumer=self.kind, outcome=name)
        if outcome.dead_lettered:
            self._letters_due.set()
        if not acknowledged:
            return
        self.batches += 1
        self.messages += outcome.messages
        self.new_tweets += outcome.applied
        self.duplicates += outcome.duplicates
        self.poison += outcome.poison
        self.conflicts += outcome.conflicts
        self.last_batch_at = time.time()
