"""Everything that speaks Kafka: topics, producers, the chunk writer, the consumer source,
dead letters and the lag probe (aiokafka is imported nowhere else).

Topics: the tweet topic (``kafka_partitions`` partitions, keyed by country, so a country's
tweets stay in order) and a dead-letter topic, both created with ``kafka_replication_factor``
replicas and ``kafka_min_insync_replicas``.

Every client takes :func:`kafka_connection` (servers, security protocol, SASL, the TLS
context from ``Settings.tls_context_for``) and is started by :func:`start_kafka_client`: bounded
by ``connect_timeout_s``, a failure is a :class:`~serve_app.errors.ConnectFailed` naming the
servers and the cause (an untrusted certificate, a refused login), never a hang.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any, Self

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.conn import create_conn
from aiokafka.errors import (
    CommitFailedError,
    KafkaError,
    NoOffsetForPartitionError,
    OffsetOutOfRangeError,
    TopicAlreadyExistsError,
    for_code,
)
from aiokafka.protocol.api import Request, RequestStruct, Response
from aiokafka.protocol.types import Array, Boolean, Int16, Int32, Int64, Schema, String
from aiokafka.structs import ConsumerRecord

from serve_app.brokers.base import (
    POISON_REASON_HEADER,
    ChunkWriter,
    DeadLetter,
    Delivery,
    Envelope,
    Skipped,
)
from serve_app.errors import ConfigError, ConnectFailed, connect_reason, describe
from serve_app.model.backlog import BacklogReading, BrokerLimits, PartBacklog
from serve_app.model.codec import Chunk
from serve_app.model.health import (
    READ_TIMEOUT_S,
    TOOLING_TIMEOUT_S,
    close_quietly,
    failed,
    healthy,
)
from serve_app.settings import Settings

ORIGINAL_TOPIC_HEADER = "x-original-topic"
ORIGINAL_PARTITION_HEADER = "x-original-partition"
ORIGINAL_OFFSET_HEADER = "x-original-offset"
logger = logging.getLogger(__name__)
TOPIC_RESOURCE = ConfigResourceType.TOPIC
MAX_FETCH_ROUNDS = 100
"""Fetches of 100 ms at most that :func:`records_at` waits for its records."""

Record = ConsumerRecord
"""What a Kafka delivery's ``origin`` is."""


# --- connections ---------------------------------------------------------------------------


def kafka_connection(settings: Settings) -> dict[str, Any]:
    """What every aiokafka client of this module is given to reach the cluster: the
    bootstrap servers and, unless PLAINTEXT, the security protocol, TLS context and SASL
    login (the password is read here only, into the client)."""
    options: dict[str, Any] = {"bootstrap_servers": settings.kafka_bootstrap_servers}
    protocol = settings.kafka_security_protocol
    if protocol == "PLAINTEXT":
        return options
    options["security_protocol"] = protocol
    options["ssl_context"] = settings.tls_context_for("kafka")
    if protocol.startswith("SASL_"):
        options["sasl_mechanism"] = settings.kafka_sasl_mechanism
        options["sasl_plain_username"] = settings.kafka_sasl_username
        options["sasl_plain_password"] = settings.kafka_sasl_password.get_secret_value()
    return options


async def start_kafka_client(
    settings: Settings, start: Callable[[], Awaitable[Any]], stop: Callable[[], Awaitable[Any]]
) -> None:
    """Run a client's ``start`` within ``connect_timeout_s``; on failure ``stop`` it and
    raise :class:`ConnectFailed` with the cause (aiokafka only logs why a bootstrap failed,
    so :func:`connect_refusal` finds it out)."""
    try:
        async with asyncio.timeout(settings.connect_timeout_s):
            await start()
    except Exception as exc:
        await close_quietly(stop())
        reason = await connect_refusal(settings) or connect_reason(exc, settings.connect_timeout_s)
        address = f"{settings.kafka_security_protocol}://{settings.kafka_bootstrap_servers}"
        raise ConnectFailed("kafka", address, reason) from exc


async def connect_refusal(settings: Settings) -> str | None:
    """Why one connection to the first bootstrap server fails (TLS handshake, SASL login,
    refused), or None if it works: one bounded attempt, as the client makes it."""
    options = kafka_connection(settings)
    host, _, port = options.pop("bootstrap_servers").split(",")[0].strip().rpartition(":")
    try:
        async with asyncio.timeout(settings.connect_timeout_s):
            connection = await create_conn(
                host.strip("[]"),
                int(port),
                request_timeout_ms=int(settings.connect_timeout_s * 1000),
                **options,
            )
    except Exception as exc:
        return connect_reason(exc, settings.connect_timeout_s)
    connection.close()
    return None


# --- topics and producers -------------------------------------------------------------------


async def ensure_kafka_topics(settings: Settings) -> None:
    """Create the tweet and dead-letter topics if absent (as the seed's writers did), with
    the configured replication, the dead-letter topic keeping letters
    ``kafka_dead_letter_retention_ms``; of a topic that exists only the dead-letter topic's
    retention is raised to that (:func:`keep_dead_letters`)."""
    admin = AIOKafkaAdminClient(**kafka_connection(settings), request_timeout_ms=10_000)
    await start_kafka_client(settings, admin.start, admin.close)
    try:
        existing = set(await admin.list_topics())
        wanted = {
            settings.kafka_topic: settings.kafka_partitions,
            settings.kafka_dead_letter_topic: 1,
        }
        missing = [
            NewTopic(
                name,
                num_partitions=partitions,
                replication_factor=settings.kafka_replication_factor,
                topic_configs=topic_configs(settings, name),
            )
            for name, partitions in wanted.items()
            if name not in existing
        ]
        if missing:
            with contextlib.suppress(TopicAlreadyExistsError):  # another replica won the race
                refused = topic_refusals(await admin.create_topics(missing))
                if refused:
                    raise ConfigError(f"kafka refused to create {'; '.join(refused)}")
        if settings.kafka_dead_letter_topic in existing:
            await keep_dead_letters(admin, settings)
    finally:
        await admin.close()


def topic_configs(settings: Settings, topic: str) -> dict[str, str]:
    """The settings a topic the app creates gets: its in-sync minimum and, for the
    dead-letter topic, its own retention (not the broker's, often a day)."""
    configs = {"min.insync.replicas": str(settings.kafka_min_insync_replicas)}
    if topic == settings.kafka_dead_letter_topic:
        configs["retention.ms"] = str(settings.kafka_dead_letter_retention_ms)
    return configs


DYNAMIC_TOPIC_CONFIG = 1
"""DescribeConfigs' source of a setting made on the topic itself."""


def topic_overrides(response: Any) -> dict[str, str]:
    """The settings made on the topic itself, from one DescribeConfigs answer."""
    [(error_code, message, _, name, entries)] = response.resources
    if error_code:
        raise for_code(error_code)(f"DescribeConfigs {name}: {message}")
    return {e[0]: e[1] for e in entries if e[3] == DYNAMIC_TOPIC_CONFIG and e[1] is not None}


def retention_short(overrides: Mapping[str, str], effective: Mapping[str, str], want: int) -> bool:
    """Whether the topic deletes letters sooner than ``want`` ms (-1: never deletes)."""
    current = int(overrides.get("retention.ms", effective.get("retention.ms", "-1")))
    return 0 <= current < want


async def keep_dead_letters(admin: AIOKafkaAdminClient, settings: Settings) -> None:
    """Raise an existing dead-letter topic's retention to ``kafka_dead_letter_retention_ms``
    (a topic of an earlier release inherits the broker's). AlterConfigs replaces all of a
    topic's own settings, so the ones it has are sent along. A broker that refuses (no
    ALTER_CONFIGS right on a managed cluster) is reported in the log, not fatal."""
    topic = settings.kafka_dead_letter_topic
    want = settings.kafka_dead_letter_retention_ms
    try:
        [described] = await admin.describe_configs([ConfigResource(TOPIC_RESOURCE, topic)])
        overrides = topic_overrides(described)
        if not retention_short(overrides, config_values(described), want):
            return
        changed = {**overrides, "retention.ms": str(want)}
        responses = await admin.alter_configs([ConfigResource(TOPIC_RESOURCE, topic, changed)])
        for response in responses:
            for code, message, *_ in response.resources:
                if code:
                    raise for_code(code)(message)
        logger.info("raised the retention of Kafka topic %s to %d ms", topic, want)
    except Exception as exc:
        logger.warning(
            "the Kafka dead-letter topic %s keeps letters less than %d ms and could not be "
            "altered (%s): set its retention.ms (docs/operations.md)",
            topic, want, describe(exc),
        )  # fmt: skip


def topic_refusals(response: Any) -> list[str]:
    """Each topic a CreateTopics response refused, with the broker's reason (e.g. more
    replicas than brokers); a topic that already exists (another replica made it) is fine."""
    refusals = []
    for topic, code, *message in getattr(response, "topic_errors", []):
        if code in (0, TopicAlreadyExistsError.errno):
            continue
        reason = f"{topic}: {for_code(code).__name__}"
        refusals.append(f"{reason}: {message[0]}" if message and message[0] else reason)
    return refusals


async def start_producer(settings: Settings, **options: Any) -> AIOKafkaProducer:
    """A started idempotent producer (acks=all): every send is confirmed by all in-sync
    replicas and a retried send is never written twice. Stopped again if it cannot start."""
    producer = AIOKafkaProducer(
        **kafka_connection(settings), acks="all", enable_idempotence=True, **options
    )
    try:
        await start_kafka_client(settings, producer.start, producer.stop)
    except asyncio.CancelledError:
        await close_quietly(producer.stop())
        raise
    return producer


# --- writer ---------------------------------------------------------------------------------


class ProducerSlot:
    """The current idempotent producer of a writer or a dead-letter sink, started on first
    use. A failed send can leave an idempotent producer's sequence numbers out of step with
    the broker's (every later send then fails with OutOfOrderSequenceNumber), so a failure
    retires the producer it happened on, and only that one: sends in flight on it finish or
    fail on their own while it stops in the background, and a failure on an already retired
    producer leaves the current one alone (no cascade)."""

    def __init__(self, start: Callable[[], Awaitable[Any]], stop_timeout_s: float) -> None:
        self._start = start
        self._stop_timeout_s = stop_timeout_s
        self._lock = asyncio.Lock()
        self.current: Any | None = None
        self.replaced = 0
        self._retired: set[asyncio.Task[None]] = set()

    async def get(self) -> Any:
        """The current producer, started if there is none."""
        if self.current is None:
            async with self._lock:
                if self.current is None:
                    self.current = await self._start()
        return self.current

    def retire(self, producer: Any) -> bool:
        """Retire ``producer`` if it is still the current one; True if it was."""
        if producer is None or producer is not self.current:
            return False
        self.current = None
        self.replaced += 1
        task = asyncio.ensure_future(self._stop_quietly(producer))
        self._retired.add(task)
        task.add_done_callback(self._retired.discard)
        return True

    async def _stop_quietly(self, producer: Any) -> None:
        with contextlib.suppress(Exception):
            async with asyncio.timeout(self._stop_timeout_s):
                await producer.stop()

    async def close(self) -> None:
        producer, self.current = self.current, None
        if producer is not None:
            await self._stop_quietly(producer)
        if self._retired:
            await asyncio.gather(*self._retired, return_exceptions=True)


async def send_all(slot: ProducerSlot, records: Sequence[tuple[str, dict[str, Any]]]) -> None:
    """Send ``(topic, send options)`` records on the slot's producer and wait for every
    acknowledgement; any failure (a timeout's cancellation too) retires that producer."""
    producer = await slot.get()
    try:
        deliveries = [await producer.send(topic, **options) for topic, options in records]
        await asyncio.gather(*deliveries)
    except BaseException:
        slot.retire(producer)
        raise


class KafkaChunkWriter(ChunkWriter):
    """One record per chunk, keyed by country: a country's tweets stay in order."""

    broker = "kafka"
    by_country = True

    def __init__(self, config: Settings) -> None:
        super().__init__(config)
        self._producers = ProducerSlot(self._start_producer, config.publish_timeout_s)

    def _connected(self) -> bool:
        return self._producers.current is not None

    async def _start_producer(self) -> AIOKafkaProducer:
        """No linger: a write is already one coalesced batch (the Gateway's group commit)
        whose records are all queued before the sender runs, so waiting adds only latency
        (a write's round trip 3.0 -> 1.8 ms at p50 without it); sends that arrive while a
        request is in flight still share the next one."""
        await ensure_kafka_topics(self.settings)
        return await start_producer(
            self.settings,
            linger_ms=0,
            max_batch_size=1_048_576,
            max_request_size=2 * self.settings.max_chunk_bytes + 65_536,
            request_timeout_ms=int(self.settings.publish_timeout_s * 1000),
        )

    async def _connect(self) -> None:
        await self._producers.get()

    async def _send(self, chunks: Sequence[Chunk]) -> None:
        topic = self.settings.kafka_topic
        records = [(topic, {"value": c.body, "key": c.country.encode()}) for c in chunks]
        await send_all(self._producers, records)

    async def _probe(self) -> None:
        producer = await self._producers.get()
        metadata = await producer.client.fetch_all_metadata()
        if not metadata.brokers():
            raise ConnectionError("no Kafka broker answered a metadata request")

    async def close(self) -> None:
        await self._producers.close()


# --- consumer source ------------------------------------------------------------------------


class KafkaDeadLetters:
    """Dead letters to the dead-letter topic, each naming its reason and original record;
    on a producer of its own that a failed send replaces (:class:`ProducerSlot`), every
    send bounded by ``publish_timeout_s``."""

    def __init__(self, producers: ProducerSlot, settings: Settings) -> None:
        self.producers = producers
        self.topic = settings.kafka_dead_letter_topic
        self.timeout_s = settings.publish_timeout_s

    def identity(self, origin: Record) -> str:
        """A record's place: unique, and the same on every redelivery."""
        return f"{origin.topic}/{origin.partition}/{origin.offset}"

    def redelivered(self, origin: Record) -> bool:
        """Never asked: a record always has its identity."""
        return True

    def envelope(self, letter: DeadLetter[Record]) -> Envelope:
        record = letter.origin
        headers = [
            (ORIGINAL_TOPIC_HEADER, record.topic),
            (ORIGINAL_PARTITION_HEADER, record.partition),
            (ORIGINAL_OFFSET_HEADER, record.offset),
        ]
        return Envelope.of(letter.body, letter.reason, letter.id, headers, record.key)

    async def send(self, envelopes: Sequence[Envelope]) -> None:
        records = [(self.topic, kafka_record(e)) for e in envelopes]
        async with asyncio.timeout(self.timeout_s):
            await send_all(self.producers, records)


def kafka_record(envelope: Envelope) -> dict[str, Any]:
    """The send options of one dead letter: its reason and the original's headers."""
    headers = [(POISON_REASON_HEADER, envelope.reason)] + list(envelope.headers)
    return {
        "value": envelope.body,
        "key": envelope.key,
        "headers": [(k, v.encode()) for k, v in headers],
    }


class KafkaSource:
    """One member of the ``kafka_consumer_group`` group on the tweet topic.

    Offsets are committed after a batch is handled; while a step is retried it pauses its
    partitions but keeps polling, so the group does not evict it.
    """

    def __init__(
        self,
        consumer: AIOKafkaConsumer,
        dead_letters: KafkaDeadLetters,
        settings: Settings,
        report: Any,
    ) -> None:
        self.consumer = consumer
        self.dead_letters = dead_letters
        self.settings = settings
        self.report = report
        self._skipped: list[Skipped] = []

    async def fetch(self) -> list[Delivery[Record]]:
        try:
            batches = await self.consumer.getmany(
                timeout_ms=500, max_records=self.settings.consumer_batch_size
            )
        except OffsetOutOfRangeError as exc:  # retention deleted what the group had not read
            await self._skip_to_beginning(exc.args[0])
            return []
        except NoOffsetForPartitionError as exc:  # the group never committed here
            await self.consumer.seek_to_beginning(*exc.args)
            return []
        return [Delivery(r.value or b"", r) for records in batches.values() for r in records]

    async def _skip_to_beginning(self, positions: dict[TopicPartition, int]) -> None:
        """Continue from the earliest record still kept, and keep what was skipped for
        :meth:`take_skipped` (``auto_offset_reset="none"``: aiokafka would reset silently)."""
        starts = await self.consumer.beginning_offsets(list(positions))
        for tp, position in positions.items():
            skip = skipped_range(f"{tp.topic}/{tp.partition}", position, starts[tp])
            if skip is not None:
                self._skipped.append(skip)
            self.consumer.seek(tp, starts[tp])

    def take_skipped(self) -> list[Skipped]:
        """Skipped ranges found since the last call."""
        skipped, self._skipped = self._skipped, []
        return skipped

    async def hold(self) -> None:
        """Stop fetching but keep polling so the group does not consider this member dead;
        put back anything a rebalance let through."""
        consumer = self.consumer
        consumer.pause(*consumer.assignment())
        stray = await consumer.getmany(timeout_ms=0)
        for tp, records in stray.items():
            consumer.seek(tp, records[0].offset)

    async def settle(self, batch: Sequence[Delivery[Record]]) -> bool:
        consumer = self.consumer
        consumer.resume(*consumer.paused())
        first: dict[TopicPartition, int] = {}
        after: dict[TopicPartition, int] = {}
        for delivery in batch:
            record = delivery.origin
            tp = TopicPartition(record.topic, record.partition)
            first.setdefault(tp, record.offset)
            after[tp] = record.offset + 1
        try:
            await consumer.commit(after)
        except (CommitFailedError, KafkaError) as exc:
            # A rebalance took the partitions away (or the broker is gone): the new owner
            # re-reads from the last commit and the store ignores ids it has counted.
            self.report(exc, "commit failed; batch will be redelivered")
            for tp, offset in first.items():
                if tp in consumer.assignment():
                    with contextlib.suppress(Exception):
                        consumer.seek(tp, offset)
            return False
        return True


@contextlib.asynccontextmanager
async def open_kafka_source(
    settings: Settings, name: str, report: Any
) -> AsyncIterator[KafkaSource]:
    """A consumer-group member plus its dead-letter producer, both closed on exit."""
    await ensure_kafka_topics(settings)
    consumer = AIOKafkaConsumer(
        settings.kafka_topic,
        **kafka_connection(settings),
        group_id=settings.kafka_consumer_group,
        client_id=name,
        enable_auto_commit=False,
        auto_offset_reset="none",  # a skip past deleted records is ours to report
        isolation_level="read_committed",
        max_poll_records=settings.consumer_batch_size,
        max_poll_interval_ms=300_000,
        session_timeout_ms=10_000,
        heartbeat_interval_ms=2_000,
    )
    await start_kafka_client(settings, consumer.start, consumer.stop)
    producers = ProducerSlot(
        lambda: start_producer(settings, client_id=f"{name}-dlq"), settings.publish_timeout_s
    )
    try:
        yield KafkaSource(consumer, KafkaDeadLetters(producers, settings), settings, report)
    finally:
        await producers.close()
        await consumer.stop()


# --- probe ----------------------------------------------------------------------------------


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
            connection = kafka_connection(self.settings)
            admin = AIOKafkaAdminClient(**connection, client_id="weather-monitor")
            offsets = AIOKafkaConsumer(  # no group; also reads single records (records_at)
                **connection,
                client_id="weather-monitor",
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                max_partition_fetch_bytes=1,  # one record batch per partition, however large
            )
            try:
                await start_kafka_client(self.settings, admin.start, admin.close)
                await start_kafka_client(self.settings, offsets.start, offsets.stop)
            except BaseException:
                await close_quietly(admin.close(), offsets.stop())
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
        return sum(partition_lag(ends[tp], starts[tp], committed.get(tp)) for tp in tps)

    async def lag(self) -> int:
        """Messages of the tweet topic the consumer group has not committed yet."""
        async with asyncio.timeout(self.timeout_s):
            admin, offsets = await self._clients()
            tps = (await self._partitions(admin))[self.settings.kafka_topic]
            return await self._lag(admin, offsets, tps)

    async def backlog(self) -> BacklogReading:
        """The tweet topic's unconsumed backlog per partition as the broker measures it (log
        sizes, the group's committed offsets, the oldest unconsumed and the newest record)
        and the retention the broker applies to the topic right now."""
        topic = self.settings.kafka_topic
        async with asyncio.timeout(self.timeout_s):
            admin, offsets = await self._clients()
            tps = (await self._partitions(admin))[topic]
            [described] = await admin.describe_configs([ConfigResource(TOPIC_RESOURCE, topic)])
            limits = retention_limits(config_values(described))
            if not tps:
                return BacklogReading((), limits)
            committed = await admin.list_consumer_group_offsets(
                self.settings.kafka_consumer_group, partitions=tps
            )
            starts = await offsets.beginning_offsets(tps)
            ends = await offsets.end_offsets(tps)
            sizes = await log_sizes(admin, topic, [tp.partition for tp in tps])
            positions = {tp: group_position(starts[tp], committed.get(tp)) for tp in tps}
            behind = {tp: p for tp, p in positions.items() if p < ends[tp]}
            oldest = await records_at(offsets, behind)
            newest = await records_at(offsets, {tp: ends[tp] - 1 for tp in behind})
        now_s = time.time()
        parts = tuple(
            partition_backlog(
                tp,
                (sizes.get(tp.partition, 0), starts[tp], ends[tp], positions[tp]),
                oldest.get(tp),
                newest.get(tp),
                now_s,
            )
            for tp in tps
        )
        return BacklogReading(parts, limits)

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
            return {"health": failed(exc, self.timeout_s), "lag": None, "dead_letters": None}
        partition_count = len(partitions[self.settings.kafka_topic])
        return {
            "health": healthy(f"{partition_count} partitions"),
            "lag": lag,
            "dead_letters": sum(ends[tp] - starts[tp] for tp in dead),
        }

    async def close(self) -> None:
        admin, offsets = self._admin, self._offsets
        self._admin = self._offsets = None
        await close_quietly(admin.close() if admin else None, offsets.stop() if offsets else None)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


# --- backlog as the broker measures it ------------------------------------------------------


class _DescribeLogDirsResponseV1(Response):
    API_KEY = 35
    API_VERSION = 1
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        (
            "results",
            Array(
                ("error_code", Int16),
                ("log_dir", String("utf-8")),
                (
                    "topics",
                    Array(
                        ("name", String("utf-8")),
                        (
                            "partitions",
                            Array(
                                ("partition_index", Int32),
                                ("partition_size", Int64),
                                ("offset_lag", Int64),
                                ("is_future_key", Boolean),
                            ),
                        ),
                    ),
                ),
            ),
        ),
    )


class _DescribeLogDirsRequestV1(RequestStruct):
    API_KEY = 35
    API_VERSION = 1
    RESPONSE_TYPE = _DescribeLogDirsResponseV1
    SCHEMA = Schema(("topics", Array(("topic", String("utf-8")), ("partitions", Array(Int32)))))


class DescribeLogDirs(Request[_DescribeLogDirsRequestV1]):
    """The sizes of a topic's partitions on one broker's disks (Kafka's DescribeLogDirs, v1:
    what Kafka 4 still serves, and what aiokafka's admin client does not offer)."""

    API_KEY = 35

    def __init__(self, topic: str, partitions: Sequence[int]) -> None:
        self.topic = topic
        self.partitions = list(partitions)

    def build(self, request_struct_class: type[_DescribeLogDirsRequestV1]) -> Any:
        return request_struct_class([(self.topic, self.partitions)])


def log_sizes_of(responses: Sequence[Any], topic: str) -> dict[int, int]:
    """Each partition's log size from every broker's DescribeLogDirs answer: the largest
    replica (a follower may lag behind its leader; a future replica being moved is not the
    log), summed over a broker's log directories."""
    sizes: dict[int, int] = {}
    for response in responses:
        on_broker: dict[int, int] = {}
        for error_code, log_dir, topics in response.results:
            if error_code:
                raise for_code(error_code)(f"DescribeLogDirs {log_dir}")
            for name, partitions in topics:
                for index, size, _, future in partitions if name == topic else ():
                    if not future:
                        on_broker[index] = on_broker.get(index, 0) + size
        for index, size in on_broker.items():
            sizes[index] = max(sizes.get(index, 0), size)
    return sizes


async def log_sizes(
    admin: AIOKafkaAdminClient, topic: str, partitions: Sequence[int]
) -> dict[int, int]:
    """Ask every broker of the cluster for the sizes of the topic's partitions."""
    client = admin._client  # aiokafka's admin has no DescribeLogDirs: sent as its own calls
    nodes = [broker.nodeId for broker in client.cluster.brokers()]
    if not nodes:
        await client.force_metadata_update()
        nodes = [broker.nodeId for broker in client.cluster.brokers()]
    request = DescribeLogDirs(topic, partitions)
    responses = await asyncio.gather(*(client.send(node, request) for node in nodes))
    return log_sizes_of(responses, topic)


def config_values(response: Any) -> dict[str, str]:
    """A topic's effective settings (its own, the broker's and the defaults) from one
    DescribeConfigs answer: (name, value, read_only, source, sensitive, ...)."""
    [(error_code, message, _, name, entries)] = response.resources
    if error_code:
        raise for_code(error_code)(f"DescribeConfigs {name}: {message}")
    return {entry[0]: entry[1] for entry in entries if entry[1] is not None}


def retention_limits(configs: Mapping[str, str]) -> BrokerLimits:
    """What the broker deletes a partition's records beyond: by age ``retention.ms``; by size
    ``retention.bytes`` less one ``segment.bytes``, since whole segments go and what is left
    may be one segment short of it. -1 (or a compacted topic) is no such limit."""
    if "delete" not in configs.get("cleanup.policy", "delete"):
        return BrokerLimits()
    retention_ms = int(configs.get("retention.ms", "-1"))
    retention_bytes = int(configs.get("retention.bytes", "-1"))
    segment_bytes = int(configs.get("segment.bytes", "0"))
    return BrokerLimits(
        part_bytes=None if retention_bytes < 0 else max(0, retention_bytes - segment_bytes),
        age_s=None if retention_ms < 0 else retention_ms / 1000,
    )


def group_position(start: int, committed: Any) -> int:
    """Where the group reads next: its committed offset, else the log's start."""
    offset = committed.offset if committed is not None and committed.offset >= 0 else start
    return max(offset, start)


def record_bytes(record: Record) -> int:
    return max(0, record.serialized_key_size) + max(0, record.serialized_value_size)


def unconsumed_bytes(size: int, start: int, end: int, position: int, samples: Sequence[int]) -> int:
    """Bytes of the records from ``position`` to ``end``: Kafka tells a log's size, not the
    bytes from an offset on, so its records count at the largest of the log's mean record
    and the records sampled at both ends of the unconsumed range (a burst of large records
    after small ones is not averaged away), and never more than the whole log."""
    lag = end - position
    if lag <= 0:
        return 0
    mean = size / (end - start) if end > start else 0
    return min(size, round(lag * max(mean, *samples)))


async def records_at(
    consumer: AIOKafkaConsumer, positions: Mapping[TopicPartition, int]
) -> dict[TopicPartition, Record]:
    """The first record at or after each position (a deleted one: the oldest still kept),
    read by a consumer of no group; its partitions are paused again after, so nothing is
    fetched between readings. Bounded by the caller's timeout."""
    if not positions:
        return {}
    consumer.assign(list(positions))
    for tp, offset in positions.items():
        consumer.seek(tp, offset)
    consumer.resume(*positions)
    found: dict[TopicPartition, Record] = {}
    try:
        for _ in range(MAX_FETCH_ROUNDS):
            batches = await consumer.getmany(timeout_ms=100)
            for tp, records in batches.items():
                if records and tp not in found:
                    found[tp] = records[0]
                    consumer.pause(tp)
            if len(found) == len(positions):
                return found
    finally:
        consumer.pause(*positions)
    missing = sorted(f"{tp.topic}/{tp.partition}" for tp in positions if tp not in found)
    raise TimeoutError(f"no record fetched from {', '.join(missing)}")


def partition_backlog(
    tp: TopicPartition,
    span: tuple[int, int, int, int],
    oldest: Record | None,
    newest: Record | None,
    now_s: float,
) -> PartBacklog:
    """One partition's reading: ``span`` is (log size, start, end, the group's position);
    the oldest unconsumed record's age is the wall clock less its timestamp."""
    size, start, end, position = span
    if position >= end:
        return PartBacklog(f"{tp.topic}/{tp.partition}", 0, 0)
    samples = [record_bytes(r) for r in (oldest, newest) if r is not None]
    age = None if oldest is None else max(0.0, now_s - oldest.timestamp / 1000)
    return PartBacklog(
        f"{tp.topic}/{tp.partition}",
        end - position,
        unconsumed_bytes(size, start, end, position, samples),
        age,
    )


def skipped_range(source: str, position: int, beginning: int) -> Skipped | None:
    """What a consumer at ``position`` misses when the log now begins at ``beginning``
    (None when nothing was deleted before it: a position past the end, e.g. a recreated
    topic, re-reads from the beginning and the stores' markers deduplicate)."""
    return Skipped(source, position, beginning - 1) if position < beginning else None


def partition_lag(end: int, start: int, committed: Any) -> int:
    """End minus the group's position; a partition never committed counts from its start."""
    position = committed.offset if committed is not None and committed.offset >= 0 else start
    return max(0, end - max(position, start))


async def kafka_lag(settings: Settings, timeout_s: float = TOOLING_TIMEOUT_S) -> int:
    """One-shot (tooling): end offset minus committed offset of the group, summed."""
    async with KafkaProbe(settings, timeout_s) as probe:
        return await probe.lag()
