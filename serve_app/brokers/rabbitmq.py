"""Everything that speaks AMQP to RabbitMQ: topology, connections, the chunk writer, the
consumer source, dead letters and the depth probe (aio_pika is imported nowhere else).

Topology: a durable fanout exchange feeding a durable quorum queue with no delivery limit,
and a dead-letter exchange and queue; the consumers dead-letter poison explicitly, with its
reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any, Self, TypeVar
from urllib.parse import quote

import aio_pika
import httpx
from aio_pika import RobustConnection
from aio_pika.abc import (
    AbstractChannel,
    AbstractConnection,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractQueue,
)

from serve_app.brokers.base import (
    POISON_REASON_HEADER,
    ChunkWriter,
    DeadLetter,
    Delivery,
    Envelope,
    Skipped,
)
from serve_app.errors import ConnectFailed, connect_reason, describe
from serve_app.model.backlog import BacklogReading, BrokerLimits, PartBacklog
from serve_app.model.codec import Chunk
from serve_app.model.health import (
    READ_TIMEOUT_S,
    TOOLING_TIMEOUT_S,
    close_quietly,
    failed,
    healthy,
)
from serve_app.settings import Settings, tls_context

Message = AbstractIncomingMessage
"""What a RabbitMQ delivery's ``origin`` is."""

logger = logging.getLogger(__name__)

BATCH_WINDOW_S = 0.05
"""How long a consumer's batch waits to fill up after its first delivery."""

T = TypeVar("T")


# --- connections and topology ---------------------------------------------------------------


class FailoverConnection(RobustConnection):
    """A robust connection to a cluster: each reconnect goes to the next node of ``urls``,
    so losing the node it was on moves it to another (RobustConnection alone would retry
    the lost node until it is back)."""

    def __init__(self, url: Any, *, urls: Sequence[str], **kwargs: Any) -> None:
        super().__init__(url, **kwargs)
        self.node_urls = [type(self.url)(u) for u in urls]  # aio-pika's own URL type
        self.attempts = 0

    async def _RobustConnection__connect_transport(self) -> None:
        # RobustConnection's one connect step (name-mangled): every attempt, first and
        # reconnects alike, goes here; the node is chosen, then the step runs as it is
        self.url = self.node_urls[self.attempts % len(self.node_urls)]
        self.attempts += 1
        await RobustConnection._RobustConnection__connect_transport(self)  # type: ignore[attr-defined]


async def open_connection(
    settings: Settings, name: str, *, robust: bool = True, timeout: float | None = None
) -> AbstractConnection:
    """A named connection (amqps with ``rabbitmq_tls``), opened within ``timeout`` (default
    ``connect_timeout_s``); a failure is a :class:`ConnectFailed` naming the server and the
    cause (refused login, untrusted certificate), never the password."""
    opener = aio_pika.connect_robust if robust else aio_pika.connect
    timeout = timeout or settings.connect_timeout_s
    urls = settings.rabbitmq_urls
    failure: Exception | None = None
    for start in range(len(urls)):  # a cluster: each node in turn until one answers
        order = urls[start:] + urls[:start]
        options: dict[str, Any] = {}
        if robust and len(urls) > 1:
            options["connection_class"] = functools.partial(FailoverConnection, urls=order)
        try:
            return await opener(
                order[0],
                timeout=timeout,
                ssl_context=settings.tls_context_for("rabbitmq"),
                client_properties={"connection_name": name},
                **options,
            )
        except Exception as exc:
            failure = exc
    if failure is not None:
        reason = connect_reason(failure, timeout)
        password = settings.rabbitmq_password.get_secret_value()
        if password:
            reason = reason.replace(password, "***")
        raise ConnectFailed("rabbitmq", settings.rabbitmq_address, reason) from failure
    raise ConnectFailed("rabbitmq", settings.rabbitmq_address, "no node address")


async def connect(
    settings: Settings,
    name: str,
    setup: Callable[[AbstractChannel], Awaitable[T]],
    *,
    robust: bool = True,
    timeout: float | None = None,
    **channel_options: Any,
) -> tuple[AbstractConnection, T]:
    """Open a named connection and one channel, then ``setup`` on it; a failure anywhere
    closes the connection again. A robust connection re-opens itself and its channels
    after a broker restart."""
    connection = await open_connection(settings, name, robust=robust, timeout=timeout)
    try:
        channel = await connection.channel(**channel_options)
        return connection, await setup(channel)
    except BaseException:
        with contextlib.suppress(Exception):
            await connection.close()
        raise


def tweet_queue_arguments(settings: Settings, server_version: str) -> dict[str, object]:
    """A quorum queue that never dead-letters a good tweet: poison is dead-lettered by the
    consumers, explicitly, with its reason. A delivery limit would also count the
    redeliveries of good messages after consumer restarts (RabbitMQ 4 sets 20 by default:
    -1 turns it off; 3.x has none unless asked)."""
    arguments: dict[str, object] = {
        "x-queue-type": "quorum",
        "x-dead-letter-exchange": settings.rabbitmq_dead_letter_exchange,
    }
    major = server_version.split(".", 1)[0]
    if major.isdigit() and int(major) >= 4:
        arguments["x-delivery-limit"] = -1
    return arguments


async def server_version(channel: AbstractChannel) -> str:
    """The broker's version, as it announced itself when the connection opened."""
    underlay = await channel.get_underlay_channel()
    version = underlay.connection.server_properties.get("version", b"")
    return version.decode() if isinstance(version, bytes) else str(version)


async def declare_rabbit_topology(
    channel: AbstractChannel, settings: Settings
) -> tuple[AbstractExchange, AbstractQueue]:
    """Declare (idempotently) exchange, quorum queue and dead-letter path; return both ends.

    A tweet queue made by an earlier release (with ``x-delivery-limit: 3``) is used as it is
    (a declaration with other arguments would be refused); docs/operations.md "Migrating the tweet
    queue" says how to replace it.
    """
    dead_letters = await channel.declare_exchange(
        settings.rabbitmq_dead_letter_exchange, aio_pika.ExchangeType.FANOUT, durable=True
    )
    dlq = await _dead_letter_queue(channel, settings)
    await dlq.bind(dead_letters)
    exchange = await channel.declare_exchange(
        settings.rabbitmq_exchange, aio_pika.ExchangeType.FANOUT, durable=True
    )
    queue = await _tweet_queue(channel, settings)
    await queue.bind(exchange)
    return exchange, queue


def dead_letter_queue_arguments(settings: Settings) -> dict[str, object]:
    """A quorum queue bounded in bytes and letters that refuses a publish once full (the
    publish is nacked, the letter stays in the store's outbox, visible), so dead letters
    can never fill the broker's disk and block every publisher with a disk alarm."""
    return {
        "x-queue-type": "quorum",
        "x-max-length-bytes": settings.rabbitmq_dead_letter_max_bytes,
        "x-max-length": settings.rabbitmq_dead_letter_max_length,
        "x-overflow": "reject-publish",
    }


async def _dead_letter_queue(channel: AbstractChannel, settings: Settings) -> AbstractQueue:
    """The bounded dead-letter queue. One an earlier release declared unbounded cannot be
    redeclared (queue arguments never change): it is used as it is and a warning names the
    policy that bounds it in place (docs/operations.md)."""
    name = settings.rabbitmq_dead_letter_queue
    with contextlib.suppress(aio_pika.exceptions.ChannelPreconditionFailed):
        return await channel.declare_queue(
            name, durable=True, arguments=dead_letter_queue_arguments(settings)
        )
    logger.warning(
        "RabbitMQ queue %s exists without the dead-letter bounds (an earlier release made "
        "it): bound it with a policy, e.g. rabbitmqctl set_policy weather-dead-letters "
        "'^%s$' '{\"max-length-bytes\":%d,\"max-length\":%d,\"overflow\":\"reject-publish\"}' "
        "--apply-to queues",
        name, name, settings.rabbitmq_dead_letter_max_bytes,
        settings.rabbitmq_dead_letter_max_length,
    )  # fmt: skip
    await channel.reopen()
    return await channel.declare_queue(name, passive=True)


async def _tweet_queue(channel: AbstractChannel, settings: Settings) -> AbstractQueue:
    with contextlib.suppress(aio_pika.exceptions.ChannelPreconditionFailed):
        return await channel.declare_queue(
            settings.rabbitmq_queue,
            durable=True,
            arguments=tweet_queue_arguments(settings, await server_version(channel)),
        )
    # the refusal closed the channel: reopen it and take the queue as it is
    await channel.reopen()
    return await channel.declare_queue(settings.rabbitmq_queue, passive=True)


# --- writer ---------------------------------------------------------------------------------


class RabbitChunkWriter(ChunkWriter):
    """One persistent, mandatory message per chunk (any countries) to the durable fanout
    exchange, each confirmed."""

    broker = "rabbitmq"

    def __init__(self, config: Settings) -> None:
        super().__init__(config)
        self._connection: AbstractConnection | None = None
        self._exchange: AbstractExchange | None = None

    def _connected(self) -> bool:
        return self._exchange is not None

    async def _connect(self) -> None:
        async def declare(channel: AbstractChannel) -> AbstractExchange:
            exchange, _ = await declare_rabbit_topology(channel, self.settings)
            return exchange

        # on_return_raises: a message the broker could not route is an error
        self._connection, self._exchange = await connect(
            self.settings,
            "weather-writer",
            declare,
            timeout=self.settings.publish_timeout_s,
            publisher_confirms=True,
            on_return_raises=True,
        )

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


# --- consumer source ------------------------------------------------------------------------


class RabbitDeadLetters:
    """Dead letters on a connection of their own, every publish confirmed within
    ``publish_timeout_s``: a memory or disk alarm blocks publishing connections, and must
    never stall the consuming one (whose acks would then never be read)."""

    def __init__(self, settings: Settings, connection_name: str) -> None:
        self.settings = settings
        self.connection_name = connection_name
        self._connection: AbstractConnection | None = None
        self._exchange: AbstractExchange | None = None
        self._closing: set[asyncio.Task[None]] = set()

    async def _exchange_ready(self) -> AbstractExchange:
        if self._exchange is None:
            self._connection, self._exchange = await connect(
                self.settings,
                self.connection_name,
                lambda channel: channel.get_exchange(self.settings.rabbitmq_dead_letter_exchange),
                timeout=self.settings.publish_timeout_s,
                publisher_confirms=True,
                on_return_raises=True,
            )
        return self._exchange

    def identity(self, origin: Message) -> None:
        """None: a message id is the publisher's, not unique (any client may reuse one)."""
        return None

    def redelivered(self, origin: Message) -> bool:
        """The broker's flag: this message may have been delivered before."""
        return bool(origin.redelivered)

    def envelope(self, letter: DeadLetter[Message]) -> Envelope:
        """The original headers (as bounded text), id and reason; nothing taken from the
        message can make the publish fail (an AMQP message id is a shortstr: 255 bytes)."""
        origin = letter.origin
        headers = dict(origin.headers or {})
        headers.pop(POISON_REASON_HEADER, None)
        return Envelope.of(
            letter.body, letter.reason, letter.id or origin.message_id, list(headers.items())
        )

    async def send(self, envelopes: Sequence[Envelope]) -> None:
        """Publish ``mandatory`` and wait for every confirmation: a letter no queue took
        (a missing binding: returned) or the full dead-letter queue refused (nacked) is a
        failure, so it stays in the outbox. A failure drops the connection, so the next
        send starts afresh (a channel closed by the broker, e.g. a missing exchange, would
        otherwise fail every later send)."""
        try:
            async with asyncio.timeout(self.settings.publish_timeout_s):
                exchange = await self._exchange_ready()
                await asyncio.gather(
                    *(exchange.publish(amqp_message(e), "", mandatory=True) for e in envelopes)
                )
        except BaseException:
            self._drop()
            raise

    def _drop(self) -> None:
        """Forget the connection and close it in the background, bounded."""
        connection, self._connection, self._exchange = self._connection, None, None
        if connection is not None:
            closing = asyncio.wait_for(connection.close(), self.settings.publish_timeout_s)
            task = asyncio.ensure_future(close_quietly(closing))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    async def close(self) -> None:
        if self._connection is not None:
            with contextlib.suppress(Exception):
                await self._connection.close()
        self._connection, self._exchange = None, None


def amqp_message(envelope: Envelope) -> aio_pika.Message:
    """One persistent dead letter: text headers only, the reason among them."""
    headers: dict[str, Any] = dict(envelope.headers)
    headers[POISON_REASON_HEADER] = envelope.reason
    return aio_pika.Message(
        body=envelope.body,
        headers=headers,  # type: ignore[arg-type]
        message_id=envelope.id,
        content_type="application/json",
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
    )


class RabbitSource:
    """A consumer on the quorum queue; a batch is acked after it was handled."""

    def __init__(
        self,
        inbox: asyncio.Queue[Message],
        dead_letters: RabbitDeadLetters,
        settings: Settings,
        report: Any,
    ) -> None:
        self.inbox = inbox
        self.dead_letters = dead_letters
        self.settings = settings
        self.report = report

    async def fetch(self) -> list[Delivery[Message]]:
        """Up to ``consumer_batch_size`` deliveries: the first one plus whatever arrives
        within a short window after it."""
        inbox = self.inbox
        try:
            first = await asyncio.wait_for(inbox.get(), timeout=1.0)
        except TimeoutError:
            return []
        batch = [first]
        limit = self.settings.consumer_batch_size
        loop = asyncio.get_running_loop()
        deadline = loop.time() + BATCH_WINDOW_S
        while len(batch) < limit:
            while len(batch) < limit and not inbox.empty():
                batch.append(inbox.get_nowait())
            remaining = deadline - loop.time()
            if len(batch) >= limit or remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(inbox.get(), timeout=remaining))
            except TimeoutError:
                break
        return [Delivery(m.body, m) for m in batch]

    async def hold(self) -> None:
        """Nothing to do: unacked deliveries stay with this consumer (prefetch bounds them)."""

    def take_skipped(self) -> list[Skipped]:
        """Nothing is skipped silently here: the queue has no length limit and no message
        TTL, so RabbitMQ never drops a message it confirmed (docs/guarantees.md)."""
        return []

    async def settle(self, batch: Sequence[Delivery[Message]]) -> bool:
        """Ack everything up to the last delivery of each live channel (one frame each).

        After a reconnect a batch may hold deliveries of the closed channel too: the broker
        has requeued those already and the store ignores ids it has counted.
        """
        last_per_channel: dict[int, Message] = {}
        acked_all = True
        for delivery in batch:
            try:
                channel = delivery.origin.channel
            except Exception:  # channel closed: already requeued by the broker
                acked_all = False
                continue
            last_per_channel[id(channel)] = delivery.origin
        for message in last_per_channel.values():
            try:
                await message.ack(multiple=True)
            except Exception as exc:
                self.report(exc, "ack failed; deliveries will be redelivered")
                acked_all = False
        return acked_all


@contextlib.asynccontextmanager
async def open_rabbit_source(
    settings: Settings, name: str, report: Any
) -> AsyncIterator[RabbitSource]:
    """A consumer on the tweet queue plus its own dead-letter connection, closed on exit."""

    async def consume_from(channel: AbstractChannel) -> AbstractQueue:
        await channel.set_qos(prefetch_count=settings.consumer_batch_size * 2)
        _, queue = await declare_rabbit_topology(channel, settings)
        return queue

    connection, queue = await connect(settings, name, consume_from)
    dead_letters = RabbitDeadLetters(settings, f"{name}-dead-letters")
    try:
        inbox: asyncio.Queue[Message] = asyncio.Queue()
        tag = await queue.consume(inbox.put, no_ack=False)
        try:
            yield RabbitSource(inbox, dead_letters, settings, report)
        finally:
            with contextlib.suppress(Exception):
                await queue.cancel(tag)
    finally:
        await dead_letters.close()
        with contextlib.suppress(Exception):
            await connection.close()


# --- probe ----------------------------------------------------------------------------------


class RabbitProbe:
    """Ready messages in the tweet queue and in the dead-letter queue (passive declares), and
    the tweet queue's backlog and limits (the management API)."""

    def __init__(self, settings: Settings, timeout_s: float = READ_TIMEOUT_S) -> None:
        self.settings = settings
        self.timeout_s = timeout_s
        self._connection: AbstractConnection | None = None
        self._channel: AbstractChannel | None = None
        self._management: httpx.AsyncClient | None = None

    async def _open_channel(self) -> AbstractChannel:
        """The open channel; a closed connection or channel (e.g. 404) is reopened."""
        if self._connection is None or self._connection.is_closed:
            await self.close()

            async def keep(channel: AbstractChannel) -> AbstractChannel:
                return channel

            self._connection, self._channel = await connect(
                self.settings,
                "weather-monitor",
                keep,
                robust=False,
                timeout=self.timeout_s,
                publisher_confirms=False,
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

    async def backlog(self) -> BacklogReading:
        """The tweet queue's messages, bytes and limits from the management API: read-only,
        so no delivery (a basic.get would count as one on a quorum queue) and no side
        effect. Its figures are as fresh as RabbitMQ's statistics (every 5 s by default)."""
        if self._management is None:
            self._management = management_client(self.settings, self.timeout_s)
        vhost, name = (
            quote(v, safe="") for v in (self.settings.rabbitmq_vhost, self.settings.rabbitmq_queue)
        )
        urls = management_urls(self.settings)
        failures = []
        async with asyncio.timeout(self.timeout_s):
            for url in urls:  # the first node that answers (any node knows every queue)
                try:
                    response = await self._management.get(
                        f"{url}/api/queues/{vhost}/{name}", timeout=self.timeout_s / len(urls)
                    )
                    response.raise_for_status()
                    return queue_backlog(response.json(), time.time())
                except httpx.HTTPError as exc:
                    failures.append(f"{url}: {describe(exc)}")
        raise ConnectionError(f"no management API answered ({'; '.join(failures)})")

    async def read(self) -> dict[str, Any]:
        """Health, depth and dead letters in one bounded round; errors become the health."""
        try:
            async with asyncio.timeout(self.timeout_s):
                depth = await self._ready(self.settings.rabbitmq_queue)
                dead = await self._ready(self.settings.rabbitmq_dead_letter_queue)
        except Exception as exc:
            await self.close()
            return {"health": failed(exc, self.timeout_s), "depth": None, "dead_letters": None}
        return {"health": healthy(), "depth": depth, "dead_letters": dead}

    async def close(self) -> None:
        connection, management = self._connection, self._management
        self._connection = self._channel = self._management = None
        if connection is not None:
            await close_quietly(connection.close())
        if management is not None:
            await close_quietly(management.aclose())

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


# --- backlog as the broker measures it ------------------------------------------------------


def smallest_limit(queue: Mapping[str, Any], argument: str, policy_key: str) -> int | None:
    """A queue limit as RabbitMQ applies it: the smaller of its x-argument and its effective
    policy's (operator policies merged in); None when neither sets it."""
    arguments = queue.get("arguments") or {}
    policy = queue.get("effective_policy_definition") or {}
    values = [arguments.get(argument), policy.get(policy_key)]
    return min((v for v in values if type(v) is int and v >= 0), default=None)


def queue_limits(queue: Mapping[str, Any]) -> BrokerLimits:
    """What RabbitMQ drops (or refuses) a queue's messages beyond: its length, its bytes and
    its message TTL. A quorum queue does not tell its head message's age."""
    ttl_ms = smallest_limit(queue, "x-message-ttl", "message-ttl")
    return BrokerLimits(
        part_bytes=smallest_limit(queue, "x-max-length-bytes", "max-length-bytes"),
        part_messages=smallest_limit(queue, "x-max-length", "max-length"),
        age_s=None if ttl_ms is None else ttl_ms / 1000,
        ages_measured="head_message_timestamp" in queue,
    )


def queue_backlog(queue: Mapping[str, Any], now_s: float) -> BacklogReading:
    """A queue's reading from the management API's ``GET /api/queues/{vhost}/{name}``: its
    messages and their bytes (ready and unacknowledged: neither is counted yet), the age of
    its head message where RabbitMQ tracks it (classic queues), and its limits."""
    messages = int(queue.get("messages") or 0)
    head = queue.get("head_message_timestamp")
    timestamped = messages and isinstance(head, int | float) and not isinstance(head, bool)
    age = max(0.0, now_s - head) if timestamped else None
    part = PartBacklog(str(queue.get("name")), messages, int(queue.get("message_bytes") or 0), age)
    return BacklogReading((part,), queue_limits(queue))


def management_urls(settings: Settings) -> list[str]:
    """Where RabbitMQ's management HTTP API answers, in the order tried:
    ``rabbitmq_management_url`` (comma-separated, one per node of a cluster), else port
    15672 of ``rabbitmq_host`` (on Kubernetes a Service in front of every node)."""
    given = settings.rabbitmq_management_url.split(",")
    urls = [url.strip().rstrip("/") for url in given if url.strip()]
    return urls or [f"http://{settings.rabbitmq_host}:15672"]


def management_client(settings: Settings, timeout_s: float) -> httpx.AsyncClient:
    """A client of RabbitMQ's management HTTP API, as the app's user (it needs the
    ``monitoring`` or ``management`` tag), verifying TLS as the AMQP connection does."""
    verify: ssl.SSLContext | bool = True
    if any(url.startswith("https:") for url in management_urls(settings)):
        verify = settings.tls_context_for("rabbitmq") or tls_context()
    return httpx.AsyncClient(
        auth=(settings.rabbitmq_user, settings.rabbitmq_password.get_secret_value()),
        timeout=timeout_s,
        verify=verify,
    )


async def rabbit_depth(settings: Settings, timeout_s: float = TOOLING_TIMEOUT_S) -> int:
    """One-shot (tooling): messages ready in the tweet queue (excludes unacked deliveries)."""
    async with RabbitProbe(settings, timeout_s) as probe:
        return await probe.depth()
