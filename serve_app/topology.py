"""Broker topology shared by the writers (who create it) and the consumers (who read it).

Kafka: the tweet topic (``kafka_partitions`` partitions, keyed by country) and a
dead-letter topic. RabbitMQ: a durable fanout exchange feeding a durable quorum queue
whose delivery limit dead-letters poison messages to a dead-letter exchange and queue.
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


async def declare_rabbit_topology(
    channel: aio_pika.abc.AbstractChannel, settings: Settings
) -> tuple[aio_pika.abc.AbstractExchange, aio_pika.abc.AbstractQueue]:
    """Declare (idempotently) exchange, quorum queue and dead-letter path; return both ends."""
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
    queue = await channel.declare_queue(
        settings.rabbitmq_queue,
        durable=True,
        arguments={
            "x-queue-type": "quorum",
            "x-delivery-limit": settings.rabbitmq_delivery_limit,
            "x-dead-letter-exchange": settings.rabbitmq_dead_letter_exchange,
        },
    )
    await queue.bind(exchange)
    return exchange, queue
