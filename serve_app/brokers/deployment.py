"""The two writers as Serve deployments of application ``ingest`` (bound by its builder)."""

from __future__ import annotations

from ray import serve

from serve_app.brokers.kafka import KafkaChunkWriter
from serve_app.brokers.rabbitmq import RabbitChunkWriter


@serve.deployment(name="KafkaWriter")
class KafkaWriter(KafkaChunkWriter):
    """Serve adapter: the Kafka writer, closed with its replica."""

    async def __del__(self) -> None:
        await self.close()


@serve.deployment(name="RabbitWriter")
class RabbitWriter(RabbitChunkWriter):
    """Serve adapter: the RabbitMQ writer, closed with its replica."""

    async def __del__(self) -> None:
        await self.close()
