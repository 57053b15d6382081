"""Stage 3 core: how a consumer drains one broker into one store (no Ray, no broker client).

:class:`ConsumerCore` handles one batch: decode (chunks and v1 messages,
:mod:`serve_app.model.codec`) → dead-letter the poison → apply the good tweets once through
the store's script → dead-letter the id conflicts the store refused → report.
:class:`ConsumerLoop` runs sessions of a broker :class:`Source` (a driver in
:mod:`serve_app.brokers`) forever: fetch, handle, then commit or ack only after the batch was
handled. A crash anywhere before redelivers the batch, and the store counts an id once, so
nothing is lost and nothing counted twice.

A failing step (store or dead-letter broker down) is retried with capped backoff for as
long as it takes, holding the batch: consumption pauses, nothing is committed, nothing good
is ever dead-lettered. The unit tests drive this with plain fakes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from serve_app.brokers.base import DeadLetter, DeadLetterSink, Delivery
from serve_app.errors import describe
from serve_app.model.codec import decode_message
from serve_app.model.metrics import CONSUMER_TWEETS, NO_METRICS, MetricsSink
from serve_app.store.core import CountedTweet, RecordResult

logger = logging.getLogger(__name__)

REASON_LIMIT = 1000
"""Characters of an error kept in a consumer's status."""

ID_CONFLICT = "id-conflict"
"""The dead-letter reason of a tweet whose id was counted before with other content."""

BACKOFF_START_S = 0.1
BACKOFF_MAX_S = 2.0

Origin = TypeVar("Origin")
T = TypeVar("T")


class TweetRecorder(Protocol):
    async def record_batch(self, tweets: Sequence[CountedTweet]) -> RecordResult: ...


@dataclass(frozen=True)
class BatchOutcome:
    messages: int
    applied: int
    duplicates: int
    poison: int
    conflicts: int

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
        tweets: dict[str, list[Any]] = {}
        counted: list[CountedTweet] = []
        poison: list[DeadLetter[Origin]] = []
        for delivery in deliveries:
            decoded = decode_message(delivery.body)
            for tweet in decoded.tweets:
                counted.append(CountedTweet.of(tweet))
                tweets.setdefault(tweet.id, []).append((tweet, delivery))
            poison.extend(
                DeadLetter(p.body, p.reason, delivery.origin, p.id) for p in decoded.poison
            )
        if poison:
            await self._until_done(lambda: self.dead_letters.send(poison), "dead-letter write")
        result = await self._until_done(lambda: self.store.record_batch(counted), "store write")
        conflicts = [
            DeadLetter(tweet.to_json(), ID_CONFLICT, delivery.origin, tweet.id)
            for conflict_id in dict.fromkeys(result.conflicts)
            for tweet, delivery in tweets[conflict_id][-1:]
        ]
        if conflicts:
            await self._until_done(lambda: self.dead_letters.send(conflicts), "dead-letter write")
        return BatchOutcome(
            messages=len(deliveries),
            applied=result.new,
            duplicates=result.duplicates,
            poison=len(poison),
            conflicts=len(result.conflicts),
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
    ) -> None:
        self.name = name
        self.kind = kind
        self.store = store
        self.open_source = open_source
        self.metrics = metrics
        self.node_id = node_id
        self.started_at = time.time()
        self.batches = 0
        self.messages = 0
        self.new_tweets = 0
        self.poison = 0
        self.duplicates = 0
        self.conflicts = 0
        self.retries = 0
        self.loop_restarts = 0
        self.retrying = False
        self.connected = False
        self.last_error: str | None = None
        self.last_error_at: float | None = None
        self.last_batch_at: float | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    # --- lifecycle -------------------------------------------------------------------
    def ensure_task(self) -> bool:
        """Start the loop unless it is running; True if it was (re)started."""
        if self._task is not None and not self._task.done():
            return False
        self._stopping = False
        self._task = asyncio.get_running_loop().create_task(self._supervised(), name=self.name)
        return True

    async def stop(self) -> None:
        """Stop the loop and close the connections (uncommitted work is redelivered)."""
        self._stopping = True
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
            "loop_restarts": self.loop_restarts,
            "last_error": self.last_error,
            "last_error_at": self.last_error_at,
            "last_batch_at": self.last_batch_at,
            "started_at": self.started_at,
            "pid": os.getpid(),
            "node_id": self.node_id,
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

            async def on_retry(exc: BaseException, what: str) -> None:
                await self._retrying(exc, what)
                await source.hold()

            core = ConsumerCore(self.store, source.dead_letters, on_retry, backoff)
            self.connected = True
            backoff.reset()
            try:
                while not self._stopping:
                    batch = await source.fetch()
                    if batch:
                        outcome = await core.handle(batch)
                        self._done(outcome, acknowledged=await source.settle(batch))
            finally:
                self.connected = False

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
        for name, value in (
            ("applied", outcome.applied),
            ("duplicate", outcome.duplicates),
            ("dead_lettered", outcome.dead_lettered),
        ):
            self.metrics.inc(CONSUMER_TWEETS, value, consumer=self.kind, outcome=name)
        if not acknowledged:
            return
        self.batches += 1
        self.messages += outcome.messages
        self.new_tweets += outcome.applied
        self.duplicates += outcome.duplicates
        self.poison += outcome.poison
        self.conflicts += outcome.conflicts
        self.last_batch_at = time.time()
