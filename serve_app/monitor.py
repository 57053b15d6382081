"""Backlog and health readings of the brokers and stores, for the dashboard and the tooling.

The dashboard polls every second, so each probe keeps its client open between reads
(reconnecting only after a failure) and bounds every read with a timeout. A probe's
``read()`` never raises: a down broker or store becomes ``{"ok": False, "detail": ...}``.
``kafka_lag`` / ``rabbit_depth`` are one-shot wrappers for the load tests and tests.
Ray-free: nothing here imports Ray.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from typing import Any, Self, TypedDict

import aio_pika
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from serve_app.settings import Settings, get_settings

READ_TIMEOUT_S = 2.0
"""Upper bound of one dashboard read; a slower broker or store is reported as down."""
TOOLING_TIMEOUT_S = 10.0
"""Upper bound of a one-shot reading: the benchmark reads while the brokers are busy."""


class Health(TypedDict):
    ok: bool
    detail: str


def healthy(detail: str = "ok") -> Health:
    return {"ok": True, "detail": detail}


def failed(exc: BaseException) -> Health:
    """An error as the dashboard shows it: the type alone when the message is empty."""
    if isinstance(exc, TimeoutError):
        return {"ok": False, "detail": f"no answer within {READ_TIMEOUT_S:g} s"}
    text = str(exc) or type(exc).__name__
    return {"ok": False, "detail": f"{type(exc).__name__}: {text}"[:300]}


class KafkaProbe:
    """Consumer-group lag of the tweet topic and the size of the dead-letter topic.

    An admin client reads topic metadata (the health round trip) and the group's
    committed offsets; a group-less consumer reads beginning/end offsets.
    """

    def __init__(self, settings: Settings, timeout_s: float = READ_TIMEOUT_S) -> None:
        self.settings = settings
        self.timeout_s = timeout_s
        self._admin: AIOKafkaAdminClient | None = None
        self._offsets: AIOKafkaConsumer | None = None

    async def _clients(self) -> tuple[AIOKafkaAdminClient, AIOKafkaConsumer]:
        """The two clients, started on first use (aiokafka reconnects them afterwards)."""
        if self._admin is None or self._offsets is None:
            servers = self.settings.kafka_bootstrap_servers
            admin = AIOKafkaAdminClient(bootstrap_servers=servers, client_id="weather-monitor")
            offsets = AIOKafkaConsumer(
                bootstrap_servers=servers, client_id="weather-monitor", enable_auto_commit=False
            )
            try:
                await admin.start()
                await offsets.start()
            except BaseException:
                await _close_quietly(admin.close(), offsets.stop())
                raise
            self._admin, self._offsets = admin, offsets
        return self._admin, self._offsets

    async def _partitions(self, admin: AIOKafkaAdminClient) -> dict[str, list[TopicPartition]]:
        """Partitions of the tweet and dead-letter topics (a missing topic has none)."""
        topics = [self.settings.kafka_topic, self.settings.kafka_dead_letter_topic]
        described = await admin.describe_topics(topics)
        found = {
            t["topic"]: [TopicPartition(t["topic"], p["partition"]) for p in t["partitions"]]
            for t in described
            if not t["error_code"]
        }
        return {topic: sorted(found.get(topic, [])) for topic in topics}

    async def _lag(
        self, admin: AIOKafkaAdminClient, offsets: AIOKafkaConsumer, tps: list[TopicPartition]
    ) -> int:
        if not tps:
            return 0
        committed = await admin.list_consumer_group_offsets(
            self.settings.kafka_consumer_group, partitions=tps
        )
        ends = await offsets.end_offsets(tps)
        starts = await offsets.beginning_offsets(tps)
        return sum(_partition_lag(ends[tp], starts[tp], committed.get(tp)) for tp in tps)

    async def lag(self) -> int:
        """Messages of the tweet topic the consumer group has not committed yet."""
        async with asyncio.timeout(self.timeout_s):
            admin, offsets = await self._clients()
            tps = (await self._partitions(admin))[self.settings.kafka_topic]
            return await self._lag(admin, offsets, tps)

    async def read(self) -> dict[str, Any]:
        """Health, lag and dead letters in one bounded round; errors become the health."""
        try:
            async with asyncio.timeout(self.timeout_s):
                admin, offsets = await self._clients()
                partitions = await self._partitions(admin)
                lag = await self._lag(admin, offsets, partitions[self.settings.kafka_topic])
                dead = partitions[self.settings.kafka_dead_letter_topic]
                ends = await offsets.end_offsets(dead) if dead else {}
                starts = await offsets.beginning_offsets(dead) if dead else {}
        except Exception as exc:  # started clients stay: aiokafka reconnects them itself
            return {"health": failed(exc), "lag": None, "dead_letters": None}
        partition_count = len(partitions[self.settings.kafka_topic])
        return {
            "health": healthy(f"{partition_count} partitions"),
            "lag": lag,
            "dead_letters": sum(ends[tp] - starts[tp] for tp in dead),
        }

    async def close(self) -> None:
        admin, offsets = self._admin, self._offsets
        self._admin = self._offsets = None
        await _close_quietly(admin.close() if admin else None, offsets.stop() if offsets else None)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


def _partition_lag(end: int, start: int, committed: Any) -> int:
    """End minus the group's position; a partition never committed counts from its start."""
    position = committed.offset if committed is not None and committed.offset >= 0 else start
    return max(0, end - max(position, start))


class RabbitProbe:
    """Ready messages in the tweet queue and in the dead-letter queue (passive declares)."""

    def __init__(self, settings: Settings, timeout_s: float = READ_TIMEOUT_S) -> None:
        self.settings = settings
        self.timeout_s = timeout_s
        self._connection: aio_pika.abc.AbstractConnection | None = None
        self._channel: aio_pika.abc.AbstractChannel | None = None

    async def _open_channel(self) -> aio_pika.abc.AbstractChannel:
        """The open channel; a closed connection or channel (e.g. 404) is reopened."""
        if self._connection is None or self._connection.is_closed:
            await self.close()
            self._connection = await aio_pika.connect(
                self.settings.rabbitmq_url,
                timeout=self.timeout_s,
                client_properties={"connection_name": "weather-monitor"},
            )
        if self._channel is None or self._channel.is_closed:
            self._channel = await self._connection.channel(publisher_confirms=False)
        return self._channel

    async def _ready(self, queue: str) -> int:
        channel = await self._open_channel()
        declared = await channel.declare_queue(queue, passive=True)
        return int(declared.declaration_result.message_count or 0)

    async def depth(self) -> int:
        """Messages ready in the tweet queue (deliveries not yet acked are not in it)."""
        async with asyncio.timeout(self.timeout_s):
            return await self._ready(self.settings.rabbitmq_queue)

    async def read(self) -> dict[str, Any]:
        """Health, depth and dead letters in one bounded round; errors become the health."""
        try:
            async with asyncio.timeout(self.timeout_s):
                depth = await self._ready(self.settings.rabbitmq_queue)
                dead = await self._ready(self.settings.rabbitmq_dead_letter_queue)
        except Exception as exc:
            await self.close()
            return {"health": failed(exc), "depth": None, "dead_letters": None}
        return {"health": healthy(), "depth": depth, "dead_letters": dead}

    async def close(self) -> None:
        connection = self._connection
        self._connection = self._channel = None
        if connection is not None:
            await _close_quietly(connection.close())

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


class StoreProbe:
    """PING plus memory and ops/s of one Redis-protocol store, on the store's own client."""

    def __init__(self, client: aioredis.Redis, timeout_s: float = READ_TIMEOUT_S) -> None:
        self.client = client
        self.timeout_s = timeout_s

    async def read(self) -> dict[str, Any]:
        try:
            async with asyncio.timeout(self.timeout_s):
                await self.client.ping()
                memory = await self.client.info("memory")
                stats = await self.client.info("stats")
        except Exception as exc:
            return {"health": failed(exc), "used_memory": None, "ops_per_sec": None}
        return {
            "health": healthy(),
            "used_memory": int(memory["used_memory"]),
            "ops_per_sec": int(stats["instantaneous_ops_per_sec"]),
        }


class Monitor:
    """Every probe read at once: what the dashboard shows next to the counts.

    It owns the store clients it is given and closes them in :meth:`close`.
    """

    def __init__(
        self,
        settings: Settings,
        store_clients: Mapping[str, aioredis.Redis],
        timeout_s: float = READ_TIMEOUT_S,
    ) -> None:
        self.kafka = KafkaProbe(settings, timeout_s)
        self.rabbitmq = RabbitProbe(settings, timeout_s)
        self.stores = {
            name: StoreProbe(client, timeout_s) for name, client in store_clients.items()
        }

    async def read(self) -> dict[str, Any]:
        """``{"kafka": {...}, "rabbitmq": {...}, "stores": {name: {...}}}``; never raises."""
        names = list(self.stores)
        kafka, rabbitmq, *stores = await asyncio.gather(
            self.kafka.read(), self.rabbitmq.read(), *(self.stores[n].read() for n in names)
        )
        return {
            "kafka": kafka,
            "rabbitmq": rabbitmq,
            "stores": dict(zip(names, stores, strict=True)),
        }

    async def close(self) -> None:
        await asyncio.gather(self.kafka.close(), self.rabbitmq.close())
        await _close_quietly(*(probe.client.aclose() for probe in self.stores.values()))

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


async def _close_quietly(*closing: Any) -> None:
    """Await each close, ignoring failures: the peer may already be gone."""
    for awaitable in closing:
        if awaitable is not None:
            with contextlib.suppress(Exception):
                await awaitable


# --- one-shot readings for tooling (load tests, benchmark, tests) ------------------------


async def kafka_lag(settings: Settings | None = None, timeout_s: float = TOOLING_TIMEOUT_S) -> int:
    """Sum over the topic's partitions of end offset - committed offset of the group."""
    async with KafkaProbe(settings or get_settings(), timeout_s) as probe:
        return await probe.lag()


async def rabbit_depth(
    settings: Settings | None = None, timeout_s: float = TOOLING_TIMEOUT_S
) -> int:
    """Messages ready in the tweet queue (passive declare; excludes unacked deliveries)."""
    async with RabbitProbe(settings or get_settings(), timeout_s) as probe:
        return await probe.depth()
