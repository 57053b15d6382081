"""A Kafka writer whose producer failed starts a new one for the next write (offline).

Found by the suite: after a chaos round, an idempotent producer answered every later send
with OutOfOrderSequenceNumber, so every POST was a 503 until the writer was redeployed.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest
from aiokafka.errors import OutOfOrderSequenceNumber

from serve_app.brokers.kafka import KafkaChunkWriter
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
    """Delivers, or fails every send the way a producer out of sequence does."""

    def __init__(self, broken: bool) -> None:
        self.broken = broken
        self.sent = 0
        self.stopped = False

    async def send(self, topic: str, value: bytes, key: bytes) -> asyncio.Future[None]:
        delivery: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.broken:
            delivery.set_exception(OutOfOrderSequenceNumber())
        else:
            self.sent += 1
            delivery.set_result(None)
        return delivery

    async def stop(self) -> None:
        self.stopped = True


class ScriptedKafkaWriter(KafkaChunkWriter):
    """Each connect takes the next producer from a script instead of a broker."""

    def __init__(self, producers: list[FakeProducer]) -> None:
        super().__init__(Settings())
        self.script = list(producers)

    async def _connect(self) -> None:
        self._producer = self.script.pop(0)  # type: ignore[assignment]


async def test_a_failed_producer_is_replaced_for_the_next_write() -> None:
    broken, fresh = FakeProducer(broken=True), FakeProducer(broken=False)
    writer = ScriptedKafkaWriter([broken, fresh])

    with pytest.raises(BrokerUnavailable) as failed:
        await writer.write(CHUNKS, timeout_s=5)
    assert failed.value.broker == "kafka"
    assert await writer.write(CHUNKS, timeout_s=5) == len(CHUNKS)

    await writer.close()
    assert broken.stopped and fresh.stopped
    assert (broken.sent, fresh.sent) == (0, len(CHUNKS))


async def test_a_writer_that_keeps_succeeding_keeps_its_producer() -> None:
    only = FakeProducer(broken=False)
    writer = ScriptedKafkaWriter([only])
    for _ in range(3):
        await writer.write(CHUNKS, timeout_s=5)
    assert only.sent == 3 * len(CHUNKS) and writer.script == []
    await writer.close()
