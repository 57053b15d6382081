"""Integration: REST and gRPC faces of the Gateway -> writers -> real Kafka and RabbitMQ.

Talks to the stack started by ``make up`` (real Kafka, RabbitMQ, Ray Serve) over 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator

import aio_pika
import grpc
import httpx
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from devstack import stack
from devstack.config import app_settings, stack_config
from serve_app.brokers.kafka import ensure_kafka_topics
from serve_app.brokers.rabbitmq import declare_rabbit_topology
from serve_app.ingest.grpc import ID_PREFIX_METADATA
from serve_app.model.codec import decode_message
from serve_app.pb.weather.v1 import weather_pb2, weather_pb2_grpc

settings = app_settings()

BASE = stack_config.serve_http_url
GRPC_TARGET = stack_config.serve_grpc_target
GRPC_METADATA = (("application", "ingest"),)
pytestmark = pytest.mark.usefixtures("devstack_serve")

TEXT = "Está lloviendo 🌧️ — «ñandú» 雨"


def tweet(**overrides: str) -> dict[str, str]:
    return {"description": TEXT, "country": "gt", "weather": "lluvioso", **overrides}


@pytest.fixture(scope="module")
def http() -> httpx.Client:
    with httpx.Client(base_url=BASE, timeout=30) as client:
        yield client


def _tweets(body: bytes) -> list[dict]:
    """The tweets of one broker message (a chunk of one country), as JSON objects."""
    decoded = decode_message(body)
    assert decoded.poison == []
    return [json.loads(t.to_json()) for t in decoded.tweets]


class BrokerTap:
    """Reads what reached both brokers: Kafka from saved end offsets, RabbitMQ via a tap queue."""

    def __init__(self) -> None:
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=settings.kafka_bootstrap_servers, enable_auto_commit=False
        )
        self.start_offsets: dict[TopicPartition, int] = {}

    async def start(self) -> None:
        await ensure_kafka_topics(settings)
        await self.consumer.start()
        admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers)
        await admin.start()
        try:
            [topic] = await admin.describe_topics([settings.kafka_topic])
        finally:
            await admin.close()
        partitions = sorted(p["partition"] for p in topic["partitions"])
        self.partitions = [TopicPartition(settings.kafka_topic, p) for p in partitions]
        assert self.partitions, f"topic {settings.kafka_topic} has no partitions"
        self.consumer.assign(self.partitions)
        self.connection = await aio_pika.connect_robust(settings.rabbitmq_url)
        self.channel = await self.connection.channel()
        exchange, _ = await declare_rabbit_topology(self.channel, settings)
        self.queue = await self.channel.declare_queue(exclusive=True, auto_delete=True)
        await self.queue.bind(exchange)
        await self.mark()

    async def mark(self) -> None:
        """Remember the current end of the topic; later reads start here."""
        self.start_offsets = await self.consumer.end_offsets(self.partitions)
        await self.queue.purge()

    async def kafka_since_mark(self) -> list[dict]:
        ends = await self.consumer.end_offsets(self.partitions)
        records: list[dict] = []
        for tp in self.partitions:
            if ends[tp] > self.start_offsets[tp]:
                self.consumer.seek(tp, self.start_offsets[tp])
        wanted = sum(ends[tp] - self.start_offsets[tp] for tp in self.partitions)
        deadline = time.monotonic() + 30
        while len(records) < wanted and time.monotonic() < deadline:
            batch = await self.consumer.getmany(timeout_ms=500)
            for tp, messages in batch.items():
                for m in messages:
                    if self.start_offsets[tp] <= m.offset < ends[tp]:
                        tweets = _tweets(m.value)
                        assert {t["country"] for t in tweets} == {m.key.decode()}
                        records.extend(tweets)
        return records

    async def kafka_moved(self) -> int:
        ends = await self.consumer.end_offsets(self.partitions)
        return sum(ends[tp] - self.start_offsets[tp] for tp in self.partitions)

    async def rabbit_since_mark(self, ids: list[str], wait_s: float = 30) -> list[dict]:
        """Messages on the tap queue until every id in ``ids`` arrived (bounded wait)."""
        bodies: list[dict] = []
        missing = set(ids)
        deadline = time.monotonic() + wait_s
        while missing and time.monotonic() < deadline:
            message = await self.queue.get(fail=False, no_ack=True)
            if message is None:
                await asyncio.sleep(0.05)
                continue
            tweets = _tweets(message.body)
            assert message.headers["x-tweets"] == len(tweets)
            missing.difference_update(t["id"] for t in tweets)
            bodies.extend(tweets)
        return bodies

    async def rabbit_depth(self) -> int:
        declared = await self.channel.declare_queue(self.queue.name, passive=True)
        return declared.declaration_result.message_count

    async def close(self) -> None:
        await self.consumer.stop()
        if hasattr(self, "connection"):
            await self.connection.close()


@pytest.fixture
async def tap() -> AsyncIterator[BrokerTap]:
    broker_tap = BrokerTap()
    try:
        await broker_tap.start()
        yield broker_tap
    finally:
        await broker_tap.close()


def assert_same(sent: list[dict], ids: list[str], received: list[dict]) -> None:
    by_id = {r["id"]: r for r in received}
    assert set(by_id) >= set(ids)
    for item, tweet_id in zip(sent, ids, strict=True):
        got = by_id[tweet_id]
        assert got["description"] == item["description"]
        assert got["country"] == item["country"].upper()
        assert got["weather"] == item["weather"].capitalize()
        assert got["accepted_at"]


async def test_single_tweet_reaches_both_brokers_unicode_intact(http, tap) -> None:
    sent = tweet()
    response = http.post("/input", json=sent)
    assert response.status_code == 202, response.text
    tweet_id = response.json()["id"]
    assert_same([sent], [tweet_id], await tap.kafka_since_mark())
    assert_same([sent], [tweet_id], await tap.rabbit_since_mark([tweet_id]))


async def test_client_ids_and_idempotency_key_are_kept(http, tap) -> None:
    own_id = f"client-{uuid.uuid4()}"
    response = http.post("/input", json=tweet(id=own_id))
    assert response.json()["id"] == own_id
    key = f"key-{uuid.uuid4()}"
    response = http.post("/input", json=tweet(), headers={"Idempotency-Key": key})
    assert response.status_code == 202 and response.json()["id"] == key
    ids = {r["id"] for r in await tap.kafka_since_mark()}
    assert {own_id, key} <= ids


async def test_batch_of_500_arrives_whole(http, tap) -> None:
    countries = ["GT", "SV", "HN", "MX", "CR"]
    weathers = ["Lluvioso", "Nubloso", "Soleado"]
    sent = [
        tweet(description=f"#{i} {TEXT}", country=countries[i % 5], weather=weathers[i % 3])
        for i in range(500)
    ]
    response = http.post("/input", json=sent)
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["accepted"] == 500 and len(set(body["ids"])) == 500
    assert_same(sent, body["ids"], await tap.kafka_since_mark())
    assert_same(sent, body["ids"], await tap.rabbit_since_mark(body["ids"]))


def _grpc_stub() -> tuple[grpc.Channel, weather_pb2_grpc.PublisherStub]:
    channel = grpc.insecure_channel(GRPC_TARGET)
    return channel, weather_pb2_grpc.PublisherStub(channel)


async def test_grpc_publish_and_publish_batch(tap) -> None:
    channel, stub = _grpc_stub()
    with channel:
        single = weather_pb2.Tweet(description=TEXT, country="sv", weather="SOLEADO")
        reply = stub.Publish(single, metadata=GRPC_METADATA, timeout=30)
        batch = weather_pb2.TweetBatch(
            tweets=[
                weather_pb2.Tweet(
                    id=f"g-{i}-{uuid.uuid4()}", description=TEXT, country="MX", weather="Nubloso"
                )
                for i in range(50)
            ]
        )
        replies = stub.PublishBatch(batch, metadata=GRPC_METADATA, timeout=30)
    assert reply.id and list(replies.ids) == [t.id for t in batch.tweets]
    sent = [{"description": TEXT, "country": "sv", "weather": "soleado"}] + [
        {"description": TEXT, "country": "MX", "weather": "nubloso"}
    ] * 50
    ids = [reply.id, *replies.ids]
    assert_same(sent, ids, await tap.kafka_since_mark())
    assert_same(sent, ids, await tap.rabbit_since_mark(ids))


async def test_grpc_invalid_argument_publishes_nothing(tap) -> None:
    channel, stub = _grpc_stub()
    with channel:
        bad = weather_pb2.TweetBatch(
            tweets=[
                weather_pb2.Tweet(description=TEXT, country="GT", weather="Soleado"),
                weather_pb2.Tweet(description=TEXT, country="XX", weather="Soleado"),
            ]
        )
        with pytest.raises(grpc.RpcError) as caught:
            stub.PublishBatch(bad, metadata=GRPC_METADATA, timeout=30)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "country" in caught.value.details() and "1" in caught.value.details()
    assert await tap.kafka_moved() == 0 and await tap.rabbit_depth() == 0


async def test_grpc_message_over_the_body_limit_is_refused(tap) -> None:
    """The gRPC proxy takes no message larger than a REST body may be (not Serve's 2 GiB):
    a valid batch of 1,000 tweets of 280 four-byte characters is over 1 MiB."""
    rain = "🌧" * 280
    tweets = [weather_pb2.Tweet(description=rain, country="GT", weather="Soleado")] * 1000
    batch = weather_pb2.TweetBatch(tweets=tweets)
    assert batch.ByteSize() > settings.max_body_bytes
    channel, stub = _grpc_stub()
    with channel, pytest.raises(grpc.RpcError) as caught:
        stub.PublishBatch(batch, metadata=GRPC_METADATA, timeout=30)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, caught.value
    assert await tap.kafka_moved() == 0


BAD_REQUESTS = [
    ("malformed", b'{"description": ', "application/json", 400, "malformed JSON"),
    ("not json", b"description=x", "text/plain", 415, "application/json"),
    (
        "too big",
        b"[" + b" " * (settings.max_body_bytes + 1) + b"]",
        "application/json",
        413,
        "limit",
    ),
    (
        "schema",
        json.dumps([tweet(), tweet(weather="Nevado")]).encode(),
        "application/json",
        422,
        "weather",
    ),
    ("empty batch", b"[]", "application/json", 422, "1 to"),
]


@pytest.mark.parametrize(("name", "body", "content_type", "status", "fragment"), BAD_REQUESTS)
async def test_bad_input_is_rejected_and_nothing_published(
    http, tap, name, body, content_type, status, fragment
) -> None:
    response = http.post("/input", content=body, headers={"content-type": content_type})
    assert response.status_code == status, response.text
    assert fragment in response.text
    assert "error" in response.json()
    if name == "schema":
        [detail] = response.json()["details"]
        assert detail["loc"] == [1, "weather"]
    await asyncio.sleep(0.5)
    assert await tap.kafka_moved() == 0 and await tap.rabbit_depth() == 0


def test_health_and_openapi(http) -> None:
    health = http.get("/health")
    assert health.status_code == 200, health.text
    assert health.json()["kafka"]["ok"] and health.json()["rabbitmq"]["ok"]
    spec = http.get("/openapi.json").json()
    assert "/input" in spec["paths"] and "TweetIn" in spec["components"]["schemas"]


def _wait_for_status(http: httpx.Client, path: str, status: int, post: bool) -> httpx.Response:
    deadline = time.monotonic() + 90
    while True:
        response = http.post(path, json=tweet()) if post else http.get(path)
        if response.status_code == status or time.monotonic() > deadline:
            return response
        time.sleep(1)


@pytest.mark.parametrize("broker", ["kafka", "rabbitmq"])
def test_broker_outage_gives_503_then_recovers_without_restart(http, broker: str) -> None:
    stack.stop(broker)
    try:
        refused = _wait_for_status(http, "/input", 503, post=True)
        assert refused.status_code == 503, refused.text
        assert refused.headers["retry-after"].isdigit()
        assert broker in refused.json()["error"] and refused.json()["ids"]
        health = http.get("/health")
        assert health.status_code == 503 and not health.json()[broker]["ok"]
        channel, stub = _grpc_stub()
        with channel, pytest.raises(grpc.RpcError) as caught:
            stub.Publish(weather_pb2.Tweet(description=TEXT, country="GT", weather="Soleado"),
                         metadata=GRPC_METADATA, timeout=30)  # fmt: skip
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert broker in caught.value.details()
        trailing = dict(caught.value.trailing_metadata() or ())
        assert trailing.get(ID_PREFIX_METADATA), trailing
    finally:
        stack.start(broker)
    assert _wait_for_status(http, "/input", 202, post=True).status_code == 202
    assert _wait_for_status(http, "/health", 200, post=False).status_code == 200
