"""Stage 3: the writers. Each replica keeps one broker connection and reuses it.

``KafkaWriter`` and ``RabbitWriter`` take a batch of already-encoded tweets and return only
once the broker has confirmed every one of them (Kafka acks=all, RabbitMQ publisher
confirms); otherwise they raise :class:`BrokerUnavailable`, which the ingress turns into
503 + Retry-After and the gRPC service into UNAVAILABLE.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import aio_pika
from aiokafka import AIOKafkaProducer
from ray import serve

from serve_app.settings import Settings, settings
from serve_app.topology import declare_rabbit_topology, ensure_kafka_topics

log = logging.getLogger("ray.serve")


@dataclass(frozen=True)
class EncodedTweet:
    """A tweet as both brokers carry it: id, Kafka key (country) and JSON payload."""

    id: str
    country: str
    payload: bytes


class BrokerUnavailable(RuntimeError):
    """A broker could not confirm a batch in time; nothing of it may be reported accepted."""

    def __init__(self, broker: str, reason: str) -> None:
        self.broker = broker
        self.reason = reason
        super().__init__(broker, reason)  # both in args, so the error survives pickling

    def __str__(self) -> str:
        return self.summary

    @property
    def summary(self) -> str:
        """One line for clients (``str()`` of a Ray-wrapped error carries a traceback)."""
        return f"{self.broker} unavailable: {self.reason}"


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


class _Writer:
    """Lazy, self-healing connection + a deadline on every broker round trip."""

    broker = ""

    def __init__(self, config: Settings = settings) -> None:
        self.settings = config
        self._connect_lock = asyncio.Lock()

    async def _connect(self) -> None:
        raise NotImplementedError

    async def _send(self, tweets: list[EncodedTweet]) -> None:
        raise NotImplementedError

    async def _probe(self) -> None:
        raise NotImplementedError

    def _connected(self) -> bool:
        raise NotImplementedError

    async def _ensure_connected(self) -> None:
        if self._connected():
            return
        async with self._connect_lock:
            if not self._connected():
                await self._connect()

    async def _guarded(self, operation) -> None:
        try:
            async with asyncio.timeout(self.settings.publish_timeout_s):
                await self._ensure_connected()
                await operation()
        except Exception as exc:  # any broker failure means "not confirmed"
            raise BrokerUnavailable(self.broker, _describe(exc)) from exc

    async def write(self, tweets: list[EncodedTweet]) -> int:
        """Publish every tweet and wait for the broker's confirmation of each."""
        await self._guarded(lambda: self._send(tweets))
        return len(tweets)

    async def health(self) -> dict[str, object]:
        """A real round trip to the broker, bounded by the publish timeout."""
        try:
            await self._guarded(self._probe)
        except BrokerUnavailable as exc:
            return {"ok": False, "detail": exc.reason}
        return {"ok": True, "detail": "reachable"}


@serve.deployment
class KafkaWriter(_Writer):
    """Idempotent producer (acks=all), keyed by country so a country keeps its order."""

    broker = "kafka"

    def __init__(self, config: Settings = settings) -> None:
        super().__init__(config)
        self._producer: AIOKafkaProducer | None = None

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
            request_timeout_ms=int(self.settings.publish_timeout_s * 1000),
        )
        try:
            await producer.start()
        except BaseException:
            await producer.stop()
            raise
        self._producer = producer

    async def _send(self, tweets: list[EncodedTweet]) -> None:
        assert self._producer is not None
        topic = self.settings.kafka_topic
        deliveries = [
            await self._producer.send(topic, value=t.payload, key=t.country.encode())
            for t in tweets
        ]
        await asyncio.gather(*deliveries)

    async def _probe(self) -> None:
        assert self._producer is not None
        metadata = await self._producer.client.fetch_all_metadata()
        if not metadata.brokers():
            raise ConnectionError("no Kafka broker answered a metadata request")

    async def __del__(self) -> None:
        if self._producer is not None:
            await self._producer.stop()


@serve.deployment
class RabbitWriter(_Writer):
    """Persistent messages to a durable exchange, each one confirmed by the broker."""

    broker = "rabbitmq"

    def __init__(self, config: Settings = settings) -> None:
        super().__init__(config)
        self._connection: aio_pika.abc.AbstractRobustConnection | None = None
        self._exchange: aio_pika.abc.AbstractExchange | None = None

    def _connected(self) -> bool:
        return self._exchange is not None

    async def _connect(self) -> None:
        # A robust connection re-opens itself and its channel after a broker restart.
        connection = await aio_pika.connect_robust(
            self.settings.rabbitmq_url, timeout=self.settings.publish_timeout_s
        )
        channel = await connection.channel(publisher_confirms=True)
        self._exchange, _ = await declare_rabbit_topology(channel, self.settings)
        self._connection = connection

    async def _send(self, tweets: list[EncodedTweet]) -> None:
        assert self._exchange is not None
        publish = self._exchange.publish
        await asyncio.gather(
            *(
                publish(
                    aio_pika.Message(
                        t.payload,
                        message_id=t.id,
                        content_type="application/json",
                        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                    ),
                    routing_key=t.country,
                )
                for t in tweets
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
            await channel.close()

    async def __del__(self) -> None:
        if self._connection is not None:
            await self._connection.close()
