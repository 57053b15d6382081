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
from collections.abc import Awaitable, Callable
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from devstack import procs, stack
from devstack.config import app_settings, topology
from devstack.servers.replicated import _Sentinel
from devstack.waits import apoll, poll
from loadtest.chaos import network
from loadtest.chaos.replicated import isolation_of, member_at, member_total
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


async def write_until_done(store: TweetStore, batch: list[CountedTweet]) -> int:
    """Write one batch until the store acknowledges it durable; returns the failures seen."""
    for failures in range(ATTEMPTS):
        try:
            await store.record_batch(batch)
            return failures
        except Exception:  # noqa: BLE001 - a failover in progress: retry, as a consumer does
            await asyncio.sleep(0.1)
    raise RuntimeError(f"a batch was not acknowledged in {ATTEMPTS} attempts")


async def durable_writes(
    settings: Settings, store: str, fault: Callable[[str], Awaitable[dict[str, Any]]]
) -> dict[str, Any]:
    """Write ``BATCHES`` batches durably, retrying each as a consumer does; ``fault`` runs
    a third of the way in (given the primary's member name; what it returns is reported).
    Every acknowledged tweet must be counted once."""
    client = connect_store(settings, store)
    tweet_store = TweetStore(client, settings)
    sentinel = stack.get(f"{store}-sentinel-1")
    assert isinstance(sentinel, _Sentinel)
    before = int(await client.get(KEYS.total) or 0)
    run = uuid.uuid4().hex[:10]
    old = sentinel.primary()
    failures, acknowledged, seen = 0, 0, {}
    try:
        for batch in range(BATCHES):
            if batch == BATCHES // 3:
                seen = await fault(member_at(store, old))
            failures += await write_until_done(tweet_store, tweets(run, batch))
            acknowledged += 50
        counted = int(await client.get(KEYS.total) or 0) - before
    finally:
        await client.aclose()
    return {
        "acknowledged": acknowledged,
        "counted": counted,
        "failed_attempts": failures,
        "old_primary": old,
        "new_primary": sentinel.primary(),
        **seen,
    }


async def store_failover(settings: Settings, store: str) -> dict[str, Any]:
    """The primary lost with its AOF; started again once the Sentinels promoted the replica."""
    sentinel = stack.get(f"{store}-sentinel-1")
    assert isinstance(sentinel, _Sentinel)

    async def lose(primary: str) -> dict[str, Any]:
        old = sentinel.primary()
        await asyncio.to_thread(kill_and_wipe, primary)
        lost_at = time.monotonic()

        async def promoted() -> bool:
            return await asyncio.to_thread(sentinel.primary) not in (old, "?")

        await apoll(promoted, timeout=60, every=0.3)
        failover_s = time.monotonic() - lost_at
        await asyncio.to_thread(stack.start, primary)
        return {"failover_s": round(failover_s, 1)}

    return await durable_writes(settings, store, lose)


ISOLATED_S = 10.0
"""How long the primary stays cut off with the writer (the Sentinels' down-after is 3 s)."""


async def store_partition(settings: Settings, store: str) -> dict[str, Any]:
    """The primary cut off together with this writer from the replica and the Sentinels,
    which fail over on their side; healed after ``ISOLATED_S`` (in the background: the
    writer keeps retrying meanwhile). The old primary applies the batch it is sent but no
    replica acknowledges it, so the writer retries it until the new primary does; the old
    primary rejoins as a replica and drops what it held alone."""
    healed: list[asyncio.Task[dict[str, Any]]] = []

    async def heal_later(isolated: str, replica: str) -> dict[str, Any]:
        await asyncio.sleep(ISOLATED_S)
        old = await asyncio.to_thread(member_total, store, isolated)
        await asyncio.to_thread(network.heal)
        new = await asyncio.to_thread(member_total, store, replica)
        return {"only_on_the_old_primary": old - new}

    async def isolate(primary: str) -> dict[str, Any]:
        replica, rules = isolation_of(store, primary)
        await asyncio.to_thread(network.cut_by, rules)
        healed.append(asyncio.create_task(heal_later(primary, replica)))
        return {"isolated": primary}

    try:
        report = await durable_writes(settings, store, isolate)
        report.update(await healed[0])
    finally:
        await asyncio.to_thread(network.heal)
    report["old_primary_role"] = stack.get(report["isolated"]).role()
    return report


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
