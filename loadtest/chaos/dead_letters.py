"""The dead-letter sinks fail for a while under id conflicts and poison: the RabbitMQ
dead-letter queue is unbound from its exchange (every `mandatory` publish comes back) and
the Kafka dead-letter topic refuses every write at once (its `max.message.bytes` below any
record: a definite refusal, never a write that lands after the send timed out). The letters
must wait in the stores' outboxes (visible as parked), survive
the consumer actors killed while they wait, and go out once each when the sinks are back:
the round's judge counts the dead letters exactly."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import aio_pika
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from devstack.waits import apoll
from loadtest.chaos import hostile
from loadtest.chaos.core import Context, settings, snapshot
from loadtest.chaos.processes import _consumer_pids, poison, publish_kafka, publish_rabbitmq

OUTAGE_S = 12.0
"""How long the sinks stay broken once the letters wait in the outboxes."""
PARKED_WAIT_S = 60.0
"""Longest wait for the round's first letters to show as parked in both stores."""
DLQ_TOPIC = ConfigResource(ConfigResourceType.TOPIC, settings.kafka_dead_letter_topic)


async def _admin() -> AIOKafkaAdminClient:
    admin = AIOKafkaAdminClient(
        bootstrap_servers=settings.kafka_bootstrap_servers, request_timeout_ms=10_000
    )
    await admin.start()
    return admin


async def kafka_dead_letter_overrides() -> dict[str, str]:
    """The dead-letter topic's own settings (what the round must put back)."""
    admin = await _admin()
    try:
        [described] = await admin.describe_configs([DLQ_TOPIC])
    finally:
        await admin.close()
    [(_, _, _, _, entries)] = described.resources
    return {e[0]: e[1] for e in entries if e[3] == 1 and e[1] is not None}


async def set_kafka_dead_letter_overrides(configs: dict[str, str]) -> None:
    """Replace the dead-letter topic's own settings (AlterConfigs sets them all)."""
    admin = await _admin()
    try:
        resource = ConfigResource(ConfigResourceType.TOPIC, DLQ_TOPIC.name, configs)
        for response in await admin.alter_configs([resource]):
            for code, message, *_ in response.resources:
                assert code == 0, f"AlterConfigs {DLQ_TOPIC.name}: {code} {message}"
    finally:
        await admin.close()


async def bind_rabbitmq_dead_letters(bound: bool) -> None:
    """Bind (or unbind) the dead-letter queue to its exchange."""
    connection = await aio_pika.connect(settings.rabbitmq_url, timeout=10)
    async with connection:
        channel = await connection.channel()
        exchange = await channel.get_exchange(settings.rabbitmq_dead_letter_exchange)
        queue = await channel.get_queue(settings.rabbitmq_dead_letter_queue)
        if bound:
            await queue.bind(exchange)
        else:
            await queue.unbind(exchange)


@contextlib.asynccontextmanager
async def sinks_mended_afterwards(ctx: Context) -> AsyncIterator[None]:
    """The round's setup: two victims counted in both stores (their ids the collisions
    reuse), and whatever the fault breaks put back, even when the round fails."""
    original = await kafka_dead_letter_overrides()
    ctx.notes["kafka_dead_letter_overrides"] = original
    async with hostile.victims(ctx):
        try:
            yield
        finally:
            await mend_sinks(original)


async def mend_sinks(kafka_overrides: dict[str, str]) -> None:
    await bind_rabbitmq_dead_letters(True)
    await set_kafka_dead_letter_overrides(kafka_overrides)


async def break_sinks(kafka_overrides: dict[str, str]) -> None:
    await set_kafka_dead_letter_overrides({**kafka_overrides, "max.message.bytes": "1"})
    await bind_rabbitmq_dead_letters(False)


async def collisions(ctx: Context) -> None:
    """One tweet that wins a victim's id and one that loses the other's, on both brokers:
    one id-conflict letter each, per store."""
    now = datetime.now(UTC).isoformat()
    key = settings.content_key()
    bodies = [
        hostile.chunk({**hostile.colliding(victim, smaller, key), "accepted_at": now})
        for victim, smaller in zip(ctx.notes["victims"], (True, False), strict=True)
    ]
    await publish_kafka([(body, []) for body in bodies])
    await publish_rabbitmq([aio_pika.Message(body) for body in bodies])
    ctx.add_poison(kafka=len(bodies), rabbitmq=len(bodies))


async def parked() -> dict[str, int]:
    stats, _ = await snapshot()
    return {name: int(s["parked_dead_letters"]) for name, s in stats.items()}


async def none_parked(timeout_s: float = 60.0) -> dict[str, int]:
    """Wait (bounded) until no dead letter waits in either store's outbox."""
    return await apoll(parked, lambda now: not any(now.values()), timeout=timeout_s, every=0.5)


async def dead_letter_sink_outage(ctx: Context) -> None:
    """Both sinks broken; poison and conflicts sent; the letters seen waiting in both
    outboxes; the consumer actors killed (-9) while they wait; more poison; sinks back."""
    await break_sinks(ctx.notes["kafka_dead_letter_overrides"])
    try:
        await poison(ctx)
        await collisions(ctx)
        want = {"redis": ctx.poison["kafka"], "valkey": ctx.poison["rabbitmq"]}

        def all_waiting(now: dict[str, int]) -> bool:
            return all(now[store] >= count for store, count in want.items())

        waiting = await apoll(parked, all_waiting, timeout=PARKED_WAIT_S, every=0.5)
        ctx.notes["parked_during_outage"] = waiting
        ctx.checks["letters_waited_in_the_outbox"] = all_waiting(waiting)
        pids = _consumer_pids()
        for pid in pids.values():
            os.kill(pid, signal.SIGKILL)
        ctx.notes["killed_pids"] = pids
        await poison(ctx)
        await asyncio.sleep(OUTAGE_S)
    finally:
        await mend_sinks(ctx.notes["kafka_dead_letter_overrides"])
    ctx.notes["outage_s"] = OUTAGE_S
