"""Dead letters exactly once through the store's outbox (plain fakes, a fake clock, no
server): a store write retried after the server ran it, a consumer restarted before it
published, a sink that fails for a while, and a RabbitMQ publish no queue takes."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import aio_pika
import pytest

from serve_app.brokers.base import DeadLetter, Delivery, Envelope
from serve_app.brokers.rabbitmq import RabbitDeadLetters
from serve_app.consume.core import (
    DRAIN_BACKOFF_MAX_S,
    ID_CONFLICT,
    Backoff,
    ConsumerCore,
    OutboxDrain,
    outbox_envelope,
)
from serve_app.settings import Settings
from serve_app.store.core import CountedTweet, LetterOrigins, RecordResult
from tests.unit.test_consume import (
    KEY,
    NO_ORIGINS,
    FakeDeadLetters,
    FakeStore,
    chunk,
    drain,
    tweet,
)


class AppliesThenRaisesOnce(FakeStore):
    """A store whose script ran, but whose answer was lost once (a timeout after the
    server ran it, or a later part of the batch failed): the batch is written again."""

    def __init__(self) -> None:
        super().__init__()
        self.lose_next_answer = False

    async def record_batch(
        self, tweets: Sequence[CountedTweet], origins: LetterOrigins = NO_ORIGINS
    ) -> RecordResult:
        result = await super().record_batch(tweets, origins)
        if self.lose_next_answer:
            self.lose_next_answer = False
            raise TimeoutError("no answer within 5 s")
        return result


def new_core(store: FakeStore, sink: FakeDeadLetters) -> ConsumerCore[str]:
    async def on_retry(exc: BaseException, what: str) -> None:
        return None

    return ConsumerCore(store, sink, on_retry, Backoff(0.001, 0.002))


def ordered(*contents: str) -> list[str]:
    """Descriptions of one id, the winner (smallest fingerprint) first."""
    return sorted(contents, key=lambda text: CountedTweet.of(tweet(1, text), KEY).fingerprint)


def letter_keys(sent: Sequence[Envelope]) -> list[tuple[str | None, str]]:
    """(id, what lost) of each published conflict letter: its description, or the
    fingerprint the store knew it by."""
    keys = []
    for envelope in sent:
        body = json.loads(envelope.body)
        keys.append((envelope.id, body.get("description") or body["fingerprint"]))
    return sorted(keys)


async def test_a_batch_retried_after_the_store_applied_it_still_sends_each_loser_once() -> None:
    """The retry finds the winners duplicates (nothing to report), yet both losers were
    put in the outbox by the call whose answer was lost: each is published exactly once."""
    store = AppliesThenRaisesOnce()
    sink = FakeDeadLetters([])
    consumer = new_core(store, sink)
    x_wins, x_loses = ordered("sol", "lluvia fuerte")
    y_wins, y_loses = ordered("nieve", "granizo")
    await consumer.handle([chunk([tweet(1, x_loses), tweet(2, y_wins)], "m1")])
    store.lose_next_answer = True
    outcome = await consumer.handle([chunk([tweet(1, x_wins), tweet(2, y_loses)], "m2")])
    assert outcome.duplicates == 1  # the retry saw x's winner as counted already
    await drain(store, sink)
    await drain(store, sink)
    displaced_fp = CountedTweet.of(tweet(1, x_loses), KEY).fingerprint
    assert letter_keys(sink.sent) == [("t-1", displaced_fp), ("t-2", y_loses)]
    assert {e.reason for e in sink.sent} == {ID_CONFLICT} and store.outbox_entries == {}


async def test_a_consumer_restarted_before_it_published_sends_each_letter_once() -> None:
    """A crash after the batch was written but before any letter went out: the batch is
    redelivered to a new consumer (a duplicate now), the outbox still holds the letters,
    and the poison of the redelivered message is not added a second time."""
    store = FakeStore()
    x_wins, x_loses = ordered("sol", "lluvia fuerte")
    batch = [chunk([tweet(1, x_wins)], "m1"), Delivery(b"\xff junk", "m2")]
    crashed = new_core(store, FakeDeadLetters([]))
    await crashed.handle([chunk([tweet(1, x_loses)], "m0")])
    await crashed.handle(batch)  # the consumer dies before its drain ran
    sink = FakeDeadLetters([])
    restarted = new_core(store, sink)
    again = await restarted.handle(batch)
    assert (again.applied, again.duplicates, again.conflicts) == (0, 1, 0)
    await drain(store, sink)
    assert sorted(e.body[:7] for e in sink.sent) == sorted([b"\xff junk", b'{"id": '])
    assert len(sink.sent) == 2 and store.outbox_entries == {}


class FakeClock:
    now = 0.0


class RecoveringSink(FakeDeadLetters):
    """Fails every send until ``down_until_s``, then takes ``rate`` letters per second of
    the fake clock (a send of n letters takes n / rate seconds)."""

    def __init__(self, clock: FakeClock, down_until_s: float, rate: float) -> None:
        super().__init__([])
        self.clock, self.down_until_s, self.rate = clock, down_until_s, rate

    async def send(self, envelopes: Sequence[Envelope]) -> None:
        if self.clock.now < self.down_until_s:
            self.clock.now += 0.01
            raise TimeoutError("dead-letter broker down")
        self.clock.now += len(envelopes) / self.rate
        self.sent.extend(envelopes)


async def test_a_sink_back_after_5_s_at_100_letters_per_s_drains_all_and_parks_nothing_new() -> (
    None
):
    """30 letters/s arrive; the sink fails for 5 s, then takes 100 letters/s. The backlog
    drains at the sink's rate (no fixed 100 letters per 2 s), every letter goes out exactly
    once, and once the backlog is gone no new letter waits in the outbox behind others."""
    clock, per_s, end_s = FakeClock(), 30, 20.0
    store = FakeStore()
    sink = RecoveringSink(clock, down_until_s=5.0, rate=100)
    consumer = new_core(store, sink)
    drainer = OutboxDrain(store, sink, "consumer-0")
    made = 0
    caught_up_at: float | None = None
    waiting_after: list[int] = []
    for _ in range(100_000):
        if clock.now >= end_s:
            break
        while made < int(clock.now * per_s):
            await consumer.handle([Delivery(f"\xff letter {made}".encode(), f"m{made}")])
            made += 1
        delay = await drainer.step()
        if caught_up_at is None and clock.now > 5.0 and not store.outbox_entries:
            caught_up_at = clock.now
        if caught_up_at is not None:
            waiting_after.append(len(store.outbox_entries))
        if drainer.failing:
            clock.now += delay
        elif delay:  # idle: a new letter wakes the drain (the loop's event)
            clock.now = max(clock.now, (made + 1) / per_s + 1e-6)
    bodies = [e.body for e in sink.sent]
    assert sorted(bodies) == sorted(f"\xff letter {i}".encode() for i in range(made))
    assert len(set(bodies)) == len(bodies) == made and made >= per_s * (end_s - 1)
    backlog = 5.0 * per_s
    assert caught_up_at is not None
    assert caught_up_at <= 5.0 + DRAIN_BACKOFF_MAX_S + backlog / (100 - per_s) + 1.0
    assert max(waiting_after) <= 1  # what arrived since the last send, nothing parked


class UnroutedExchange:
    """A RabbitMQ exchange with no queue bound, as aio_pika answers a publish: a
    ``mandatory`` message comes back, which raises only on a channel opened with
    ``on_return_raises`` (else the publish "succeeds" and the broker drops it)."""

    def __init__(self, on_return_raises: bool) -> None:
        self.on_return_raises = on_return_raises
        self.dropped = 0

    async def publish(self, message: Any, routing_key: str, *, mandatory: bool = True) -> None:
        if mandatory and self.on_return_raises:
            raise aio_pika.exceptions.PublishError(message, None)  # type: ignore[arg-type]
        self.dropped += 1


class ClosableConnection:
    async def close(self) -> None:
        return None


async def test_an_unroutable_rabbitmq_dead_letter_fails_and_stays_in_the_outbox(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    exchanges: list[UnroutedExchange] = []

    async def fake_connect(settings: Settings, name: str, setup: Any, **options: Any) -> Any:
        exchange = UnroutedExchange(bool(options.get("on_return_raises")))
        exchanges.append(exchange)
        return ClosableConnection(), exchange

    monkeypatch.setattr("serve_app.brokers.rabbitmq.connect", fake_connect)
    rabbit = RabbitDeadLetters(Settings(), "test-dead-letters")
    store = FakeStore()
    store.outbox_entries["poison:m:ab:0"] = Envelope.of(b"\xff", "undecodable").to_json()
    drainer = OutboxDrain(store, rabbit, "consumer-0")
    await drainer.step()
    assert drainer.failing and list(store.outbox_entries) == ["poison:m:ab:0"]
    assert drainer.pending == 1 and all(e.dropped == 0 for e in exchanges)


async def test_a_letter_confirmed_but_not_removed_is_never_sent_again() -> None:
    """The store failed right after the broker confirmed: the next round removes the sent
    letters first instead of publishing them again."""

    class RemovalFailsOnce(FakeStore):
        fail = True

        async def remove_letters(self, ids: Sequence[str]) -> int:
            if self.fail:
                self.fail = False
                raise ConnectionError("store gone")
            return await super().remove_letters(ids)

    store = RemovalFailsOnce()
    store.outbox_entries["a"] = Envelope.of(b"a", "undecodable").to_json()
    sink = FakeDeadLetters([])
    drainer = OutboxDrain(store, sink, "consumer-0")
    assert await drainer.step() > 0 and drainer.failing
    assert await drainer.step() > 0 and not drainer.failing
    assert [e.body for e in sink.sent] == [b"a"] and store.outbox_entries == {}


async def test_only_the_lease_holder_publishes_a_store_s_outbox() -> None:
    store = FakeStore()
    store.outbox_entries["a"] = Envelope.of(b"a", "undecodable").to_json()
    first, second = FakeDeadLetters([]), FakeDeadLetters([])
    await OutboxDrain(store, second, "consumer-1").step()  # takes the lease, sends
    store.outbox_entries["b"] = Envelope.of(b"b", "undecodable").to_json()
    await OutboxDrain(store, first, "consumer-0").step()
    assert [e.body for e in second.sent] == [b"a"] and first.sent == []


def test_an_outbox_entry_of_any_shape_becomes_an_envelope() -> None:
    template = FakeDeadLetters([]).envelope(DeadLetter(b"", ID_CONFLICT, "m7")).to_json()
    refused = json.dumps({"o": template, "id": "t-1", "body": '{"id":"t-1"}'})
    displaced = json.dumps({"id": "t-2", "seen": "k" + "0" * 15 + ":GT:Lluvioso", "by": "k1"})
    envelope = outbox_envelope(refused)
    assert (envelope.id, envelope.body, dict(envelope.headers)) == (
        "t-1", b'{"id":"t-1"}', {"x-origin": "m7"},
    )  # fmt: skip
    body = json.loads(outbox_envelope(displaced).body)
    assert (body["country"], body["weather"], body["displaced_by"]) == ("GT", "Lluvioso", "k1")
    assert outbox_envelope("not json").reason == "unreadable outbox entry"
    parked = Envelope.of(b"old", "invalid tweet", "t-3").to_json()
    assert outbox_envelope(parked) == Envelope.of(b"old", "invalid tweet", "t-3")


class RabbitLikeSink(FakeDeadLetters):
    """A broker with no message identity a redelivery keeps; ``origin`` "r:..." is a
    redelivery (RabbitMQ's flag)."""

    def identity(self, origin: str) -> str | None:
        return None

    def redelivered(self, origin: str) -> bool:
        return origin.startswith("r:")


async def test_identical_rabbitmq_poison_is_a_letter_each_and_a_redelivery_none() -> None:
    """Two byte-identical poison messages (no message identity) are two letters; the
    redelivery of one after a crash before its ack adds none."""
    store = FakeStore()
    sink = RabbitLikeSink([])
    consumer = new_core(store, sink)
    await consumer.handle([Delivery(b"\xff same", "m1")])
    await consumer.handle([Delivery(b"\xff same", "m2")])
    await consumer.handle([Delivery(b"\xff same", "r:m1")])
    await drain(store, sink)
    assert [e.body for e in sink.sent] == [b"\xff same", b"\xff same"]
