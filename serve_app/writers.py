"""Stage 2: the broker writers (no Ray in here; ``serve_app.app`` makes them deployments).

Each writer keeps one broker connection and reuses it. ``write`` takes encoded chunks
(:mod:`serve_app.codec`) and returns only once the broker confirmed every one of them
(Kafka acks=all with an idempotent producer; RabbitMQ publisher confirms, persistent
messages, ``mandatory`` so that an unroutable message is a failure, never a success);
otherwise it raises :class:`~serve_app.ingest.BrokerUnavailable`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import aio_pika
from aiokafka import AIOKafkaProducer

from serve_app.codec import Chunk
from serve_app.ingest import BrokerUnavailable, describe
from serve_app.settings import Settings
from serve_app.topology import declare_rabbit_topology, ensure_kafka_topics


class _Writer:
    """Lazy, self-healing connection and a deadline on every broker round trip."""

    broker = ""
    by_country = False

    def __init__(self, config: Settings) -> None:
        self.settings = config
        self._connect_lock = asyncio.Lock()

    async def _connect(self) -> None:
        raise NotImplementedError

    def _connected(self) -> bool:
        raise NotImplementedError

    async def _send(self, chunks: Sequence[Chunk]) -> None:
        raise NotImplementedError

    async def _probe(self) -> None:
        raise NotImplementedError

    def _after_failure(self) -> None:
        """Called after any failed round trip; the connection is kept by default."""

    async def _ensure_connected(self) -> None:
        if self._connected():
            return
        async with self._connect_lock:
            if not self._connected():
                await self._connect()

    async def _guarded(self, operation: Callable[[], Awaitable[None]], timeout_s: float) -> None:
        try:
            async with asyncio.timeout(timeout_s):
                await self._ensure_connected()
                await operation()
        except Exception as exc:  # any broker failure means "not confirmed"
            self._after_failure()
            raise BrokerUnavailable(self.broker, describe(exc)) from exc

    async def write(self, chunks: Sequence[Chunk], timeout_s: float) -> int:
        """Publish every chunk and wait for the broker's confirmation of each."""
        await self._guarded(lambda: self._send(chunks), timeout_s)
        return len(chunks)

    async def health(self, timeout_s: float) -> dict[str, Any]:
        """A real round trip to the broker."""
        try:
            await self._guarded(self._probe, timeout_s)
        except BrokerUnavailable as exc:
            return {"ok": False, "detail": exc.reason}
        return {"ok": True, "detail": "reachable"}


class KafkaChunkWriter(_Writer):
    """One record per chunk, keyed by country: a country's tweets stay in order."""

    broker = "kafka"
    by_country = True

    def __init__(self, config: Settings) -> None:
        super().__init__(config)
        self._producer: AIOKafkaProducer | None = None
        self._retired: set[asyncio.Task[None]] = set()

    def _connected(self) -> bool:
        return self._producer is not None

    async def _connect(self) -> None:
        await ensure_kafka_topics(self.settings)
        producer = AIOKafkaProducer(
            bootstrap_servers=self.settings.kafka_bootstrap_servers,
            acks="all",
            enable_idempotence=True,
            linger_ms=1,
            max_batch_size=1_048_576,
            max_request_size=2 * self.settings.max_chunk_bytes + 65_536,
            request_timeout_ms=int(self.settings.publish_timeout_s * 1000),
        )
        try:
            await producer.start()
        except BaseException:
            await producer.stop()
            raise
        self._producer = producer

    async def _send(self, chunks: Sequence[Chunk]) -> None:
        assert self._producer is not None
        topic = self.settings.kafka_topic
        send = self._producer.send
        deliveries = [await send(topic, value=c.body, key=c.country.encode()) for c in chunks]
        await asyncio.gather(*deliveries)

    async def _probe(self) -> None:
        assert self._producer is not None
        metadata = await self._producer.client.fetch_all_metadata()
        if not metadata.brokers():
            raise ConnectionError("no Kafka broker answered a metadata request")

    def _after_failure(self) -> None:
        """A failed send can leave an idempotent producer's sequence numbers out of step
        with the broker's (every later send then fails with OutOfOrderSequenceNumber):
        the next write starts a new producer; this one is stopped in the background.
        Its late deliveries, if any, carry tweet ids the consumers already deduplicate."""
        producer, self._producer = self._producer, None
        if producer is not None:
            task = asyncio.ensure_future(self._stop_quietly(producer))
            self._retired.add(task)
            task.add_done_callback(self._retired.discard)

    async def _stop_quietly(self, producer: AIOKafkaProducer) -> None:
        with contextlib.suppress(Exception):
            async with asyncio.timeout(self.settings.publish_timeout_s):
                await producer.stop()

    async def close(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
        if self._retired:
            await asyncio.gather(*self._retired, return_exceptions=True)


class RabbitChunkWriter(_Writer):
    """One persistent, mandatory message per chunk (any countries) to the durable fanout
    exchange, each confirmed."""

    broker = "rabbitmq"

    def __init__(self, config: Settings) -> None:
        super().__init__(config)
        self._connection: aio_pika.abc.AbstractRobustConnection | None = None
        self._exchange: aio_pika.abc.AbstractExchange | None = None

    def _connected(self) -> bool:
        return self._exchange is not None

    async def _connect(self) -> None:
        # A robust connection re-opens itself and its channel after a broker restart.
        connection = await aio_pika.connect_robust(
            self.settings.rabbitmq_url,
            timeout=self.settings.publish_timeout_s,
            client_properties={"connection_name": "weather-writer"},
        )
        try:
            # on_return_raises: a message the broker could not route is an error
            channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
            self._exchange, _ = await declare_rabbit_topology(channel, self.settings)
        except BaseException:
            with contextlib.suppress(Exception):
                await connection.close()
            raise
        self._connection = connection

    async def _send(self, chunks: Sequence[Chunk]) -> None:
        assert self._exchange is not None
        publish = self._exchange.publish
        await asyncio.gather(
            *(
                publish(
                    aio_pika.Message(
                        c.body,
                        content_type="application/json",
                        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                        headers={"x-tweets": len(c.ids)},
                    ),
                    routing_key="",
                    mandatory=True,
                )
                for c in chunks
            )
        )

    async def _probe(self) -> None:
        assert self._connection is not None
        if self._connection.is_closed:
            raise ConnectionError("AMQP connection is closed")
        channel = await self._connection.channel()
        try:
            await channel.get_exchange(self.settings.rabbitmq_exchange, ensure=True)
        finally:
            with contextlib.suppress(Exception):
                await channel.close()

    async def close(self) -> None:
        if self._connection is not None:
            await self._connection.close()
