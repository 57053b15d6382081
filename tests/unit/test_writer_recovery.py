"""Kafka producers recover (offline): a writer or dead-letter sink whose producer failed
starts a new one for the next send, and a failure retires only the producer it happened on.

Found by the suite: after a chaos round, an idempotent producer answered every later send
with OutOfOrderSequenceNumber, so every POST was a 503 until the writer was redeployed. And
a failure used to retire the shared producer that concurrent writes were using, so they
failed too and retired the next one: a cascade of 503s.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest
from aiokafka.errors import OutOfOrderSequenceNumber

from serve_app.brokers.base import Envelope
from serve_app.brokers.kafka import KafkaChunkWriter, KafkaDeadLetters, ProducerSlot
from serve_app.errors import BrokerUnavailable
from serve_app.model.codec import encode_chunks
from serve_app.model.schema import Tweet
from serve_app.settings import Settings

CHUNKS = encode_chunks(
    [
        Tweet(id="r-1", description="sol", country="GT", weather="Soleado",
              accepted_at=datetime.now(UTC)),
    ],
    Settings().max_chunk_bytes,
)  # fmt: skip


class FakeProducer:
    """Delivers, fails every send the way a producer out of sequence does, or (``held``)
    keeps each delivery pending until the test settles it."""

    def __init__(self, broken: bool = False, held: bool = False) -> None:
        self.broken = broken
        self.held = held
        self.pending: list[asyncio.Future[None]] = []
        self.sent = 0
        self.stopped = False

    async def send(self, topic: str, value: bytes, key: bytes | None, **kw: object) -> object:
        delivery: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.held:
            self.pending.append(delivery)
        elif self.broken:
            delivery.set_exception(OutOfOrderSequenceNumber())
        else:
            self.sent += 1
            delivery.set_result(None)
        return delivery

    async def stop(self) -> None:
        self.stopped = True


def scripted(producers: list[FakeProducer]) -> ProducerSlot:
    """A slot that starts the next producer of the script instead of a real one."""
    script = list(producers)

    async def start() -> FakeProducer:
        return script.pop(0)

    return ProducerSlot(start, stop_timeout_s=1)


class ScriptedKafkaWriter(KafkaChunkWriter):
    def __init__(self, producers: list[FakeProducer]) -> None:
        super().__init__(Settings())
        self._producers = scripted(producers)


async def test_a_failed_producer_is_replaced_for_the_next_write() -> None:
    broken, fresh = FakeProducer(broken=True), FakeProducer()
    writer = ScriptedKafkaWriter([broken, fresh])

    with pytest.raises(BrokerUnavailable) as failed:
        await writer.write(CHUNKS, timeout_s=5)
    assert failed.value.broker == "kafka"
    assert await writer.write(CHUNKS, timeout_s=5) == len(CHUNKS)

    await writer.close()
    assert broken.stopped and fresh.stopped
    assert (broken.sent, fresh.sent) == (0, len(CHUNKS))


async def test_a_writer_that_keeps_succeeding_keeps_its_producer() -> None:
    only = FakeProducer()
    writer = ScriptedKafkaWriter([only])
    for _ in range(3):
        await writer.write(CHUNKS, timeout_s=5)
    assert only.sent == 3 * len(CHUNKS) and not only.stopped
    await writer.close()


async def two_in_flight(
    writer: KafkaChunkWriter, old: FakeProducer
) -> tuple[asyncio.Task[int], asyncio.Task[int]]:
    """Two writes whose deliveries are all pending on the (held) producer ``old``."""
    first = asyncio.create_task(writer.write(CHUNKS, timeout_s=5))
    second = asyncio.create_task(writer.write(CHUNKS, timeout_s=5))
    while len(old.pending) < 2 * len(CHUNKS):
        await asyncio.sleep(0)
    return first, second


async def test_a_late_failure_on_a_retired_producer_leaves_the_new_one_alone() -> None:
    """Two writes in flight on one producer: the first fails and retires it; the next write
    starts a new producer; the second write then fails on the old one, which must not
    retire the new one (no cascade), and the new producer keeps serving."""
    old, new = FakeProducer(held=True), FakeProducer()
    writer = ScriptedKafkaWriter([old, new])
    first, second = await two_in_flight(writer, old)
    old.pending[0].set_exception(OutOfOrderSequenceNumber())
    with pytest.raises(BrokerUnavailable):
        await first
    assert await writer.write(CHUNKS, timeout_s=5) == len(CHUNKS)  # on the new producer
    for delivery in old.pending[len(CHUNKS) :]:
        delivery.set_exception(OutOfOrderSequenceNumber())
    with pytest.raises(BrokerUnavailable):
        await second
    assert await writer.write(CHUNKS, timeout_s=5) == len(CHUNKS)
    assert new.sent == 2 * len(CHUNKS) and not new.stopped
    await writer.close()


async def test_writes_in_flight_on_a_retired_producer_finish_on_their_own() -> None:
    old, new = FakeProducer(held=True), FakeProducer()
    writer = ScriptedKafkaWriter([old, new])
    slow, failing = await two_in_flight(writer, old)
    for delivery in old.pending[len(CHUNKS) :]:
        delivery.set_exception(OutOfOrderSequenceNumber())
    with pytest.raises(BrokerUnavailable):
        await failing
    for delivery in old.pending[: len(CHUNKS)]:
        delivery.set_result(None)
    assert await slow == len(CHUNKS)
    await writer.close()


async def test_the_dead_letter_producer_is_replaced_after_a_failed_send() -> None:
    broken, fresh = FakeProducer(broken=True), FakeProducer()
    sink = KafkaDeadLetters(scripted([broken, fresh]), Settings())
    letters = [Envelope.of(b"\xff", "undecodable")]
    with pytest.raises(OutOfOrderSequenceNumber):
        await sink.send(letters)
    await sink.send(letters)
    await asyncio.sleep(0)
    assert broken.stopped and fresh.sent == 1
    await sink.producers.close()
