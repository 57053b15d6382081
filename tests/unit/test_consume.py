"""The consumer core over plain fakes: poison, store outages, id conflicts, dead letters that
cannot be published, skipped records, and which actors must be replaced (no servers)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from serve_app.brokers.base import DeadLetter, Delivery, Envelope, Skipped
from serve_app.consume.core import (
    ID_CONFLICT,
    Backoff,
    ConsumerCore,
    ConsumerLoop,
    OutboxDrain,
    actor_version,
    code_version,
    config_version,
    stale_actors,
)
from serve_app.consume.freshness import FRESHNESS_EXPORT_S
from serve_app.model.codec import EncodedBatch
from serve_app.model.metrics import FRESHNESS
from serve_app.model.schema import Tweet
from serve_app.settings import Settings
from serve_app.store.core import (
    CountedTweet,
    Displaced,
    LetterOrigins,
    OutboxLetter,
    PoisonLetter,
    RecordResult,
    conflict_letter_id,
    marker,
    wins,
)
from tests.support.fakes import RecordingMetrics

NOW = datetime(2026, 11, 28, tzinfo=UTC)
BOUND_S = 5.0
"""A handle that should finish at once may take this long before the test fails (no hang)."""


def tweet(i: int, text: str = "lluvia", country: str = "GT") -> Tweet:
    return Tweet(id=f"t-{i}", description=text, country=country, weather="Lluvioso",
                 accepted_at=NOW)  # fmt: skip


KEY = b"the consumers' fingerprint key.."
NO_ORIGINS = LetterOrigins()


class FakeStore:
    """The store script's rules in Python: an id counts once; of two contents for one id
    the smaller fingerprint wins (moving the counts), a marker of the same content under its
    unkeyed fingerprint is a duplicate; the parked list; skipped ranges."""

    fingerprint_key = KEY

    def __init__(self, failures: int = 0) -> None:
        self.seen: dict[str, str] = {}
        self.counts: dict[str, int] = {}
        self.failures = failures
        self.calls: list[str] = []
        self.outbox_entries: dict[str, str] = {}  # in arrival order, like the sorted set
        self.markers: set[str] = set()  # letter ids decided (conflict and poison markers)
        self.drainer: str | None = None
        self.skipped: dict[str, int] = {}

    async def record_batch(
        self, tweets: Sequence[CountedTweet], origins: LetterOrigins = NO_ORIGINS
    ) -> RecordResult:
        self.calls.append("store")
        if self.failures:
            self.failures -= 1
            raise ConnectionError("store down")
        new = duplicates = 0
        refused: list[int] = []
        displaced: list[Displaced] = []
        counted_at: dict[str, int] = {}
        for n, t in enumerate(tweets):
            seen = self.seen.get(t.id)
            if seen is None:
                self.seen[t.id], counted_at[t.id] = marker(t), n
                self._bump(t.country, 1)
                new += 1
            elif seen[:16] in (t.fingerprint, t.legacy):
                duplicates += 1
            elif wins(t.fingerprint, seen[:16]):
                old = Displaced.of(n, t.id, seen)
                self._bump(old.country, -1)
                self._bump(t.country, 1)
                self.seen[t.id] = marker(t)
                if t.id in counted_at:
                    m = counted_at[t.id]
                    refused.append(m)
                    self._letter(old.id, old.fingerprint, origin(origins, m), body=tweets[m].body)
                else:
                    displaced.append(old)
                    entry = {"seen": seen, "by": t.fingerprint}
                    self._letter(old.id, old.fingerprint, origin(origins, n), **entry)
                counted_at[t.id] = n
            else:
                refused.append(n)
                self._letter(t.id, t.fingerprint, origin(origins, n), body=t.body)
        return RecordResult(new, duplicates, tuple(refused), tuple(displaced))

    def _letter(self, tweet_id: str, fp: str, template: str | None, **entry: str) -> None:
        """The record script's outbox write: once per (id, losing fingerprint)."""
        letter_id = conflict_letter_id(tweet_id, fp)
        if letter_id not in self.markers:
            self.markers.add(letter_id)
            self.outbox_entries[letter_id] = json.dumps({"o": template, "id": tweet_id, **entry})

    def _bump(self, country: str, delta: int) -> None:
        self.counts[country] = self.counts.get(country, 0) + delta

    async def put_poison(self, letters: Sequence[PoisonLetter]) -> int:
        self.calls.append("poison")
        written = 0
        for letter in letters:
            marker = f"poison:{letter.marker}"
            if letter.always or marker not in self.markers:
                self.markers.add(marker)
                self.outbox_entries[letter.id] = letter.entry
                written += 1
        return written

    async def outbox(self, limit: int) -> list[OutboxLetter]:
        return [OutboxLetter(i, e) for i, e in list(self.outbox_entries.items())[:limit]]

    async def remove_letters(self, ids: Sequence[str]) -> int:
        for letter_id in ids:
            self.outbox_entries.pop(letter_id, None)
        return len(self.outbox_entries)

    async def claim_drainer(self, owner: str, lease_s: float) -> bool:
        self.drainer = self.drainer or owner
        return self.drainer == owner

    async def record_skipped(self, source: str, first: int, last: int) -> bool:
        self.skipped[source] = self.skipped.get(source, 0) + last - first + 1
        return True


def origin(origins: LetterOrigins, n: int) -> str | None:
    return origins.templates[origins.of_tweet[n]] if origins.of_tweet else None


class FakeDeadLetters:
    """A dead-letter broker that takes envelopes, or fails (``failures``: how many sends;
    ``-1``: every send, like a RabbitMQ alarm that does not end)."""

    def __init__(self, calls: list[str], failures: int = 0) -> None:
        self.sent: list[Envelope] = []
        self.calls = calls
        self.failures = failures

    def envelope(self, letter: DeadLetter[str]) -> Envelope:
        return Envelope.of(letter.body, letter.reason, letter.id, [("x-origin", letter.origin)])

    def identity(self, origin: str) -> str | None:
        return origin

    def redelivered(self, origin: str) -> bool:
        return True

    async def send(self, envelopes: Sequence[Envelope]) -> None:
        self.calls.append("dead-letters")
        if self.failures:
            self.failures -= 1
            raise TimeoutError("broker blocked")
        self.sent.extend(envelopes)


def core(store: FakeStore, dlq_failures: int = 0):
    retries: list[str] = []

    async def on_retry(exc: BaseException, what: str) -> None:
        retries.append(what)

    dead = FakeDeadLetters(store.calls, dlq_failures)
    return ConsumerCore(store, dead, on_retry, Backoff(0.001, 0.002)), dead, retries


def chunk(tweets: list[Tweet], origin: str) -> Delivery[str]:
    [encoded] = EncodedBatch(tweets, 1_000_000).chunks(by_country=False)
    return Delivery(encoded.body, origin)


def origins(envelopes: Sequence[Envelope]) -> list[str]:
    return [dict(e.headers)["x-origin"] for e in envelopes]


async def drain(store: FakeStore, dead: FakeDeadLetters) -> OutboxDrain[str]:
    """Publish the outbox until the drain would wait (empty, or the sink failed)."""
    drainer = OutboxDrain(store, dead, "consumer-0")
    for _ in range(100):
        if await drainer.step():
            break
    return drainer


async def test_good_tweets_are_applied_and_the_poison_put_in_the_outbox() -> None:
    store = FakeStore()
    consumer, dead, _ = core(store)
    bad = {**json.loads(tweet(9).to_json()), "country": "ZZ"}
    body = json.dumps({"v": 2, "tweets": [json.loads(tweet(1).to_json()), bad]}).encode()
    outcome = await consumer.handle([Delivery(body, "m1"), chunk([tweet(2)], "m2")])
    assert store.calls == ["store", "poison"] and dead.sent == []
    assert (outcome.messages, outcome.applied, outcome.poison) == (2, 2, 1)
    await drain(store, dead)
    [letter] = dead.sent
    assert letter.id == "t-9" and origins(dead.sent) == ["m1"] and "country" in letter.reason
    assert store.outbox_entries == {}


async def test_a_store_outage_holds_the_batch_until_it_is_applied() -> None:
    store = FakeStore(failures=3)
    consumer, _, retries = core(store)
    outcome = await consumer.handle([chunk([tweet(1), tweet(2)], "m")])
    assert retries == ["store write"] * 3
    assert outcome.applied == 2 and set(store.seen) == {"t-1", "t-2"}


async def test_a_dead_letter_broker_that_stays_blocked_never_stops_good_tweets() -> None:
    """The alarm deadlock: batches complete while the sink fails, their letters wait in the
    outbox (in order); once the broker is back, everything goes out, oldest first."""
    store = FakeStore()
    consumer, dead, _ = core(store, dlq_failures=-1)
    first = await asyncio.wait_for(
        consumer.handle([Delivery(b"\xff one", "m1"), chunk([tweet(1)], "m2")]), BOUND_S
    )
    assert first.applied == 1 and set(store.seen) == {"t-1"}
    assert (await drain(store, dead)).failing and len(store.outbox_entries) == 1
    await asyncio.wait_for(consumer.handle([Delivery(b"\xff two", "m3")]), BOUND_S)
    dead.failures = 0
    drained = await drain(store, dead)
    assert [e.body for e in dead.sent] == [b"\xff one", b"\xff two"]
    assert origins(dead.sent) == ["m1", "m3"] and drained.pending == 0
    assert store.outbox_entries == {}


async def test_a_sink_that_cannot_describe_a_letter_still_dead_letters_it() -> None:
    store = FakeStore()
    consumer, dead, _ = core(store)

    def broken(letter: DeadLetter[str]) -> Envelope:
        raise UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates not allowed")

    dead.envelope = broken  # type: ignore[method-assign]
    await asyncio.wait_for(consumer.handle([Delivery(b"\xff", "m")]), BOUND_S)
    await drain(store, dead)
    [letter] = dead.sent
    assert letter.body == b"\xff" and letter.reason.startswith("undecodable")


async def test_redeliveries_are_duplicates_and_the_later_loser_is_the_conflict() -> None:
    store = FakeStore()
    consumer, dead, _ = core(store)
    a, b = tweet(2, text="sol"), tweet(2, text="otra cosa")
    loser = max((a, b), key=lambda t: CountedTweet.of(t, KEY).fingerprint)
    winner = a if loser is b else b
    await consumer.handle([chunk([tweet(1), winner], "first")])
    again = await consumer.handle([chunk([tweet(1), loser], "second")])
    assert (again.applied, again.duplicates, again.conflicts) == (0, 1, 1)
    await drain(store, dead)
    [letter] = dead.sent
    assert (letter.id, letter.reason, origins(dead.sent)) == ("t-2", ID_CONFLICT, ["second"])
    assert json.loads(letter.body)["description"] == loser.description


async def test_both_orders_of_a_conflict_keep_the_same_winner() -> None:
    """Kafka and RabbitMQ may deliver two contents of one id in either order: the stores
    must end up counting the same one, and dead-letter the same loser."""
    a, b = tweet(7, text="sol", country="SV"), tweet(7, text="nieve", country="GT")
    ends = []
    for order in ((a, b), (b, a)):
        store = FakeStore()
        consumer, dead, _ = core(store)
        for i, t in enumerate(order):
            await consumer.handle([chunk([t], f"m{i}")])
        await drain(store, dead)
        loser = dead.sent[0]
        ends.append((store.seen["t-7"], {k: v for k, v in store.counts.items() if v},
                     json.loads(loser.body)["country"]))  # fmt: skip
    assert ends[0] == ends[1]


async def test_a_displaced_tweet_is_dead_lettered_as_the_store_knew_it() -> None:
    old = tweet(3, text="nieve", country="SV")
    new = tweet(3, text="sol", country="GT")
    first, second = sorted((old, new), key=lambda t: CountedTweet.of(t, KEY).fingerprint)[::-1]
    store = FakeStore()
    consumer, dead, _ = core(store)
    await consumer.handle([chunk([first], "m1")])
    await consumer.handle([chunk([second], "m9")])
    await drain(store, dead)
    [letter] = dead.sent
    body = json.loads(letter.body)
    assert (letter.reason, origins(dead.sent), letter.id) == (ID_CONFLICT, ["m9"], "t-3")
    assert body["country"] == first.country
    assert body["displaced_by"] == CountedTweet.of(second, KEY).fingerprint


async def test_a_loser_redelivered_within_one_batch_is_dead_lettered_once() -> None:
    a, b = tweet(4, text="sol"), tweet(4, text="otra cosa")
    store = FakeStore()
    consumer, dead, _ = core(store)
    await consumer.handle([chunk([a], "m1"), chunk([b], "m2"), chunk([b], "m3"), chunk([a], "m4")])
    await drain(store, dead)
    assert len(dead.sent) == 1


# --- the loop: skipped records and parked letters ---------------------------------------


class FakeSource:
    """Hands out one batch, and reports a skipped range once."""

    def __init__(self, batches: list[list[Delivery[str]]], skipped: list[Skipped]) -> None:
        self.batches = batches
        self.skipped = skipped
        self.dead_letters = FakeDeadLetters([])
        self.settled: list[int] = []

    async def fetch(self) -> list[Delivery[str]]:
        if self.batches:
            return self.batches.pop(0)
        await asyncio.sleep(0.01)
        return []

    async def hold(self) -> None:
        return None

    async def settle(self, batch: Sequence[Delivery[str]]) -> bool:
        self.settled.append(len(batch))
        return True

    def take_skipped(self) -> list[Skipped]:
        skipped, self.skipped = self.skipped, []
        return skipped


async def run_loop(store: FakeStore, source: FakeSource, until: Any) -> ConsumerLoop:
    metrics = RecordingMetrics()

    @contextlib.asynccontextmanager
    async def open_source(report: Any) -> AsyncIterator[FakeSource]:
        yield source

    loop = ConsumerLoop("kafka-consumer-0", "kafka", store, open_source, metrics=metrics)
    loop.ensure_task()
    for _ in range(200):
        if until(loop):
            break
        await asyncio.sleep(0.01)
    await loop.stop()
    loop.recorded = metrics  # type: ignore[attr-defined]
    return loop


async def test_skipped_records_are_counted_in_the_store_and_reported() -> None:
    store = FakeStore()
    source = FakeSource([[chunk([tweet(1)], "m")]], [Skipped("weather-tweets/2", 10, 19)])
    loop = await run_loop(store, source, lambda lp: lp.batches == 1)
    assert store.skipped == {"weather-tweets/2": 10}
    assert loop.status()["skipped"] == 10 and loop.status()["batches"] == 1


async def test_a_consumer_exports_the_age_of_the_newest_tweet_it_counted() -> None:
    """The loop books each batch's newest acceptance time, and its own task sets the
    store's freshness gauge (every FRESHNESS_EXPORT_S) without any batch arriving."""
    metrics = RecordingMetrics()
    source = FakeSource([[chunk([tweet(1), tweet(2)], "m")]], [])

    @contextlib.asynccontextmanager
    async def open_source(report: Any) -> AsyncIterator[FakeSource]:
        yield source

    loop = ConsumerLoop("k-0", "kafka", FakeStore(), open_source, metrics, store_name="redis")
    loop.ensure_task()
    try:
        for _ in range(int((FRESHNESS_EXPORT_S + BOUND_S) / 0.01)):
            if metrics.gauge(FRESHNESS, store="redis") is not None:
                break
            await asyncio.sleep(0.01)
    finally:
        await loop.stop()
    assert loop.freshness.newest_at == NOW.timestamp()
    exported = metrics.gauge(FRESHNESS, store="redis")
    assert exported is not None and exported >= datetime.now(UTC).timestamp() - NOW.timestamp() - 5


async def test_outbox_letters_are_published_in_the_background_and_shown() -> None:
    store = FakeStore()
    store.outbox_entries["old"] = Envelope.of(b"old", "invalid tweet").to_json()
    source = FakeSource([], [])
    loop = await run_loop(store, source, lambda lp: not store.outbox_entries)
    assert [e.body for e in source.dead_letters.sent] == [b"old"]
    assert loop.status()["published_dead_letters"] == 1


class SlowSource(FakeSource):
    """Fetches take a while and are recorded: how many started, whether ``hold`` ever
    read the source while a fetch was in flight."""

    def __init__(self, batches: list[list[Delivery[str]]]) -> None:
        super().__init__(batches, [])
        self.fetches = 0
        self.in_flight = 0
        self.held_during_fetch: list[bool] = []

    async def fetch(self) -> list[Delivery[str]]:
        self.fetches += 1
        self.in_flight += 1
        try:
            await asyncio.sleep(0.02)
            return await super().fetch()
        finally:
            self.in_flight -= 1

    async def hold(self) -> None:
        self.held_during_fetch.append(self.in_flight > 0)


async def test_the_next_batch_is_fetched_while_one_is_written() -> None:
    """The store's write of batch 1 finishes only once the fetch of batch 2 has begun: the
    loop waits for nothing (no retry), so it fetched ahead; batches settle in order."""
    source = SlowSource([[chunk([tweet(1)], "m1")], [chunk([tweet(2), tweet(3)], "m2")]])

    class WaitsForTheNextFetch(FakeStore):
        async def record_batch(
            self, tweets: Sequence[CountedTweet], origins: LetterOrigins = NO_ORIGINS
        ) -> RecordResult:
            for _ in range(100):
                if source.fetches >= 2:
                    break
                await asyncio.sleep(0.01)
            else:
                raise AssertionError("the next batch was not fetched during the write")
            return await super().record_batch(tweets, origins)

    store = WaitsForTheNextFetch()
    loop = await run_loop(store, source, lambda lp: lp.batches == 2)
    assert loop.status()["retries"] == 0 and loop.status()["new_tweets"] == 3
    assert source.settled == [1, 1]  # one message each, in order


async def test_a_retried_write_holds_the_source_only_after_the_fetch_ahead() -> None:
    """While a write is retried the source is held; a fetch ahead in flight finishes first
    (never two reads of the source at once) and its batch is handled after the retry."""
    source = SlowSource([[chunk([tweet(1)], "m1")], [chunk([tweet(2)], "m2")]])

    class FailsAfterARoundTrip(FakeStore):
        async def record_batch(
            self, tweets: Sequence[CountedTweet], origins: LetterOrigins = NO_ORIGINS
        ) -> RecordResult:
            await asyncio.sleep(0.005)  # the fetch ahead is under way when this fails
            return await super().record_batch(tweets, origins)

    store = FailsAfterARoundTrip(failures=2)
    loop = await run_loop(store, source, lambda lp: lp.batches == 2)
    assert source.held_during_fetch == [False, False]
    assert loop.status()["retries"] == 2 and loop.status()["new_tweets"] == 2
    assert source.settled == [1, 1]


# --- which consumers run another configuration -------------------------------------------


def test_actors_with_other_settings_or_code_or_none_are_stale() -> None:
    code = "c0de"
    deployed = config_version(Settings(), code)
    assert deployed == config_version(Settings(), code)
    other_settings = config_version(Settings(consumer_batch_size=7), code)
    other_code = config_version(Settings(), "c0de2")
    statuses = {
        "kafka-consumer-0": {"config_version": deployed},
        "kafka-consumer-1": {"config_version": other_settings},
        "rabbit-consumer-0": {"config_version": other_code},
        "rabbit-consumer-1": {"running": True},  # an actor of an earlier release
        "rabbit-consumer-2": {"running": False, "unreachable": True, "dead": True},
    }
    assert stale_actors(deployed, statuses) == [
        "kafka-consumer-1",
        "rabbit-consumer-0",
        "rabbit-consumer-1",
    ]


def test_an_actor_reports_the_version_of_the_supervisor_that_created_it() -> None:
    """Files edited on disk after the deploy must not make the actors look stale forever
    (the supervisor would replace them every check)."""
    deployed = config_version(Settings(), "deployed")
    assert actor_version(Settings(), "deployed", imported_code="edited-since") == deployed
    assert stale_actors(deployed, {"a": {"config_version": deployed}}) == []
    assert actor_version(Settings(), "", imported_code="own") == config_version(Settings(), "own")


def test_the_code_version_follows_the_files(tmp_path: Path) -> None:
    (tmp_path / "a.py").write_text("x = 1\n")
    before = code_version(tmp_path)
    assert code_version(tmp_path) == before
    (tmp_path / "a.py").write_text("x = 2\n")
    assert code_version(tmp_path) != before


@pytest.mark.parametrize("part_size", [1, 2, 3, 7])
async def test_a_batch_written_in_parts_has_the_result_of_one_script(part_size: int) -> None:
    """The store writes a large batch as several scripts (MAX_TWEETS_PER_SCRIPT);
    merge_results must report what one script would: the same counts, the same losers
    (a loser whose content came with the batch may be reported as it came)."""
    from serve_app.store.core import merge_results

    def contents(i: int) -> list[CountedTweet]:
        # ids 0..4 reused: same content (duplicates) and other content (conflicts)
        text = ["lluvia", "sol", "granizo"][i % 3]
        return [CountedTweet.of(tweet(i % 5, text, ["GT", "HN"][i % 2]), KEY)]

    earlier = [t for i in range(3) for t in contents(i * 7)]
    batch = [t for i in range(20) for t in contents(i)]
    whole, parted = FakeStore(), FakeStore()
    for store in (whole, parted):
        await store.record_batch(earlier)
    expected = await whole.record_batch(batch)
    parts = [
        (start, await parted.record_batch(batch[start : start + part_size]))
        for start in range(0, len(batch), part_size)
    ]
    merged = merge_results(parts, batch)

    def losers(result: RecordResult) -> list[tuple[str, str]]:
        refused = [(batch[i].id, batch[i].fingerprint) for i in result.refused]
        return sorted(refused + [(d.id, d.fingerprint) for d in result.displaced])

    assert (merged.new, merged.duplicates) == (expected.new, expected.duplicates)
    assert merged.conflicts == expected.conflicts and losers(merged) == losers(expected)
    assert all(batch[d.by].id == d.id for d in merged.displaced)  # indexes into the batch
    assert parted.counts == whole.counts and parted.seen == whole.seen
