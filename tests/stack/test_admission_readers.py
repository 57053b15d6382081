"""Integration: what admission control reads, from the real Kafka, RabbitMQ, Redis and Valkey
(no Ray): each reader on a topic or queue of the test's own, so its sizes, ages and limits
are known, and removed afterwards."""

from __future__ import annotations

import asyncio
import time
import uuid

import aio_pika
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from devstack.config import app_settings
from serve_app.brokers.kafka import KafkaProbe
from serve_app.brokers.rabbitmq import RabbitProbe
from serve_app.store.client import connect_redis, connect_valkey, read_memory

settings = app_settings()
RECORDS, RECORD_BYTES = 20, 4000
RETENTION_MS, RETENTION_BYTES, SEGMENT_BYTES = 3_600_000, 64 << 20, 16 << 20


@pytest.fixture
async def own_topic():
    """A topic of 2 partitions with known retention, and a group that never committed."""
    name = f"admission-test-{uuid.uuid4().hex[:10]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers)
    await admin.start()
    configs = {"retention.ms": str(RETENTION_MS), "retention.bytes": str(RETENTION_BYTES)}
    configs["segment.bytes"] = str(SEGMENT_BYTES)
    await admin.create_topics([NewTopic(name, 2, 1, topic_configs=configs)])
    try:
        yield admin, name
    finally:
        await admin.delete_topics([name])
        await admin.close()


async def _produce(topic: str, sizes: list[int]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers)
    await producer.start()
    try:
        for size in sizes:
            await producer.send_and_wait(topic, b"x" * size, key=b"GT", partition=0)
    finally:
        await producer.stop()


async def test_the_kafka_reader_measures_a_partition_and_reads_the_topics_retention(
    own_topic,
) -> None:
    admin, topic = own_topic
    sent_at = time.time()
    await _produce(topic, [RECORD_BYTES] * RECORDS)
    await asyncio.sleep(1.0)
    group = f"admission-test-{uuid.uuid4().hex[:10]}"
    probe_settings = settings.model_copy(
        update={"kafka_topic": topic, "kafka_consumer_group": group}
    )
    async with KafkaProbe(probe_settings, timeout_s=10) as probe:
        reading = await probe.backlog()
        [written, empty] = reading.parts
        assert (written.name, written.messages) == (f"{topic}/0", RECORDS)
        assert RECORDS * RECORD_BYTES <= written.unconsumed_bytes < RECORDS * (RECORD_BYTES + 200)
        assert written.oldest_age_s is not None
        assert 1.0 <= written.oldest_age_s <= time.time() - sent_at + 1
        assert (empty.messages, empty.unconsumed_bytes, empty.oldest_age_s) == (0, 0, None)
        assert reading.limits.age_s == RETENTION_MS / 1000
        assert reading.limits.part_bytes == RETENTION_BYTES - SEGMENT_BYTES

        lowered = {"retention.ms": "60000", "retention.bytes": str(32 << 20)}
        lowered["segment.bytes"] = str(SEGMENT_BYTES)
        [altered] = await admin.alter_configs(
            [ConfigResource(ConfigResourceType.TOPIC, topic, lowered)]
        )
        assert all(error == 0 for error, *_ in altered.resources)
        reading = await probe.backlog()  # an operator's change, seen at the next reading
        assert reading.limits.age_s == 60.0
        assert reading.limits.part_bytes == (32 << 20) - SEGMENT_BYTES


async def test_the_rabbitmq_reader_reads_bytes_and_limits_without_taking_a_message() -> None:
    queue = f"admission-test-{uuid.uuid4().hex[:10]}"
    arguments = {"x-queue-type": "quorum", "x-max-length-bytes": 10 << 20, "x-max-length": 500}
    connection = await aio_pika.connect(settings.rabbitmq_url)
    async with connection:
        channel = await connection.channel()
        declared = await channel.declare_queue(queue, durable=True, arguments=arguments)
        try:
            for _ in range(RECORDS):
                await channel.default_exchange.publish(aio_pika.Message(b"y" * 1000), queue)
            probe_settings = settings.model_copy(update={"rabbitmq_queue": queue})
            async with RabbitProbe(probe_settings, timeout_s=10) as probe:
                reading = await probe.backlog()
                # The management statistics refresh every 5 s, and a queue's count and bytes
                # need not arrive in the same refresh (seen under load: 20 messages, 0 bytes).
                for _ in range(120):
                    if reading.messages == RECORDS and reading.unconsumed_bytes == RECORDS * 1000:
                        break
                    await asyncio.sleep(0.5)
                    reading = await probe.backlog()
                [part] = reading.parts
                assert (part.name, part.messages, part.unconsumed_bytes) == (
                    queue,
                    RECORDS,
                    RECORDS * 1000,
                )
                assert reading.limits.part_bytes == 10 << 20
                assert reading.limits.part_messages == 500
                assert reading.limits.age_s is None and not reading.limits.ages_measured
                again = await probe.backlog()
            passive = await channel.declare_queue(queue, passive=True)
            assert passive.declaration_result.message_count == RECORDS  # nothing was taken
            assert again.messages == RECORDS
        finally:
            await declared.delete(if_unused=False, if_empty=False)


@pytest.mark.parametrize("connect", [connect_redis, connect_valkey])
async def test_a_store_memory_reading_is_its_info_memory(connect) -> None:
    client = connect(settings)
    try:
        memory = await read_memory(client)
        info = await client.info("memory")
    finally:
        await client.aclose()
    assert memory.used_bytes > 0
    assert abs(memory.used_bytes - int(info["used_memory"])) < 10 << 20
    assert memory.max_bytes == int(info["maxmemory"])
