"""The consumer stage: long-lived Ray actors draining the brokers into the stores.

* :class:`KafkaConsumer` reads the tweet topic (one consumer group) in batches and
  records each batch in Redis; :class:`RabbitConsumer` reads the quorum queue in
  batches and records each batch in Valkey. Both write through
  :meth:`serve_app.store.TweetStore.record_batch` (one idempotent Lua call per batch).
* Offsets are committed and deliveries acked only after the store write succeeded, so
  a crash or kill redelivers and the per-id idempotency keeps the counts exact.
* Poison (undecodable or failing the schema) goes to the dead-letter topic/exchange
  with a reason and is then committed/acked with its batch; it never reaches the counts.
* A store or broker outage makes the loop retry the same batch with capped exponential
  backoff (committing/acking nothing) and resume by itself.
* :class:`ConsumerSupervisor` is the small Serve deployment that creates the detached,
  named actors (``kafka-consumer-N``, ``rabbit-consumer-N`` in namespace
  :data:`NAMESPACE`), reports their health, and kills them when the app is deleted.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aio_pika
import ray
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError
from ray import serve
from starlette.requests import Request
from starlette.responses import JSONResponse

from serve_app.codec import Poison, decode_message
from serve_app.metrics import CONSUMER_TWEETS, MetricsSink
from serve_app.ray_metrics import ray_metrics
from serve_app.settings import Settings, get_settings
from serve_app.store import CountedTweet, TweetStore, connect_redis, connect_valkey
from serve_app.topology import POISON_REASON_HEADER, declare_rabbit_topology, ensure_kafka_topics

logger = logging.getLogger(__name__)

NAMESPACE = "weather"
"""Ray namespace of the detached consumer actors (names are only unique per namespace)."""

KAFKA_ACTOR_PREFIX = "kafka-consumer-"
RABBIT_ACTOR_PREFIX = "rabbit-consumer-"

BACKOFF_START_S = 0.1
BACKOFF_MAX_S = 2.0
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


def _decode(body: bytes) -> tuple[list[CountedTweet], list[Poison]]:
    """A message (a chunk, or a v1 single tweet) as the store needs it, plus its poison."""
    decoded = decode_message(body)
    tweets = [
        CountedTweet(id=t.id, country=t.country, weather=t.weather, body=t.model_dump_json())
        for t in decoded.tweets
    ]
    return tweets, decoded.poison


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:1000]


class _Backoff:
    """Capped exponential backoff: 0.1 s, 0.2 s, ... 2 s."""

    def __init__(self) -> None:
        self.delay = BACKOFF_START_S

    def reset(self) -> None:
        self.delay = BACKOFF_START_S

    async def sleep(self) -> None:
        await asyncio.sleep(self.delay)
        self.delay = min(self.delay * 2, BACKOFF_MAX_S)


class _ConsumerLoop:
    """What both actors share: the loop task, its restart-on-crash wrapper and status."""

    kind = "consumer"

    def __init__(self, name: str, settings: Settings | None = None) -> None:
        self.name = name
        self.settings = settings or get_settings()
        self.metrics: MetricsSink = ray_metrics()
        self.started_at = time.time()
        self.batches = 0
        self.messages = 0
        self.new_tweets = 0
        self.poison = 0
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
            "poison": self.poison,
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
        backoff = _Backoff()
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

    async def _session(self, backoff: _Backoff) -> None:
        raise NotImplementedError

    def _error(self, exc: BaseException, what: str) -> None:
        self.last_error = _reason(exc)
        self.last_error_at = time.time()
        logger.warning("%s: %s: %s", self.name, what, self.last_error)

    async def _until_done(
        self, attempt: Callable[[], Awaitable[bool]], backoff: _Backoff, what: str
    ) -> bool:
        """Retry one batch step with backoff until it succeeds; returns its result."""
        backoff.reset()
        while True:
            try:
                result = await attempt()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.retrying = True
                self.retries += 1
                self._error(exc, f"{what} failed; retrying the same batch")
                await backoff.sleep()
                continue
            self.retrying = False
            return result

    def _export(self, tweets: int, new: int, poison: int) -> None:
        """What a batch did to the store, once its write succeeded (before the commit/ack:
        a redelivery after a failed commit shows up as duplicates)."""
        for outcome, value in (
            ("applied", new),
            ("duplicate", tweets - new),
            ("dead_lettered", poison),
        ):
            self.metrics.inc(CONSUMER_TWEETS, value, consumer=self.kind, outcome=outcome)

    def _count(self, batch_size: int, new: int, poison: int) -> None:
        self.batches += 1
        self.messages += batch_size
        self.new_tweets += new
        self.poison += poison
        self.last_batch_at = time.time()


class KafkaConsumer(_ConsumerLoop):
    """One member of the ``kafka_consumer_group`` group; records into Redis."""

    kind = "kafka"

    async def __init__(self, name: str, settings: Settings | None = None) -> None:  # type: ignore[misc]
        # Ray runs an async actor's async __init__ on the actor's event loop, so a
        # restarted actor starts consuming again by itself.
        super().__init__(name, settings)
        self._store = TweetStore(connect_redis(self.settings), self.settings)
        self._ensure_task()

    async def _session(self, backoff: _Backoff) -> None:
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
        batches: dict[TopicPartition, list[Any]],
        backoff: _Backoff,
    ) -> None:
        tweets: list[CountedTweet] = []
        poison: list[tuple[Any, Poison]] = []
        offsets: dict[TopicPartition, int] = {}
        size = 0
        for tp, records in batches.items():
            for record in records:
                size += 1
                good, bad = _decode(record.value or b"")
                tweets.extend(good)
                poison.extend((record, p) for p in bad)
            offsets[tp] = records[-1].offset + 1
        first = {tp: records[0].offset for tp, records in batches.items()}
        dead_lettered = False
        new = 0

        async def attempt() -> bool:
            nonlocal dead_lettered, new
            if poison and not dead_lettered:
                await self._dead_letter(producer, poison)
                dead_lettered = True
            new = await self._store.record_batch(tweets)
            return True

        async def keep_membership() -> None:
            # While retrying, stop fetching but keep polling so the group does not
            # consider this member dead; put back anything a rebalance let through.
            consumer.pause(*consumer.assignment())
            stray = await consumer.getmany(timeout_ms=0)
            for tp, records in stray.items():
                consumer.seek(tp, records[0].offset)

        backoff.reset()
        while True:
            try:
                await attempt()
                break
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.retrying = True
                self.retries += 1
                self._error(exc, "store/dead-letter write failed; retrying the same batch")
                await keep_membership()
                await backoff.sleep()
        self._export(len(tweets), new, len(poison))
        if self.retrying:
            self.retrying = False
            consumer.resume(*consumer.paused())
        try:
            await consumer.commit(offsets)
        except (CommitFailedError, KafkaError) as exc:
            # A rebalance took the partitions away (or the broker is gone): the new owner
            # re-reads from the last commit and the store ignores ids it has counted.
            self._error(exc, "commit failed; batch will be redelivered")
            for tp, offset in first.items():
                if tp in consumer.assignment():
                    with contextlib.suppress(Exception):
                        consumer.seek(tp, offset)
            return
        self._count(size, new, len(poison))

    async def _dead_letter(
        self, producer: AIOKafkaProducer, poison: list[tuple[Any, Poison]]
    ) -> None:
        s = self.settings
        futures = []
        for record, bad in poison:
            headers = [
                (POISON_REASON_HEADER, bad.reason.encode()),
                (ORIGINAL_TOPIC_HEADER, record.topic.encode()),
                (ORIGINAL_PARTITION_HEADER, str(record.partition).encode()),
                (ORIGINAL_OFFSET_HEADER, str(record.offset).encode()),
            ]
            futures.append(
                await producer.send(
                    s.kafka_dead_letter_topic, value=bad.body, key=record.key, headers=headers
                )
            )
        await asyncio.gather(*futures)


class RabbitConsumer(_ConsumerLoop):
    """A consumer on the quorum queue; records into Valkey."""

    kind = "rabbitmq"

    async def __init__(self, name: str, settings: Settings | None = None) -> None:  # type: ignore[misc]
        super().__init__(name, settings)
        self._store = TweetStore(connect_valkey(self.settings), self.settings)
        self._ensure_task()

    async def _session(self, backoff: _Backoff) -> None:
        s = self.settings
        connection = await aio_pika.connect_robust(
            s.rabbitmq_url, client_properties={"connection_name": self.name}
        )
        try:
            channel = await connection.channel(publisher_confirms=True)
            await channel.set_qos(prefetch_count=s.consumer_batch_size * 2)
            _, queue = await declare_rabbit_topology(channel, s)
            dead_letters = await channel.get_exchange(s.rabbitmq_dead_letter_exchange)
            inbox: asyncio.Queue[aio_pika.abc.AbstractIncomingMessage] = asyncio.Queue()
            tag = await queue.consume(inbox.put, no_ack=False)
            self.connected = True
            backoff.reset()
            try:
                while not self._stopping:
                    batch = await self._collect(inbox)
                    if batch:
                        await self._handle(batch, dead_letters, backoff)
            finally:
                with contextlib.suppress(Exception):
                    await queue.cancel(tag)
        finally:
            self.connected = False
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

    async def _handle(
        self,
        batch: list[aio_pika.abc.AbstractIncomingMessage],
        dead_letters: aio_pika.abc.AbstractExchange,
        backoff: _Backoff,
    ) -> None:
        tweets: list[CountedTweet] = []
        poison: list[tuple[aio_pika.abc.AbstractIncomingMessage, Poison]] = []
        for message in batch:
            good, bad = _decode(message.body)
            tweets.extend(good)
            poison.extend((message, p) for p in bad)
        dead_lettered = False
        new = 0

        async def attempt() -> bool:
            nonlocal dead_lettered, new
            if poison and not dead_lettered:
                for message, bad in poison:
                    headers = dict(message.headers or {})
                    headers[POISON_REASON_HEADER] = bad.reason
                    await dead_letters.publish(
                        aio_pika.Message(
                            body=bad.body,
                            headers=headers,
                            message_id=bad.id or message.message_id,
                            content_type=message.content_type,
                            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                        ),
                        routing_key=message.routing_key or "",
                    )
                dead_lettered = True
            new = await self._store.record_batch(tweets)
            return True

        await self._until_done(attempt, backoff, "store/dead-letter write")
        self._export(len(tweets), new, len(poison))
        if await self._ack(batch):
            self._count(len(batch), new, len(poison))

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
    """Creates the detached consumer actors and reports their health.

    ``GET /consumers`` returns :meth:`health` as JSON (503 when an actor is not running).
    Deleting the application kills the actors.
    """

    CHECK_INTERVAL_S = 5.0
    CALL_TIMEOUT_S = 10.0

    async def __init__(self, settings: Settings | None = None) -> None:  # type: ignore[misc]
        self.settings = settings or get_settings()
        validate_consumer_counts(self.settings)
        self._specs = _actor_specs(self.settings)
        self._actors: dict[str, Any] = {}
        self._last: dict[str, dict[str, Any]] = {}
        for name in _surplus_actor_names({name for name, _ in self._specs}):
            with contextlib.suppress(Exception):
                ray.kill(ray.get_actor(name, namespace=NAMESPACE), no_restart=True)
        for name, cls in self._specs:
            self._actors[name] = self._create(name, cls)
        await self.health()
        self._monitor = asyncio.get_running_loop().create_task(self._watch())

    def _create(self, name: str, cls: type) -> Any:
        return _remote_class(cls).options(name=name, **ACTOR_OPTIONS).remote(name, self.settings)

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.CHECK_INTERVAL_S)
            try:
                await self.health()
            except Exception:
                logger.exception("consumer health check failed")

    async def _check(self, name: str, cls: type) -> dict[str, Any]:
        try:
            status = await asyncio.wait_for(
                self._actors[name].start.remote(), timeout=self.CALL_TIMEOUT_S
            )
        except TimeoutError:
            status = {"name": name, "running": False, "last_error": "health check timed out"}
        except (ray.exceptions.ActorDiedError, ray.exceptions.ActorUnavailableError) as exc:
            # Killed for good (e.g. no_restart=True) or the old handle is stale:
            # get or create it again; it starts consuming in its __init__.
            self._actors[name] = self._create(name, cls)
            status = {"name": name, "running": False, "last_error": f"recreated: {exc!s}"[:500]}
        except Exception as exc:
            status = {"name": name, "running": False, "last_error": _reason(exc)}
        return status

    async def health(self) -> dict[str, Any]:
        """Every actor's status (running, batches, last error...); restarts stopped loops."""
        statuses = await asyncio.gather(*(self._check(name, cls) for name, cls in self._specs))
        self._last = {s["name"]: s for s in statuses}
        return {
            "healthy": all(s.get("running") for s in statuses),
            "kafka_consumers": self.settings.kafka_consumers,
            "rabbit_consumers": self.settings.rabbit_consumers,
            "actors": self._last,
        }

    def actor_names(self) -> list[str]:
        return [name for name, _ in self._specs]

    async def __call__(self, request: Request) -> JSONResponse:
        report = await self.health()
        return JSONResponse(report, status_code=200 if report["healthy"] else 503)

    def shutdown(self) -> None:
        """Kill every consumer actor (uncommitted work is redelivered to the next ones)."""
        monitor = getattr(self, "_monitor", None)
        if monitor is not None:
            monitor.cancel()
        for name, _ in getattr(self, "_specs", []):
            with contextlib.suppress(Exception):
                ray.kill(ray.get_actor(name, namespace=NAMESPACE), no_restart=True)

    def __del__(self) -> None:
        self.shutdown()
