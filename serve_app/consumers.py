"""Stage 3, broker adapters: long-lived Ray actors draining the brokers into the stores.

The batch logic (decode, poison, the store's script, id conflicts, retries) is
:class:`serve_app.consume.ConsumerCore`, with no Ray and no broker in it; this module only
fetches, hands batches to it, and commits or acks once it returned:

* :class:`KafkaConsumer`: one member of the consumer group on the tweet topic → Redis.
  Offsets are committed after the batch is applied; while a step is retried it pauses its
  partitions but keeps polling, so the group does not evict it.
* :class:`RabbitConsumer`: a consumer on the quorum queue → Valkey; acks after the batch is
  applied. Its dead letters go out on a connection of their own, each publish bounded by
  ``PUBLISH_TIMEOUT_S``: under a memory or disk alarm the broker blocks publishing
  connections, and the consuming one must keep reading acks.
* :class:`ConsumerSupervisor`: the small Serve deployment that creates the detached, named
  actors (``kafka-consumer-N``, ``rabbit-consumer-N`` in namespace :data:`NAMESPACE`),
  keeps them running, and reports their health (``GET /consumers`` only reads). It adopts
  the actors when it starts; a replaced supervisor never kills actors a newer one adopted.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import time
import uuid
from collections.abc import Sequence
from typing import Any

import aio_pika
import ray
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError
from aiokafka.structs import ConsumerRecord
from ray import serve
from starlette.requests import Request
from starlette.responses import JSONResponse

from serve_app.consume import Backoff, BatchOutcome, ConsumerCore, DeadLetter, Delivery
from serve_app.metrics import CONSUMER_TWEETS, MetricsSink
from serve_app.ray_metrics import ray_metrics
from serve_app.settings import Settings
from serve_app.store import TweetStore, connect_redis, connect_valkey
from serve_app.topology import POISON_REASON_HEADER, declare_rabbit_topology, ensure_kafka_topics

logger = logging.getLogger(__name__)

NAMESPACE = "weather"
"""Ray namespace of the detached consumer actors (names are only unique per namespace)."""

KAFKA_ACTOR_PREFIX = "kafka-consumer-"
RABBIT_ACTOR_PREFIX = "rabbit-consumer-"

Message = aio_pika.abc.AbstractIncomingMessage
RABBIT_BATCH_WINDOW_S = 0.05
"""How long a RabbitMQ batch waits to fill up after its first delivery."""

ORIGINAL_TOPIC_HEADER = "x-original-topic"
ORIGINAL_PARTITION_HEADER = "x-original-partition"
ORIGINAL_OFFSET_HEADER = "x-original-offset"

ACTOR_OPTIONS: dict[str, Any] = {
    "namespace": NAMESPACE,
    "lifetime": "detached",
    "get_if_exists": True,
    "max_restarts": -1,
    "max_task_retries": 3,
    "num_cpus": 0.1,
    "max_concurrency": 64,
}


class ConsumerConfigError(ValueError):
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


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:1000]


class _ConsumerLoop:
    """What both actors share: the loop task, its restart-on-crash wrapper and status."""

    kind = "consumer"

    def __init__(self, name: str, settings: Settings) -> None:
        self.name = name
        self.settings = settings
        self.owner: str | None = None
        self.owner_generation = 0
        self.metrics: MetricsSink = ray_metrics()
        self.started_at = time.time()
        self.batches = 0
        self.messages = 0
        self.new_tweets = 0
        self.poison = 0
        self.duplicates = 0
        self.conflicts = 0
        self.retries = 0
        self.loop_restarts = 0
        self.retrying = False
        self.connected = False
        self.last_error: str | None = None
        self.last_error_at: float | None = None
        self.last_batch_at: float | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    # --- lifecycle -------------------------------------------------------------------
    def _ensure_task(self) -> bool:
        """Start the loop unless it is running; True if it was (re)started."""
        if self._task is not None and not self._task.done():
            return False
        self._stopping = False
        self._task = asyncio.get_running_loop().create_task(self._supervised(), name=self.name)
        return True

    async def start(self) -> dict[str, Any]:
        """Idempotent: (re)start the loop if needed and return the status."""
        self._ensure_task()
        return await self.status()

    def adopt(self, owner: str, generation: int) -> str | None:
        """The supervisor in charge: the newest one (a replaced supervisor, still running
        for a moment, cannot take the actor back). Returns the owner after the call."""
        if generation >= self.owner_generation:
            self.owner, self.owner_generation = owner, generation
        return self.owner

    def owned_by(self) -> str | None:
        return self.owner

    async def stop(self) -> None:
        """Stop the loop and close the connections (uncommitted work is redelivered)."""
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    async def status(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "running": self._task is not None and not self._task.done(),
            "connected": self.connected,
            "retrying": self.retrying,
            "batches": self.batches,
            "messages": self.messages,
            "new_tweets": self.new_tweets,
            "duplicates": self.duplicates,
            "poison": self.poison,
            "conflicts": self.conflicts,
            "retries": self.retries,
            "loop_restarts": self.loop_restarts,
            "last_error": self.last_error,
            "last_error_at": self.last_error_at,
            "last_batch_at": self.last_batch_at,
            "started_at": self.started_at,
            "pid": os.getpid(),
            "node_id": ray.get_runtime_context().get_node_id(),
        }

    async def _supervised(self) -> None:
        """Run the session forever; any escape reconnects from scratch after a backoff."""
        backoff = Backoff()
        while not self._stopping:
            try:
                await self._session(backoff)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # broker gone, topology error, bug: start over
                self._error(exc, "session failed; reconnecting")
                self.loop_restarts += 1
            self.connected = False
            await backoff.sleep()

    async def _session(self, backoff: Backoff) -> None:
        raise NotImplementedError

    def _error(self, exc: BaseException, what: str) -> None:
        self.last_error = _reason(exc)
        self.last_error_at = time.time()
        logger.warning("%s: %s: %s", self.name, what, self.last_error)

    async def _retrying(self, exc: BaseException, what: str) -> None:
        """The core retries a step of the batch: say so in the status."""
        self.retrying = True
        self.retries += 1
        self._error(exc, f"{what} failed; retrying the same batch")

    def _done(self, outcome: BatchOutcome, acknowledged: bool) -> None:
        """Book a batch: metrics once it is applied, the status once it is committed/acked
        (a redelivery after a failed commit shows up as duplicates)."""
        self.retrying = False
        for name, value in (
            ("applied", outcome.applied),
            ("duplicate", outcome.duplicates),
            ("dead_lettered", outcome.dead_lettered),
        ):
            self.metrics.inc(CONSUMER_TWEETS, value, consumer=self.kind, outcome=name)
        if not acknowledged:
            return
        self.batches += 1
        self.messages += outcome.messages
        self.new_tweets += outcome.applied
        self.duplicates += outcome.duplicates
        self.poison += outcome.poison
        self.conflicts += outcome.conflicts
        self.last_batch_at = time.time()


class KafkaConsumer(_ConsumerLoop):
    """One member of the ``kafka_consumer_group`` group; records into Redis."""

    kind = "kafka"

    async def __init__(self, name: str, settings: Settings) -> None:  # type: ignore[misc]
        # Ray runs an async actor's async __init__ on the actor's event loop, so a
        # restarted actor starts consuming again by itself.
        super().__init__(name, settings)
        self._store = TweetStore(connect_redis(self.settings), self.settings)
        self._ensure_task()

    async def _session(self, backoff: Backoff) -> None:
        s = self.settings
        await ensure_kafka_topics(s)
        consumer = AIOKafkaConsumer(
            s.kafka_topic,
            bootstrap_servers=s.kafka_bootstrap_servers,
            group_id=s.kafka_consumer_group,
            client_id=self.name,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
            max_poll_records=s.consumer_batch_size,
            max_poll_interval_ms=300_000,
            session_timeout_ms=10_000,
            heartbeat_interval_ms=2_000,
        )
        producer = AIOKafkaProducer(
            bootstrap_servers=s.kafka_bootstrap_servers,
            client_id=f"{self.name}-dlq",
            acks="all",
            enable_idempotence=True,
        )
        await consumer.start()
        try:
            await producer.start()
            try:
                self.connected = True
                backoff.reset()
                while not self._stopping:
                    batches = await consumer.getmany(
                        timeout_ms=500, max_records=s.consumer_batch_size
                    )
                    if batches:
                        await self._handle(consumer, producer, batches, backoff)
            finally:
                await producer.stop()
        finally:
            await consumer.stop()

    async def _handle(
        self,
        consumer: AIOKafkaConsumer,
        producer: AIOKafkaProducer,
        batches: dict[TopicPartition, list[ConsumerRecord]],
        backoff: Backoff,
    ) -> None:
        async def keep_membership(exc: BaseException, what: str) -> None:
            # While a step is retried, stop fetching but keep polling so the group does
            # not consider this member dead; put back anything a rebalance let through.
            await self._retrying(exc, what)
            consumer.pause(*consumer.assignment())
            stray = await consumer.getmany(timeout_ms=0)
            for tp, records in stray.items():
                consumer.seek(tp, records[0].offset)

        core = ConsumerCore(
            self._store, KafkaDeadLetters(producer, self.settings), keep_membership, backoff
        )
        deliveries = [Delivery(r.value or b"", r) for records in batches.values() for r in records]
        outcome = await core.handle(deliveries)
        consumer.resume(*consumer.paused())
        offsets = {tp: records[-1].offset + 1 for tp, records in batches.items()}
        try:
            await consumer.commit(offsets)
        except (CommitFailedError, KafkaError) as exc:
            # A rebalance took the partitions away (or the broker is gone): the new owner
            # re-reads from the last commit and the store ignores ids it has counted.
            self._error(exc, "commit failed; batch will be redelivered")
            for tp, records in batches.items():
                if tp in consumer.assignment():
                    with contextlib.suppress(Exception):
                        consumer.seek(tp, records[0].offset)
            self._done(outcome, acknowledged=False)
            return
        self._done(outcome, acknowledged=True)


class KafkaDeadLetters:
    """Dead letters to the dead-letter topic, each naming its reason and original record."""

    def __init__(self, producer: AIOKafkaProducer, settings: Settings) -> None:
        self.producer = producer
        self.topic = settings.kafka_dead_letter_topic

    async def send(self, letters: Sequence[DeadLetter[ConsumerRecord]]) -> None:
        futures = []
        for letter in letters:
            record = letter.origin
            headers = [
                (POISON_REASON_HEADER, letter.reason.encode()),
                (ORIGINAL_TOPIC_HEADER, record.topic.encode()),
                (ORIGINAL_PARTITION_HEADER, str(record.partition).encode()),
                (ORIGINAL_OFFSET_HEADER, str(record.offset).encode()),
            ]
            send = self.producer.send(
                self.topic, value=letter.body, key=record.key, headers=headers
            )
            futures.append(await send)
        await asyncio.gather(*futures)


class RabbitConsumer(_ConsumerLoop):
    """A consumer on the quorum queue; records into Valkey."""

    kind = "rabbitmq"

    async def __init__(self, name: str, settings: Settings) -> None:  # type: ignore[misc]
        super().__init__(name, settings)
        self._store = TweetStore(connect_valkey(self.settings), self.settings)
        self._ensure_task()

    async def _session(self, backoff: Backoff) -> None:
        s = self.settings
        connection = await aio_pika.connect_robust(
            s.rabbitmq_url, client_properties={"connection_name": self.name}
        )
        dead_letters = RabbitDeadLetters(s, f"{self.name}-dead-letters")
        try:
            channel = await connection.channel()
            await channel.set_qos(prefetch_count=s.consumer_batch_size * 2)
            _, queue = await declare_rabbit_topology(channel, s)
            core = ConsumerCore(self._store, dead_letters, self._retrying, backoff)
            inbox: asyncio.Queue[aio_pika.abc.AbstractIncomingMessage] = asyncio.Queue()
            tag = await queue.consume(inbox.put, no_ack=False)
            self.connected = True
            backoff.reset()
            try:
                while not self._stopping:
                    batch = await self._collect(inbox)
                    if batch:
                        outcome = await core.handle([Delivery(m.body, m) for m in batch])
                        self._done(outcome, acknowledged=await self._ack(batch))
            finally:
                with contextlib.suppress(Exception):
                    await queue.cancel(tag)
        finally:
            self.connected = False
            await dead_letters.close()
            with contextlib.suppress(Exception):
                await connection.close()

    async def _collect(
        self, inbox: asyncio.Queue[aio_pika.abc.AbstractIncomingMessage]
    ) -> list[aio_pika.abc.AbstractIncomingMessage]:
        """Up to ``consumer_batch_size`` deliveries: the first one plus whatever arrives
        within a short window after it."""
        try:
            first = await asyncio.wait_for(inbox.get(), timeout=1.0)
        except TimeoutError:
            return []
        batch = [first]
        limit = self.settings.consumer_batch_size
        deadline = asyncio.get_running_loop().time() + RABBIT_BATCH_WINDOW_S
        while len(batch) < limit:
            while len(batch) < limit and not inbox.empty():
                batch.append(inbox.get_nowait())
            if len(batch) >= limit:
                break
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(inbox.get(), timeout=remaining))
            except TimeoutError:
                break
        return batch

    async def _ack(self, batch: list[aio_pika.abc.AbstractIncomingMessage]) -> bool:
        """Ack everything up to the last delivery of each live channel (one frame each).

        After a reconnect a batch may hold deliveries of the closed channel too: the broker
        has requeued those already and the store ignores ids it has counted.
        """
        last_per_channel: dict[int, aio_pika.abc.AbstractIncomingMessage] = {}
        acked_all = True
        for message in batch:
            try:
                channel = message.channel
            except Exception:  # channel closed: already requeued by the broker
                acked_all = False
                continue
            last_per_channel[id(channel)] = message
        for message in last_per_channel.values():
            try:
                await message.ack(multiple=True)
            except Exception as exc:
                self._error(exc, "ack failed; deliveries will be redelivered")
                acked_all = False
        return acked_all


class RabbitDeadLetters:
    """Dead letters on a connection of their own, every publish confirmed within
    ``PUBLISH_TIMEOUT_S``: a memory or disk alarm blocks publishing connections, and must
    never stall the consuming one (whose acks would then never be read)."""

    def __init__(self, settings: Settings, connection_name: str) -> None:
        self.settings = settings
        self.connection_name = connection_name
        self._connection: aio_pika.abc.AbstractRobustConnection | None = None
        self._exchange: aio_pika.abc.AbstractExchange | None = None

    async def _exchange_ready(self) -> aio_pika.abc.AbstractExchange:
        if self._exchange is None:
            connection = await aio_pika.connect_robust(
                self.settings.rabbitmq_url,
                timeout=self.settings.publish_timeout_s,
                client_properties={"connection_name": self.connection_name},
            )
            try:
                channel = await connection.channel(publisher_confirms=True)
                self._exchange = await channel.get_exchange(
                    self.settings.rabbitmq_dead_letter_exchange
                )
            except BaseException:
                with contextlib.suppress(Exception):
                    await connection.close()
                raise
            self._connection = connection
        return self._exchange

    async def send(self, letters: Sequence[DeadLetter[Message]]) -> None:
        async with asyncio.timeout(self.settings.publish_timeout_s):
            exchange = await self._exchange_ready()
            await asyncio.gather(*(exchange.publish(self._message(x), "") for x in letters))

    @staticmethod
    def _message(letter: DeadLetter[Message]) -> aio_pika.Message:
        origin = letter.origin
        headers = dict(origin.headers or {})
        headers[POISON_REASON_HEADER] = letter.reason
        return aio_pika.Message(
            body=letter.body,
            headers=headers,
            message_id=letter.id or origin.message_id,
            content_type="application/json",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        )

    async def close(self) -> None:
        if self._connection is not None:
            with contextlib.suppress(Exception):
                await self._connection.close()
        self._connection, self._exchange = None, None


# --- supervisor ---------------------------------------------------------------------


def _actor_specs(settings: Settings) -> list[tuple[str, type]]:
    return [(kafka_actor_name(i), KafkaConsumer) for i in range(settings.kafka_consumers)] + [
        (rabbit_actor_name(i), RabbitConsumer) for i in range(settings.rabbit_consumers)
    ]


@functools.cache
def _remote_class(cls: type) -> Any:
    return ray.remote(cls)


def _surplus_actor_names(wanted: set[str]) -> list[str]:
    """Consumer actors left over from a larger earlier configuration."""
    names = []
    for entry in ray.util.list_named_actors(all_namespaces=True):
        if entry.get("namespace") != NAMESPACE:
            continue
        name = entry["name"]
        if name.startswith((KAFKA_ACTOR_PREFIX, RABBIT_ACTOR_PREFIX)) and name not in wanted:
            names.append(name)
    return names


@serve.deployment(num_replicas=1, ray_actor_options={"num_cpus": 0.05})
class ConsumerSupervisor:
    """Creates and adopts the detached consumer actors, keeps them running, reports them.

    ``GET /consumers`` only reads (200, or 503 when an actor is not running). Every
    ``CHECK_INTERVAL_S`` the supervisor starts any stopped loop and recreates any dead actor.
    When it goes away it kills the actors only if no newer supervisor adopted them since: a
    redeploy, health-check restart or node drain never stops consumption; deleting the
    application does.
    """

    CHECK_INTERVAL_S = 5.0
    CALL_TIMEOUT_S = 10.0

    async def __init__(self, settings: Settings) -> None:  # type: ignore[misc]
        self.settings = settings
        self.id = uuid.uuid4().hex
        self.generation = time.time_ns()  # a newer supervisor outranks this one
        validate_consumer_counts(self.settings)
        self._specs = _actor_specs(self.settings)
        self._actors: dict[str, Any] = {}
        for name in _surplus_actor_names({name for name, _ in self._specs}):
            with contextlib.suppress(Exception):
                ray.kill(ray.get_actor(name, namespace=NAMESPACE), no_restart=True)
        for name, cls in self._specs:
            self._actors[name] = self._create(name, cls)
        await self.ensure_running()
        self._monitor = asyncio.get_running_loop().create_task(self._watch())

    def _create(self, name: str, cls: type) -> Any:
        return _remote_class(cls).options(name=name, **ACTOR_OPTIONS).remote(name, self.settings)

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.CHECK_INTERVAL_S)
            try:
                await self.ensure_running()
            except Exception:
                logger.exception("consumer check failed")

    async def _call(self, name: str, method: str) -> dict[str, Any]:
        try:
            return await asyncio.wait_for(
                getattr(self._actors[name], method).remote(), timeout=self.CALL_TIMEOUT_S
            )
        except TimeoutError:
            return {"name": name, "running": False, "last_error": f"{method} timed out"}
        except Exception as exc:
            return {"name": name, "running": False, "last_error": _reason(exc), "dead": True}

    async def ensure_running(self) -> None:
        """(Re)start stopped loops; recreate actors that died for good (or stale handles);
        adopt them all again (an actor Ray restarted has forgotten its owner)."""
        for (name, cls), status in zip(
            self._specs,
            await asyncio.gather(*(self._call(name, "start") for name, _ in self._specs)),
            strict=True,
        ):
            if status.get("dead"):
                self._actors[name] = self._create(name, cls)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(
                asyncio.gather(
                    *(a.adopt.remote(self.id, self.generation) for a in self._actors.values())
                ),
                self.CALL_TIMEOUT_S,
            )

    async def health(self) -> dict[str, Any]:
        """Every actor's status (running, batches, last error...); changes nothing."""
        statuses = await asyncio.gather(*(self._call(name, "status") for name, _ in self._specs))
        return {
            "healthy": all(s.get("running") for s in statuses),
            "kafka_consumers": self.settings.kafka_consumers,
            "rabbit_consumers": self.settings.rabbit_consumers,
            "actors": {s["name"]: s for s in statuses},
        }

    def actor_names(self) -> list[str]:
        return [name for name, _ in self._specs]

    async def __call__(self, request: Request) -> JSONResponse:
        report = await self.health()
        return JSONResponse(report, status_code=200 if report["healthy"] else 503)

    async def __del__(self) -> None:
        """Kill the actors this supervisor still owns (uncommitted work is redelivered)."""
        monitor = getattr(self, "_monitor", None)
        if monitor is not None:
            monitor.cancel()
        for name, actor in getattr(self, "_actors", {}).items():
            with contextlib.suppress(Exception):
                owner = await asyncio.wait_for(actor.owned_by.remote(), self.CALL_TIMEOUT_S)
                if owner == self.id:
                    ray.kill(actor, no_restart=True)
                    logger.info("stopped consumer %s", name)
