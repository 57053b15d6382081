"""Broker topology shared by the writers (who create it) and the consumers (who read it).

Kafka: the tweet topic (``kafka_partitions`` partitions, keyed by country) and a
dead-letter topic. RabbitMQ: a durable fanout exchange feeding a durable quorum queue with
no delivery limit, and a dead-letter exchange and queue; the consumers dead-letter poison
explicitly, with its reason.
"""

from __future__ import annotations

import contextlib

import aio_pika
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from serve_app.settings import Settings

POISON_REASON_HEADER = "x-poison-reason"


async def ensure_kafka_topics(settings: Settings) -> None:
    """Create the tweet and dead-letter topics if absent (as the seed's writers did)."""
    admin = AIOKafkaAdminClient(
        bootstrap_servers=settings.kafka_bootstrap_servers, request_timeout_ms=10_000
    )
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        wanted = {
            settings.kafka_topic: settings.kafka_partitions,
            settings.kafka_dead_letter_topic: 1,
        }
        missing = [
            NewTopic(name, num_partitions=partitions, replication_factor=1)
            for name, partitions in wanted.items()
            if name not in existing
        ]
        if missing:
            with contextlib.suppress(TopicAlreadyExistsError):  # another replica won the race
                await admin.create_topics(missing)
    finally:
        await admin.close()


def tweet_queue_arguments(settings: Settings, server_version: str) -> dict[str, object]:
    """A quorum queue that never dead-letters a good tweet: poison is dead-lettered by the
    consumers, explicitly, with its reason. A delivery limit would also count the
    redeliveries of good messages after consumer restarts (RabbitMQ 4 sets 20 by default:
    -1 turns it off; 3.x has none unless asked)."""
    arguments: dict[str, object] = {
        "x-queue-type": "quorum",
        "x-dead-letter-exchange": settings.rabbitmq_dead_letter_exchange,
    }
    major = server_version.split(".", 1)[0]
    if major.isdigit() and int(major) >= 4:
        arguments["x-delivery-limit"] = -1
    return arguments


async def server_version(channel: aio_pika.abc.AbstractChannel) -> str:
    """The broker's version, as it announced itself when the connection opened."""
    underlay = await channel.get_underlay_channel()
    version = underlay.connection.server_properties.get("version", b"")
    return version.decode() if isinstance(version, bytes) else str(version)


async def declare_rabbit_topology(
    channel: aio_pika.abc.AbstractChannel, settings: Settings
) -> tuple[aio_pika.abc.AbstractExchange, aio_pika.abc.AbstractQueue]:
    """Declare (idempotently) exchange, quorum queue and dead-letter path; return both ends.

    A tweet queue made by an earlier release (with ``x-delivery-limit: 3``) is used as it is
    (a declaration with other arguments would be refused); README "Migrating the tweet
    queue" says how to replace it.
    """
    dead_letters = await channel.declare_exchange(
        settings.rabbitmq_dead_letter_exchange, aio_pika.ExchangeType.FANOUT, durable=True
    )
    dlq = await channel.declare_queue(
        settings.rabbitmq_dead_letter_queue, durable=True, arguments={"x-queue-type": "quorum"}
    )
    await dlq.bind(dead_letters)
    exchange = await channel.declare_exchange(
        settings.rabbitmq_exchange, aio_pika.ExchangeType.FANOUT, durable=True
    )
    queue = await _tweet_queue(channel, settings)
    await queue.bind(exchange)
    return exchange, queue


async def _tweet_queue(
    channel: aio_pika.abc.AbstractChannel, settings: Settings
) -> aio_pika.abc.AbstractQueue:
    with contextlib.suppress(aio_pika.exceptions.ChannelPreconditionFailed):
        return await channel.declare_queue(
            settings.rabbitmq_queue,
            durable=True,
            arguments=tweet_queue_arguments(settings, await server_version(channel)),
        )
    # the refusal closed the channel: reopen it and take the queue as it is
    await channel.reopen()
    return await channel.declare_queue(settings.rabbitmq_queue, passive=True)
