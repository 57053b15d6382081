"""The replicated topology's short form, without Ray: each store loses its primary with its
AOF under writes, the Redis primary is partitioned away with its writer (a failover on the
other side, then the heal), and a Kafka broker loses its data directory under produce;
nothing acknowledged may be lost.

    DEVSTACK_TOPOLOGY=replicated DEVSTACK_DIR=... python -m loadtest.replicated_smoke

Run against replicated members already up (``python -m devstack up <members>``; the
test ``tests/stack/test_replicated.py`` starts them on ports of its own). Prints one JSON
object: per store the batches acknowledged (``WAITAOF 1 1``) and the total counted after
the failover, per Kafka the records acknowledged (acks=all) and the records read back.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import time
import uuid
from typing import Any

import redis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from devstack import procs, stack
from devstack.config import app_settings, topology
from devstack.servers.replicated import _Sentinel
from devstack.waits import apoll, poll
from loadtest.chaos import network
from serve_app.model.schema import Tweet
from serve_app.settings import Settings
from serve_app.store.client import TweetStore, connect_store
from serve_app.store.core import KEYS, CountedTweet

BATCHES = 60
"""Batches of 50 tweets written into each store, the primary lost a third of the way in."""
RECORDS = 3000
"""Records produced to Kafka, a broker lost a third of the way in."""
ATTEMPTS = 200
"""Tries of one batch or record at most (a failover takes a few seconds)."""
KEY = b"replicated-smoke-fingerprint-key!"


def kill_and_wipe(name: str, data: str = "data") -> None:
    """SIGKILL a member's whole session and remove its data directory: a lost machine."""
    server = stack.get(name)
    pid = server.pid()
    if pid is None:
        raise RuntimeError(f"{name} is not running")
    for member in {pid, *procs.session_members([pid])}:
        os.kill(member, signal.SIGKILL)
    poll(lambda: not procs.alive(pid), timeout=10, every=0.1)
    shutil.rmtree(server.dir / data, ignore_errors=True)


def tweets(run: str, batch: int) -> list[CountedTweet]:
    return [
        CountedTweet.of(
            Tweet(
                id=f"{run}-{batch}-{i}",
                description="Está lloviendo",
                country="GT",
                weather="Lluvioso",
                accepted_at=time.time(),
            ),
            KEY,
        )
        for i in range(50)
    ]


def member_at(store: str, address: str) -> str:
    """The member (``redis-1``...) listening on ``host:port``."""
    port = int(address.rsplit(":", 1)[1])
    for index in (1, 2):
        if stack.get(f"{store}-{index}").ports() == [port]:
            return f"{store}-{index}"
    raise RuntimeError(f"no {store} member on {address}")


async def write_until_done(store: TweetStore, batch: list[CountedTweet]) -> int:
    """Write one batch until the store acknowledges it durable; returns the failures seen."""
    for failures in range(ATTEMPTS):
        try:
            await store.record_batch(batch)
            return failures
        except Exception:  # noqa: BLE001 - a failover in progress: retry, as a consumer does
            await asyncio.sleep(0.1)
    raise RuntimeError(f"a batch was not acknowledged in {ATTEMPTS} attempts")


async def store_failover(settings: Settings, store: str) -> dict[str, Any]:
    """Write batches, lose the primary and its AOF a third of the way in, start it again
    once the Sentinels promoted the replica; every acknowledged tweet must be counted."""
    client = connect_store(settings, store)
    tweet_store = TweetStore(client, settings)
    sentinel = stack.get(f"{store}-sentinel-1")
    assert isinstance(sentinel, _Sentinel)
    before = int(await client.get(KEYS.total) or 0)
    run = uuid.uuid4().hex[:10]
    old = sentinel.primary()
    lost = member_at(store, old)
    failures, failover_s, acknowledged = 0, 0.0, 0
    for batch in range(BATCHES):
        if batch == BATCHES // 3:
            await asyncio.to_thread(kill_and_wipe, lost)
            lost_at = time.monotonic()

            async def promoted() -> bool:
                return await asyncio.to_thread(sentinel.primary) not in (old, "?")

            await apoll(promoted, timeout=60, every=0.3)
            failover_s = time.monotonic() - lost_at
            await asyncio.to_thread(stack.start, lost)
        failures += await write_until_done(tweet_store, tweets(run, batch))
        acknowledged += 50
    counted = int(await client.get(KEYS.total) or 0) - before
    await client.aclose()
    return {
        "acknowledged": acknowledged,
        "counted": counted,
        "failed_attempts": failures,
        "old_primary": old,
        "new_primary": sentinel.primary(),
        "failover_s": round(failover_s, 1),
    }


ISOLATED_S = 10.0
"""How long the primary stays cut off with the writer (the Sentinels' down-after is 3 s)."""


def store_total(store: str, member: str, settings: Settings) -> int:
    """``tweets:total`` as one member holds it, read directly (0 when it does not answer)."""
    password = getattr(settings, f"{store}_password").get_secret_value() or None
    client = redis.Redis(port=stack.get(member).ports()[0], password=password, socket_timeout=2)
    try:
        return int(client.get(KEYS.total) or 0)
    except redis.RedisError:
        return 0
    finally:
        client.close()


async def store_partition(settings: Settings, store: str) -> dict[str, Any]:
    """Write batches; a third of the way in, cut the primary off together with this writer
    from the replica and the Sentinels, which fail over on their side, and heal after
    ``ISOLATED_S``. The old primary applies the batch it is sent but no replica acknowledges
    it, so the writer retries it until the new primary does; the old primary rejoins as a
    replica and drops what it held alone. Every batch acknowledged is counted once."""
    client = connect_store(settings, store)
    tweet_store = TweetStore(client, settings)
    sentinel = stack.get(f"{store}-sentinel-1")
    assert isinstance(sentinel, _Sentinel)
    before = int(await client.get(KEYS.total) or 0)
    run = uuid.uuid4().hex[:10]
    old = sentinel.primary()
    isolated = member_at(store, old)
    replica = next(m for m in (f"{store}-1", f"{store}-2") if m != isolated)
    others = [stack.get(replica).ports()[0]]
    others += [stack.get(f"{store}-sentinel-{i}").ports()[0] for i in (1, 2, 3)]
    rules = network.isolation_rules(stack.get(isolated).ports()[0], others)
    at_heal: dict[str, int] = {}

    async def heal_later() -> None:
        await asyncio.sleep(ISOLATED_S)
        at_heal["old"] = await asyncio.to_thread(store_total, store, isolated, settings)
        await asyncio.to_thread(network.heal)
        at_heal["new"] = await asyncio.to_thread(store_total, store, replica, settings)

    failures, acknowledged = 0, 0
    healer: asyncio.Task[None] | None = None
    try:
        for batch in range(BATCHES):
            if batch == BATCHES // 3:
                await asyncio.to_thread(network.cut_by, rules)
                healer = asyncio.create_task(heal_later())
            failures += await write_until_done(tweet_store, tweets(run, batch))
            acknowledged += 50
        if healer is not None:
            await healer
    finally:
        await asyncio.to_thread(network.heal)
    counted = int(await client.get(KEYS.total) or 0) - before
    await client.aclose()
    return {
        "acknowledged": acknowledged,
        "counted": counted,
        "failed_attempts": failures,
        "old_primary": old,
        "new_primary": sentinel.primary(),
        "old_primary_role": stack.get(isolated).role(),
        "only_on_the_old_primary": at_heal["old"] - at_heal["new"],
    }


async def kafka_broker_loss(settings: Settings) -> dict[str, Any]:
    """Produce (acks=all) to a topic of replication factor 3 and min ISR 2, lose broker 1
    with its data a third of the way in, start it empty; read every record back."""
    topic = f"replicated-smoke-{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers)
    await admin.start()
    try:
        await admin.create_topics(
            [NewTopic(topic, 2, 3, topic_configs={"min.insync.replicas": "2"})]
        )
    finally:
        await admin.close()
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap_servers, acks="all", enable_idempotence=True
    )
    await producer.start()
    acknowledged: set[str] = set()
    failures = 0
    try:
        for n in range(RECORDS):
            if n == RECORDS // 3:
                await asyncio.to_thread(kill_and_wipe, "kafka-1")
                await asyncio.sleep(2)
                await asyncio.to_thread(stack.start, "kafka-1")
            value = f"{topic}-{n}"
            for _ in range(ATTEMPTS):
                try:
                    await asyncio.wait_for(producer.send_and_wait(topic, value.encode()), 10)
                    acknowledged.add(value)
                    break
                except Exception:  # noqa: BLE001 - leader moving: retry, as the writer does
                    failures += 1
                    await asyncio.sleep(0.1)
            else:
                raise RuntimeError(f"record {n} not acknowledged in {ATTEMPTS} attempts")
    finally:
        await producer.stop()
    read = await read_back(settings, topic, len(acknowledged))
    return {
        "acknowledged": len(acknowledged),
        "read_back": len(read & acknowledged),
        "failed_attempts": failures,
    }


async def read_back(settings: Settings, topic: str, expected: int) -> set[str]:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap_servers, auto_offset_reset="earliest"
    )
    await consumer.start()
    seen: set[str] = set()
    try:
        consumer.assign([TopicPartition(topic, p) for p in range(2)])
        deadline = time.monotonic() + 60
        while len(seen) < expected and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=1000)
            for records in batches.values():
                seen.update(r.value.decode() for r in records)
    finally:
        await consumer.stop()
    return seen


async def smoke() -> dict[str, Any]:
    if topology() != "replicated":
        raise RuntimeError("needs DEVSTACK_TOPOLOGY=replicated and its members up")
    settings = app_settings()
    report: dict[str, Any] = {}
    for store in ("redis", "valkey"):
        report[store] = await store_failover(settings, store)
    report["redis_partition"] = await store_partition(settings, "redis")
    report["kafka"] = await kafka_broker_loss(settings)
    return report


def main() -> None:
    print(json.dumps(asyncio.run(smoke())))


if __name__ == "__main__":
    main()
