"""Integration: the broker writers against the real RabbitMQ and Kafka (no Ray)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import aio_pika
import pytest

from devstack import stack
from devstack.config import app_settings
from serve_app.brokers.kafka import KafkaChunkWriter
from serve_app.brokers.rabbitmq import RabbitChunkWriter
from serve_app.errors import BrokerUnavailable
from serve_app.model.codec import decode_message, encode_chunks
from serve_app.model.schema import Tweet

settings = app_settings()

TWEETS = [
    Tweet(id=f"w-{uuid.uuid4()}", description="sol", country=c, weather="Soleado",
          accepted_at=datetime.now(UTC))
    for c in ("GT", "SV", "GT")
]  # fmt: skip


def _private_topology() -> dict[str, str]:
    tag = uuid.uuid4().hex[:10]
    return {
        "rabbitmq_exchange": f"writer-test-{tag}",
        "rabbitmq_queue": f"writer-test-{tag}",
        "rabbitmq_dead_letter_exchange": f"writer-test-dlx-{tag}",
        "rabbitmq_dead_letter_queue": f"writer-test-dlq-{tag}",
    }


async def _delete(names: dict[str, str]) -> None:
    connection = await aio_pika.connect(settings.rabbitmq_url)
    async with connection:
        channel = await connection.channel()
        for key in ("rabbitmq_queue", "rabbitmq_dead_letter_queue"):
            await channel.queue_delete(names[key])
        for key in ("rabbitmq_exchange", "rabbitmq_dead_letter_exchange"):
            await channel.exchange_delete(names[key])


async def test_rabbit_writer_confirms_one_message_per_chunk() -> None:
    names = _private_topology()
    writer = RabbitChunkWriter(settings.model_copy(update=names))
    chunks = encode_chunks(TWEETS, settings.max_chunk_bytes)
    try:
        assert await writer.write(chunks, timeout_s=10) == 2
        connection = await aio_pika.connect(settings.rabbitmq_url)
        async with connection:
            queue = await (await connection.channel()).get_queue(names["rabbitmq_queue"])
            got = [await queue.get(timeout=5) for _ in chunks]
        assert sorted(t.id for m in got for t in decode_message(m.body).tweets) == sorted(
            t.id for t in TWEETS
        )
    finally:
        await writer.close()
        await _delete(names)


async def test_rabbit_writer_fails_on_an_unroutable_message() -> None:
    """mandatory=True: a message no queue takes is returned, and that is never a success."""
    names = _private_topology()
    writer = RabbitChunkWriter(settings.model_copy(update=names))
    try:
        assert (await writer.health(timeout_s=10))["ok"]  # connects and declares topology
        connection = await aio_pika.connect(settings.rabbitmq_url)
        async with connection:
            channel = await connection.channel()
            queue = await channel.get_queue(names["rabbitmq_queue"])
            await queue.unbind(names["rabbitmq_exchange"])
        with pytest.raises(BrokerUnavailable) as caught:
            await writer.write(encode_chunks(TWEETS, settings.max_chunk_bytes), timeout_s=10)
        assert caught.value.broker == "rabbitmq"
        assert "NO_ROUTE" in caught.value.reason or "eturn" in caught.value.reason
    finally:
        await writer.close()
        await _delete(names)


def _writer_connections() -> int:
    listed = stack.get("rabbitmq").ctl("list_connections", "-q", "--no-table-headers", "name")
    assert listed.returncode == 0, listed.stderr
    return listed.stdout.count("weather-writer")


async def test_failed_topology_declaration_closes_its_connection() -> None:
    """A tweet exchange that exists with another type fails the declaration (a queue with
    other arguments is used as it is, an exchange cannot be): every failed attempt must close
    the connection it opened, not leak it."""
    names = _private_topology()
    connection = await aio_pika.connect(settings.rabbitmq_url)
    async with connection:
        channel = await connection.channel()
        await channel.declare_exchange(
            names["rabbitmq_exchange"], aio_pika.ExchangeType.DIRECT, durable=True
        )
    writer = RabbitChunkWriter(settings.model_copy(update=names))
    before = _writer_connections()
    try:
        for _ in range(3):
            with pytest.raises(BrokerUnavailable):
                await writer.write(encode_chunks(TWEETS, settings.max_chunk_bytes), 10)
            assert not (await writer.health(timeout_s=10))["ok"]
        assert _writer_connections() == before
    finally:
        await writer.close()
        await _delete(names)


async def test_kafka_writer_one_record_per_country_chunk() -> None:
    writer = KafkaChunkWriter(settings)
    try:
        chunks = encode_chunks(TWEETS, settings.max_chunk_bytes)
        assert await writer.write(chunks, timeout_s=15) == 2
        assert (await writer.health(timeout_s=10))["ok"]
    finally:
        await writer.close()


async def test_tweet_queue_has_no_delivery_limit_that_could_drop_good_tweets() -> None:
    """A quorum queue with no x-delivery-limit on 3.x, an explicit -1 on RabbitMQ 4+."""
    from serve_app.brokers.rabbitmq import server_version, tweet_queue_arguments

    assert "x-delivery-limit" not in tweet_queue_arguments(settings, "3.10.8")
    assert tweet_queue_arguments(settings, "4.1.0")["x-delivery-limit"] == -1
    connection = await aio_pika.connect(settings.rabbitmq_url)
    async with connection:
        channel = await connection.channel()
        assert (await server_version(channel)).split(".")[0].isdigit()


async def test_a_tweet_queue_made_by_an_earlier_release_is_used_as_it_is() -> None:
    """Declaring over a queue with other arguments (an earlier release's delivery limit)
    would be refused: the writer takes it as it is and publishes."""
    names = _private_topology()
    connection = await aio_pika.connect(settings.rabbitmq_url)
    async with connection:
        channel = await connection.channel()
        await channel.declare_queue(
            names["rabbitmq_queue"],
            durable=True,
            arguments={"x-queue-type": "quorum", "x-delivery-limit": 3},
        )
    writer = RabbitChunkWriter(settings.model_copy(update=names))
    try:
        assert await writer.write(encode_chunks(TWEETS, settings.max_chunk_bytes), 10) == 2
    finally:
        await writer.close()
        await _delete(names)
