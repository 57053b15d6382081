"""The anchor's own topic and quorum queue: create, count, purge, delete.

Counting is how a run is verified: every tweet Benthos answered 202 for must be a record
on the anchor's topic (end offsets after the run minus before it; the idempotent producer
writes no duplicates and no transaction markers) and a message in its quorum queue (which
has no consumer, so every message stays ready).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import aio_pika
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic, RecordsToDelete
from aiokafka.errors import TopicAlreadyExistsError

from loadtest.benthos.config import AnchorNames, kafka_seed_brokers, rabbitmq_url

if TYPE_CHECKING:
    from serve_app.settings import Settings

Offsets = dict[TopicPartition, int]
KAFKA_TIMEOUT_MS = 10_000
TOPIC_READY_S = 15.0
COUNT_TIMEOUT_S = 10.0
POLL_S = 0.2


@dataclass(frozen=True)
class BrokerCounts:
    """What a run left in the brokers: Kafka records and RabbitMQ messages."""

    kafka: int
    rabbitmq: int


def _admin(settings: Settings) -> AIOKafkaAdminClient:
    return AIOKafkaAdminClient(
        bootstrap_servers=kafka_seed_brokers(settings),
        client_id="bench-anchor",
        request_timeout_ms=KAFKA_TIMEOUT_MS,
    )


def _consumer(settings: Settings) -> AIOKafkaConsumer:
    """A group-less consumer: only for offsets, it never joins or commits anything."""
    return AIOKafkaConsumer(
        bootstrap_servers=kafka_seed_brokers(settings),
        client_id="bench-anchor",
        group_id=None,
        enable_auto_commit=False,
        request_timeout_ms=KAFKA_TIMEOUT_MS,
    )


async def _partitions(admin: AIOKafkaAdminClient, topic: str) -> list[TopicPartition]:
    """The topic's partitions with a leader (empty while it is still being created)."""
    described = await admin.describe_topics([topic])
    found = [d for d in described if d.get("topic") == topic and not d.get("error_code")]
    parts = found[0]["partitions"] if found else []
    return [TopicPartition(topic, p["partition"]) for p in parts if p.get("leader", -1) >= 0]


async def ensure_topic(settings: Settings, topic: str) -> list[TopicPartition]:
    """Create the topic (our partition count) if absent; wait (bounded) for its leaders."""
    admin = _admin(settings)
    await admin.start()
    try:
        if topic not in set(await admin.list_topics()):
            new = NewTopic(topic, num_partitions=settings.kafka_partitions, replication_factor=1)
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics([new])
        deadline = time.monotonic() + TOPIC_READY_S
        while True:
            parts = await _partitions(admin, topic)
            if parts or time.monotonic() >= deadline:
                break
            await asyncio.sleep(POLL_S)
    finally:
        await admin.close()
    if not parts:
        raise RuntimeError(f"topic {topic} has no partition leaders after {TOPIC_READY_S:.0f}s")
    return parts


async def end_offsets(settings: Settings, topic: str) -> Offsets:
    """Next offset of every partition of ``topic`` (what a count is taken against)."""
    admin = _admin(settings)
    await admin.start()
    try:
        parts = await _partitions(admin, topic)
    finally:
        await admin.close()
    consumer = _consumer(settings)
    await consumer.start()
    try:
        return dict(await consumer.end_offsets(parts))
    finally:
        await consumer.stop()


async def _connect(settings: Settings) -> aio_pika.abc.AbstractConnection:
    return await aio_pika.connect(rabbitmq_url(settings), timeout=10)


async def _declare(
    channel: aio_pika.abc.AbstractChannel, names: AnchorNames
) -> aio_pika.abc.AbstractQueue:
    """Durable fanout exchange -> durable quorum queue, as our pipeline's (idempotent)."""
    exchange = await channel.declare_exchange(
        names.exchange, aio_pika.ExchangeType.FANOUT, durable=True
    )
    queue = await channel.declare_queue(
        names.queue, durable=True, arguments={"x-queue-type": "quorum"}
    )
    await queue.bind(exchange)
    return queue


async def ensure_queue(settings: Settings, names: AnchorNames) -> int:
    """Declare exchange and quorum queue, purge what an earlier run left; return depth 0."""
    connection = await _connect(settings)
    async with connection:
        channel = await connection.channel()
        queue = await _declare(channel, names)
        await queue.purge()
        return await queue_depth(channel, names.queue)


async def queue_depth(channel: aio_pika.abc.AbstractChannel, queue: str) -> int:
    """Messages in the queue (a passive declare; no consumer, so all are ready)."""
    declared = await channel.declare_queue(queue, passive=True)
    result = declared.declaration_result
    return int(result.message_count or 0)


async def prepare(settings: Settings, names: AnchorNames) -> Offsets:
    """Before a run: topic and queue exist, the queue is empty; the topic's baseline."""
    await ensure_topic(settings, names.topic)
    await ensure_queue(settings, names)
    return await end_offsets(settings, names.topic)


async def count(settings: Settings, names: AnchorNames, baseline: Offsets) -> BrokerCounts:
    """Records written to the topic since ``baseline`` and messages in the queue."""
    after = await end_offsets(settings, names.topic)
    kafka = sum(offset - baseline.get(tp, 0) for tp, offset in after.items())
    connection = await _connect(settings)
    async with connection:
        channel = await connection.channel()
        depth = await queue_depth(channel, names.queue)
    return BrokerCounts(kafka=kafka, rabbitmq=depth)


async def count_settled(
    settings: Settings,
    names: AnchorNames,
    baseline: Offsets,
    expected: int,
    timeout_s: float = COUNT_TIMEOUT_S,
) -> BrokerCounts:
    """``count`` polled (bounded) until both reach ``expected`` and hold still: a quorum
    queue may report a confirmed message a moment later."""
    deadline = time.monotonic() + timeout_s
    previous: BrokerCounts | None = None
    while True:
        counts = await count(settings, names, baseline)
        done = counts.kafka >= expected and counts.rabbitmq >= expected
        if (done and counts == previous) or time.monotonic() >= deadline:
            return counts
        previous = counts
        await asyncio.sleep(POLL_S)


async def purge(settings: Settings, names: AnchorNames) -> None:
    """After a run: delete the topic's records up to now and purge the queue."""
    offsets = await end_offsets(settings, names.topic)
    admin = _admin(settings)
    await admin.start()
    try:
        wanted = {tp: RecordsToDelete(offset) for tp, offset in offsets.items() if offset > 0}
        if wanted:
            await admin.delete_records(wanted, timeout_ms=KAFKA_TIMEOUT_MS)
    finally:
        await admin.close()
    connection = await _connect(settings)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(names.queue, passive=True)
        await queue.purge()


async def delete(settings: Settings, names: AnchorNames) -> None:
    """Remove the anchor's topic, queue and exchange altogether (``--cleanup``)."""
    admin = _admin(settings)
    await admin.start()
    try:
        if names.topic in set(await admin.list_topics()):
            await admin.delete_topics([names.topic], timeout_ms=KAFKA_TIMEOUT_MS)
    finally:
        await admin.close()
    connection = await _connect(settings)
    async with connection:
        channel = await connection.channel()
        await channel.queue_delete(names.queue)
        await channel.exchange_delete(names.exchange)
