"""The Benthos anchor against the local stack's Kafka and RabbitMQ (needs Go, or a build
cached in .devstack/benthos/bin; the first build takes minutes).

A 2-second single-tweet run must find every answered tweet in both brokers, and bad input
must be answered 400 and reach neither, while a good array is split into one persistent
message per tweet.
"""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from collections.abc import Iterator

import aio_pika
import pytest
from aiokafka import AIOKafkaConsumer

from devstack.go_toolchain import find_installed_go
from loadtest.benthos import build, run_anchor
from loadtest.benthos.config import AnchorNames
from loadtest.benthos.run import RunningAnchor, cleanup, running_anchor

GOOD = {"description": "Llueve", "country": "GT", "weather": "Lluvioso"}
# Not the benchmark's names: a bench run at the same time is neither counted nor purged.
TEST_NAME = "test-anchor-tweets"
NAMES = AnchorNames(topic=TEST_NAME, exchange=TEST_NAME, queue=TEST_NAME)


@pytest.fixture(scope="module")
def benthos_built() -> Iterator[None]:
    if not build.binary().exists() and find_installed_go() is None:
        pytest.skip("no Go installed (GO, PATH, /usr/local/go, .devstack/go) and no Benthos build")
    build.build()
    yield
    asyncio.run(cleanup(NAMES))


def _post(url: str, body: bytes) -> tuple[int, bytes]:
    request = urllib.request.Request(
        url, data=body, method="POST", headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


async def _kafka_values(anchor: RunningAnchor, limit: int) -> list[dict]:
    """The records written since the anchor started (bounded read, no consumer group)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=anchor.settings.kafka_bootstrap_servers, group_id=None
    )
    await consumer.start()
    try:
        consumer.assign(list(anchor.baseline))
        for tp, offset in anchor.baseline.items():
            consumer.seek(tp, offset)
        batches = await consumer.getmany(timeout_ms=5000, max_records=limit)
        return [json.loads(r.value) for records in batches.values() for r in records]
    finally:
        await consumer.stop()


async def _queued(anchor: RunningAnchor, limit: int) -> list[aio_pika.IncomingMessage]:
    """Up to ``limit`` messages of the anchor queue (acknowledged: the run purges anyway)."""
    connection = await aio_pika.connect(anchor.settings.rabbitmq_url, timeout=10)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(anchor.names.queue, passive=True)
        got = []
        for _ in range(limit):
            message = await queue.get(no_ack=True, fail=False, timeout=5)
            if message is None:
                break
            got.append(message)
        return got


@pytest.mark.timeout(1800)  # a cold build is minutes
def test_single_tweet_run_is_verified_in_both_brokers(benthos_built) -> None:
    result = run_anchor("single", duration_s=2.0, connections=16, names=NAMES)
    print(result)
    assert result.accepted > 0 and result.non_202 == 0 and result.socket_errors == 0
    assert result.kafka_records == result.accepted == result.rabbitmq_messages
    assert result.verified
    assert result.benthos_cpu_s > 0 and result.p99_ms >= result.p50_ms > 0


@pytest.mark.timeout(300)
async def test_bad_input_is_refused_and_arrays_split_per_tweet(benthos_built) -> None:
    async with running_anchor("stack-test", names=NAMES) as anchor:
        bad = [b"not json", b"[]", json.dumps([GOOD, {**GOOD, "country": "XX"}]).encode()]
        for body in bad:
            status, answer = await asyncio.to_thread(_post, anchor.url, body)
            assert status == 400, (body, status, answer)
        array = [{**GOOD, "id": f"stack-anchor-{i}"} for i in range(3)]
        status, answer = await asyncio.to_thread(_post, anchor.url, json.dumps(array).encode())
        assert (status, json.loads(answer)) == (202, {"accepted": 3})

        counts = await anchor.counts(3)
        assert (counts.kafka, counts.rabbitmq) == (3, 3)
        records = await _kafka_values(anchor, 10)
        assert sorted(r["id"] for r in records) == [t["id"] for t in array]
        messages = await _queued(anchor, 10)
        assert sorted(json.loads(m.body)["id"] for m in messages) == [t["id"] for t in array]
        assert {m.delivery_mode for m in messages} == {aio_pika.DeliveryMode.PERSISTENT}
