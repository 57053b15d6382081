"""Stage 3, Ray side: the long-lived consumer actors, one per broker connection.

* :class:`KafkaConsumer`: one member of the consumer group on the tweet topic → Redis.
* :class:`RabbitConsumer`: a consumer on the quorum queue → Valkey.

Each is a thin shell: a :class:`~serve_app.consume.core.ConsumerLoop` over its broker's
source (:mod:`serve_app.brokers`) and its store, plus the adoption handshake the supervisor
(:mod:`serve_app.consume.deployment`) uses. Actors are detached and named
(``kafka-consumer-N``, ``rabbit-consumer-N`` in namespace :data:`NAMESPACE`).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import ray

import serve_app
from serve_app.brokers.kafka import open_kafka_source
from serve_app.brokers.rabbitmq import open_rabbit_source
from serve_app.consume.core import (
    DRAIN_LEASE_S,
    ConsumerLoop,
    OpenSource,
    actor_version,
    code_version,
)
from serve_app.errors import ConfigError
from serve_app.runtime import ray_metrics
from serve_app.settings import Settings
from serve_app.store.client import TweetStore, connect_redis, connect_valkey

NAMESPACE = "weather"
"""Ray namespace of the detached consumer actors (names are only unique per namespace)."""

CODE_VERSION = code_version(Path(serve_app.__file__).parent)
"""The code this process imported; the supervisor hands its own to the actors it creates,
so an actor's version names the deployment that created it."""

KAFKA_ACTOR_PREFIX = "kafka-consumer-"
RABBIT_ACTOR_PREFIX = "rabbit-consumer-"

ACTOR_OPTIONS: dict[str, Any] = {
    "namespace": NAMESPACE,
    "lifetime": "detached",
    "get_if_exists": True,
    "max_restarts": -1,
    "max_task_retries": 3,
    "num_cpus": 0.1,
    "max_concurrency": 64,
    # one per machine while there are machines: losing one then stops only its consumers
    "scheduling_strategy": "SPREAD",
}


class ConsumerConfigError(ConfigError):
    """The configured consumer counts cannot work (e.g. more Kafka consumers than partitions)."""


def validate_consumer_counts(settings: Settings) -> None:
    """Refuse configurations where some consumers could never get work."""
    if settings.kafka_consumers > settings.kafka_partitions:
        raise ConsumerConfigError(
            f"KAFKA_CONSUMERS={settings.kafka_consumers} exceeds KAFKA_PARTITIONS="
            f"{settings.kafka_partitions}: a consumer group gives each partition to one "
            "consumer, so the extra consumers would sit idle. Lower KAFKA_CONSUMERS or "
            "raise KAFKA_PARTITIONS."
        )


def kafka_actor_name(index: int) -> str:
    return f"{KAFKA_ACTOR_PREFIX}{index}"


def rabbit_actor_name(index: int) -> str:
    return f"{RABBIT_ACTOR_PREFIX}{index}"


class _ConsumerActor:
    """What both actors share: the loop, and which supervisor owns the actor."""

    kind = "consumer"
    store_name = "store"

    async def __init__(  # type: ignore[misc]
        self, name: str, settings: Settings, code: str = ""
    ) -> None:
        # Ray runs an async actor's async __init__ on the actor's event loop, so a
        # restarted actor starts consuming again by itself.
        self.settings = settings
        self.owner: str | None = None
        self.owner_generation = 0
        self.loop = ConsumerLoop(
            name,
            self.kind,
            self._store(),
            self._source(name),
            metrics=ray_metrics(),
            node_id=ray.get_runtime_context().get_node_id(),
            config_version=actor_version(settings, code, CODE_VERSION),
            store_name=self.store_name,
            drain_batch=settings.dead_letter_drain_batch,
            drain_lease_s=max(DRAIN_LEASE_S, 4 * settings.publish_timeout_s),
        )
        self.loop.ensure_task()

    def _store(self) -> TweetStore:
        raise NotImplementedError

    def _source(self, name: str) -> OpenSource:
        raise NotImplementedError

    async def start(self) -> dict[str, Any]:
        """Idempotent: (re)start the loop if needed and return the status."""
        self.loop.ensure_task()
        return self.loop.status()

    def adopt(self, owner: str, generation: int) -> str | None:
        """The supervisor in charge: the newest one (a replaced supervisor, still running
        for a moment, cannot take the actor back). Returns the owner after the call."""
        if generation >= self.owner_generation:
            self.owner, self.owner_generation = owner, generation
        return self.owner

    def owned_by(self) -> str | None:
        return self.owner

    async def stop(self) -> None:
        await self.loop.stop()

    async def status(self) -> dict[str, Any]:
        return self.loop.status()


class KafkaConsumer(_ConsumerActor):
    """One member of the ``kafka_consumer_group`` group; records into Redis."""

    kind = "kafka"
    store_name = "redis"

    def _store(self) -> TweetStore:
        return TweetStore(connect_redis(self.settings), self.settings)

    def _source(self, name: str) -> OpenSource:
        return functools.partial(open_kafka_source, self.settings, name)


class RabbitConsumer(_ConsumerActor):
    """A consumer on the quorum queue; records into Valkey."""

    kind = "rabbitmq"
    store_name = "valkey"

    def _store(self) -> TweetStore:
        return TweetStore(connect_valkey(self.settings), self.settings)

    def _source(self, name: str) -> OpenSource:
        return functools.partial(open_rabbit_source, self.settings, name)


def actor_specs(settings: Settings) -> list[tuple[str, type]]:
    """Every consumer actor the settings ask for: (name, class)."""
    return [(kafka_actor_name(i), KafkaConsumer) for i in range(settings.kafka_consumers)] + [
        (rabbit_actor_name(i), RabbitConsumer) for i in range(settings.rabbit_consumers)
    ]


@functools.cache
def remote_class(cls: type) -> Any:
    return ray.remote(cls)


def surplus_actor_names(wanted: set[str]) -> list[str]:
    """Consumer actors left over from a larger earlier configuration."""
    names = []
    for entry in ray.util.list_named_actors(all_namespaces=True):
        if entry.get("namespace") != NAMESPACE:
            continue
        name = entry["name"]
        if name.startswith((KAFKA_ACTOR_PREFIX, RABBIT_ACTOR_PREFIX)) and name not in wanted:
            names.append(name)
    return names
