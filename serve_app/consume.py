"""Stage 3 core: what a consumer does with one batch of broker messages (no Ray, no broker).

decode (chunks and v1 messages, :mod:`serve_app.codec`) → dead-letter the poison → apply
the good tweets once through the store's script → dead-letter the id conflicts the store
refused → report. The broker adapters (:mod:`serve_app.consumers`) fetch, then commit or
ack only after :meth:`ConsumerCore.handle` returned: a crash anywhere before redelivers the
batch, and the store counts an id once, so nothing is lost and nothing counted twice.

A failing step (store or dead-letter broker down) is retried with capped backoff for as
long as it takes, holding the batch: consumption pauses, nothing is committed, nothing good
is ever dead-lettered. The unit tests drive this with plain fakes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from serve_app.codec import decode_message
from serve_app.store import CountedTweet, RecordResult

ID_CONFLICT = "id-conflict"
"""The dead-letter reason of a tweet whose id was counted before with other content."""

BACKOFF_START_S = 0.1
BACKOFF_MAX_S = 2.0

Origin = TypeVar("Origin")
T = TypeVar("T")


@dataclass(frozen=True)
class Delivery(Generic[Origin]):
    """One broker message; ``origin`` is the adapter's own handle on it (record, message)."""

    body: bytes
    origin: Origin


@dataclass(frozen=True)
class DeadLetter(Generic[Origin]):
    """What goes to the dead letters: a bad tweet alone (or an unreadable message whole),
    why, and the message it came from."""

    body: bytes
    reason: str
    origin: Origin
    id: str | None = None


class DeadLetterSink(Protocol[Origin]):
    async def send(self, letters: Sequence[DeadLetter[Origin]]) -> None: ...


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
