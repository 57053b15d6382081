"""Dead letters exactly once against the real servers: the outbox scripts on Redis and
Valkey (in a database of their own, so the running consumers never see these letters), a
RabbitMQ publish no queue takes and one a full queue refuses, and the Kafka dead-letter
topic's retention (on topics of the test's own, deleted afterwards)."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import aio_pika
import pytest
import redis.asyncio as aioredis
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from redis.asyncio.sentinel import Sentinel

from devstack.config import app_settings
from serve_app.brokers.base import Envelope
from serve_app.brokers.kafka import ensure_kafka_topics, kafka_connection, topic_overrides
from serve_app.brokers.rabbitmq import RabbitDeadLetters, dead_letter_queue_arguments
from serve_app.consume.core import ID_CONFLICT, outbox_envelope
from serve_app.model.schema import Tweet
from serve_app.store.client import TweetStore
from serve_app.store.core import KEYS, CountedTweet, LetterOrigins, PoisonLetter

settings = app_settings()
TEST_DB = 15
"""A database of the real server no consumer reads (they use 0)."""


def counted(tweet_id: str, text: str) -> CountedTweet:
    tweet = Tweet(id=tweet_id, description=text, country="AQ", weather="Soleado",
                  accepted_at=datetime.now(UTC))  # fmt: skip
    return CountedTweet.of(tweet, settings.content_key())


@contextlib.asynccontextmanager
async def isolated_store(name: str) -> AsyncIterator[TweetStore]:
    """The real ``name`` server (its primary, on the replicated topology), in database
    :data:`TEST_DB`, emptied before and after."""
    login = {
        "username": getattr(settings, f"{name}_username") or None,
        "password": getattr(settings, f"{name}_password").get_secret_value() or None,
        "db": TEST_DB,
        "decode_responses": True,
    }
    if sentinels := settings.sentinels(name):
        master = getattr(settings, f"{name}_sentinel_master")
        client = Sentinel(sentinels).master_for(master, **login)
    else:
        host, port = getattr(settings, f"{name}_host"), getattr(settings, f"{name}_port")
        client = aioredis.Redis(host=host, port=port, **login)
    await client.flushdb()
    try:
        yield TweetStore(client, settings)
    finally:
        await client.flushdb()
        await client.aclose()


@pytest.mark.parametrize("name", ["redis", "valkey"])
async def test_the_outbox_keeps_each_letter_once_until_it_is_removed(name: str) -> None:
    async with isolated_store(name) as store:
        a, b = counted("o-1", "sol"), counted("o-1", "granizo")
        winner, loser = (a, b) if a.fingerprint < b.fingerprint else (b, a)
        template = Envelope.of(b"", ID_CONFLICT, None, [("x-origin", "m2")]).to_json()
        origins = LetterOrigins((template,), (0,))
        await store.record_batch([winner])
        first = await store.record_batch([loser], origins)
        again = await store.record_batch([loser], origins)  # the retry after a lost answer
        assert first.refused == again.refused == (0,)
        entry = Envelope.of(b"\xff", "undecodable").to_json()
        poison = PoisonLetter("t/0/7:ab:0", "poison:t/0/7:ab:0", entry)
        assert await store.put_poison([poison]) == 1
        assert await store.put_poison([poison]) == 0  # the message redelivered
        # a message without identity (RabbitMQ): identical ones seen for the first time are
        # each a letter; a redelivery finds the mark
        first = PoisonLetter("cd:0", "poison:cd:0:one", entry, always=True)
        second = PoisonLetter("cd:0", "poison:cd:0:two", entry, always=True)
        redelivery = PoisonLetter("cd:0", "poison:cd:0", entry)
        assert await store.put_poison([first, second, redelivery]) == 2
        assert await store.remove_letters([first.id, second.id]) == 2  # the loser, the poison
        legacy = Envelope.of(b"old", "invalid tweet").to_json()
        await store.client.rpush(KEYS.parked_dead_letters, legacy)
        assert (await store.read_stats())["parked_dead_letters"] == 3
        letters = await store.outbox(100)
        assert [letter.id for letter in letters][:2] == [
            f"o-1:{loser.fingerprint}",
            poison.id,
        ] and letters[2].id.startswith("parked:")
        envelopes = [outbox_envelope(letter.entry) for letter in letters]
        assert envelopes[0].body.decode() == loser.body  # the loser as it came
        assert (envelopes[0].id, dict(envelopes[0].headers)) == ("o-1", {"x-origin": "m2"})
        assert [e.body for e in envelopes[1:]] == [b"\xff", b"old"]
        assert await store.client.llen(KEYS.parked_dead_letters) == 0
        assert await store.remove_letters([letter.id for letter in letters]) == 0
        assert await store.outbox(100) == []
        assert (await store.read_stats())["parked_dead_letters"] == 0


@pytest.mark.parametrize("name", ["redis", "valkey"])
async def test_one_consumer_at_a_time_holds_the_drainer_lease(name: str) -> None:
    async with isolated_store(name) as store:
        assert await store.claim_drainer("consumer-0", 0.5)
        assert not await store.claim_drainer("consumer-1", 0.5)
        assert await store.claim_drainer("consumer-0", 0.5)  # renewed
        await asyncio.sleep(0.7)
        assert await store.claim_drainer("consumer-1", 0.5)  # the holder went away


@contextlib.asynccontextmanager
async def rabbit_channel() -> AsyncIterator[aio_pika.abc.AbstractChannel]:
    connection = await aio_pika.connect(settings.rabbitmq_url, timeout=10)
    async with connection:
        yield await connection.channel()


async def test_a_rabbitmq_dead_letter_no_queue_takes_is_a_failure() -> None:
    """An exchange with no queue bound (a deleted binding): today's broker drops such a
    publish unless it is mandatory; the sink must see the return and fail."""
    exchange_name = f"test-dlx-{uuid.uuid4().hex[:8]}"
    async with rabbit_channel() as channel:
        exchange = await channel.declare_exchange(
            exchange_name, aio_pika.ExchangeType.FANOUT, auto_delete=False
        )
        sink = RabbitDeadLetters(
            settings.model_copy(update={"rabbitmq_dead_letter_exchange": exchange_name}),
            "test-unroutable",
        )
        try:
            with pytest.raises(aio_pika.exceptions.PublishError):
                await sink.send([Envelope.of(b"\xff", "undecodable", "letter-1")])
            queue = await channel.declare_queue(exclusive=True)
            await queue.bind(exchange)
            await sink.send([Envelope.of(b"\xff", "undecodable", "letter-1")])
            message = await queue.get(timeout=5)
            assert message.body == b"\xff" and message.message_id == "letter-1"
        finally:
            await sink.close()
            await exchange.delete()


async def test_a_full_dead_letter_queue_refuses_the_publish() -> None:
    """``x-overflow: reject-publish``: once the bound is reached the broker nacks, so the
    letter stays in the outbox instead of filling the broker's disk (a quorum queue refuses
    once it is over its limit: the letter that reaches it may still go in)."""
    name = f"test-dlq-{uuid.uuid4().hex[:8]}"
    small = settings.model_copy(
        update={"rabbitmq_dead_letter_exchange": name, "rabbitmq_dead_letter_max_length": 1}
    )
    async with rabbit_channel() as channel:
        exchange = await channel.declare_exchange(name, aio_pika.ExchangeType.FANOUT)
        queue = await channel.declare_queue(
            name, durable=True, arguments=dead_letter_queue_arguments(small)
        )
        await queue.bind(exchange)
        sink = RabbitDeadLetters(small, "test-full")
        try:
            taken = 0
            with pytest.raises(aio_pika.exceptions.DeliveryError):
                for n in range(5):
                    await sink.send([Envelope.of(f"letter {n}".encode(), "undecodable")])
                    taken += 1
            assert 1 <= taken <= 2
        finally:
            await sink.close()
            await queue.delete(if_unused=False, if_empty=False)
            await exchange.delete()


async def test_the_kafka_dead_letter_topic_keeps_letters_7_days() -> None:
    """Created with retention.ms, and an existing topic's shorter retention raised (its
    other topic settings kept)."""
    tag = uuid.uuid4().hex[:8]
    own = settings.model_copy(
        update={
            "kafka_topic": f"test-tweets-{tag}",
            "kafka_dead_letter_topic": f"test-dlq-{tag}",
            "kafka_partitions": 1,
        }
    )
    admin = AIOKafkaAdminClient(**kafka_connection(own), request_timeout_ms=10_000)
    await admin.start()
    resource = ConfigResource(ConfigResourceType.TOPIC, own.kafka_dead_letter_topic)
    try:
        await ensure_kafka_topics(own)
        [described] = await admin.describe_configs([resource])
        assert topic_overrides(described)["retention.ms"] == "604800000"
        one_day = {"retention.ms": "86400000", "max.message.bytes": "2000000"}
        await admin.alter_configs(
            [ConfigResource(ConfigResourceType.TOPIC, resource.name, one_day)]
        )
        await ensure_kafka_topics(own)
        [described] = await admin.describe_configs([resource])
        overrides = topic_overrides(described)
        assert overrides["retention.ms"] == "604800000"
        assert overrides["max.message.bytes"] == "2000000"
    finally:
        await admin.delete_topics([own.kafka_topic, own.kafka_dead_letter_topic])
        await admin.close()
