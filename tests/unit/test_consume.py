"""The consumer core over plain fakes: poison, store outages, id conflicts (no servers)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime

from serve_app.brokers.base import DeadLetter, Delivery
from serve_app.consume.core import ID_CONFLICT, Backoff, ConsumerCore
from serve_app.model.codec import EncodedBatch
from serve_app.model.schema import Tweet
from serve_app.store.core import CountedTweet, RecordResult

NOW = datetime(2026, 11, 28, tzinfo=UTC)


def tweet(i: int, text: str = "lluvia") -> Tweet:
    return Tweet(id=f"t-{i}", description=text, country="GT", weather="Lluvioso", accepted_at=NOW)


class FakeStore:
    """Counts an id once per fingerprint, like the Lua script; can fail a few times."""

    def __init__(self, failures: int = 0) -> None:
        self.seen: dict[str, str] = {}
        self.failures = failures
        self.calls: list[str] = []

    async def record_batch(self, tweets: Sequence[CountedTweet]) -> RecordResult:
        self.calls.append("store")
        if self.failures:
            self.failures -= 1
            raise ConnectionError("store down")
        new = duplicates = 0
        conflicts = []
        for t in tweets:
            if t.id not in self.seen:
                self.seen[t.id] = t.fingerprint
                new += 1
            elif self.seen[t.id] == t.fingerprint:
                duplicates += 1
            else:
                conflicts.append(t.id)
        return RecordResult(new, duplicates, tuple(conflicts))


class FakeDeadLetters:
    def __init__(self, calls: list[str], failures: int = 0) -> None:
        self.letters: list[DeadLetter[str]] = []
        self.calls = calls
        self.failures = failures

    async def send(self, letters: Sequence[DeadLetter[str]]) -> None:
        self.calls.append("dead-letters")
        if self.failures:
            self.failures -= 1
            raise TimeoutError("broker blocked")
        self.letters.extend(letters)


def core(store: FakeStore, dlq_failures: int = 0):
    retries: list[str] = []

    async def on_retry(exc: BaseException, what: str) -> None:
        retries.append(what)

    dead = FakeDeadLetters(store.calls, dlq_failures)
    return ConsumerCore(store, dead, on_retry, Backoff(0.001, 0.002)), dead, retries


def chunk(tweets: list[Tweet], origin: str) -> Delivery[str]:
    [encoded] = EncodedBatch(tweets, 1_000_000).chunks(by_country=False)
    return Delivery(encoded.body, origin)


async def test_poison_is_dead_lettered_before_the_good_tweets_are_applied() -> None:
    store = FakeStore()
    consumer, dead, _ = core(store)
    bad = {**json.loads(tweet(9).to_json()), "country": "ZZ"}
    body = json.dumps({"v": 2, "tweets": [json.loads(tweet(1).to_json()), bad]}).encode()
    outcome = await consumer.handle([Delivery(body, "m1"), chunk([tweet(2)], "m2")])
    assert store.calls == ["dead-letters", "store"]
    assert (outcome.messages, outcome.applied, outcome.poison) == (2, 2, 1)
    [letter] = dead.letters
    assert letter.id == "t-9" and letter.origin == "m1" and "country" in letter.reason


async def test_a_store_outage_holds_the_batch_until_it_is_applied() -> None:
    store = FakeStore(failures=3)
    consumer, _, retries = core(store)
    outcome = await consumer.handle([chunk([tweet(1), tweet(2)], "m")])
    assert retries == ["store write"] * 3
    assert outcome.applied == 2 and set(store.seen) == {"t-1", "t-2"}


async def test_a_blocked_dead_letter_broker_is_retried_and_nothing_good_is_lost() -> None:
    store = FakeStore()
    consumer, dead, retries = core(store, dlq_failures=2)
    outcome = await consumer.handle([Delivery(b"\xff not json", "m"), chunk([tweet(1)], "n")])
    assert retries == ["dead-letter write"] * 2
    assert outcome.applied == 1 and len(dead.letters) == 1


async def test_redeliveries_are_duplicates_and_a_reused_id_is_a_conflict() -> None:
    store = FakeStore()
    consumer, dead, _ = core(store)
    await consumer.handle([chunk([tweet(1), tweet(2)], "first")])
    again = await consumer.handle([chunk([tweet(1), tweet(2, text="otra cosa")], "second")])
    assert (again.applied, again.duplicates, again.conflicts) == (0, 1, 1)
    [letter] = dead.letters
    assert (letter.id, letter.reason, letter.origin) == ("t-2", ID_CONFLICT, "second")
    assert json.loads(letter.body)["description"] == "otra cosa"
