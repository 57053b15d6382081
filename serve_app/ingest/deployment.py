"""The ``Gateway`` deployment: the ingress of application ``ingest`` (HTTP :8000, gRPC :9000).

A thin adapter. The REST face (:mod:`serve_app.ingest.rest`) and the gRPC face
(:mod:`serve_app.ingest.grpc`) run over one :class:`serve_app.ingest.core.Ingest`, whose two writers
are the ``KafkaWriter`` and ``RabbitWriter`` deployments passed in with ``.bind()``. What the
adapter adds is Serve's part: the one coalescing layer for both faces (the core's group
commit, :class:`~serve_app.ingest.core.Coalescer`), tuned by ``user_config`` through
:meth:`reconfigure`, the one deadline per request, and the replica's
backlog poller for admission control (the brokers' own probes, read once per second).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from functools import partial
from typing import Any

from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import RedirectResponse
from starlette.routing import Route

from serve_app.brokers.kafka import KafkaChunkWriter, KafkaProbe
from serve_app.brokers.rabbitmq import RabbitChunkWriter, RabbitProbe
from serve_app.errors import PublishFailed
from serve_app.ingest.core import (
    Admission,
    AdmissionPolicy,
    BacklogLimit,
    BatchConfig,
    Coalescer,
    Ingest,
    IngestLimits,
)
from serve_app.ingest.docs import docs_routes
from serve_app.ingest.grpc import PublisherService
from serve_app.ingest.limiter import GradientConfig, GradientLimiter
from serve_app.ingest.rest import build_rest_app
from serve_app.ingest.supervisor import supervise
from serve_app.model.backlog import BacklogReading
from serve_app.model.codec import Chunk
from serve_app.model.metrics import CONCURRENCY_LIMIT, POLLER_RESTARTS, MetricsSink
from serve_app.model.schema import Tweet
from serve_app.pb.weather.v1 import weather_pb2
from serve_app.runtime import ray_metrics, ray_token_check
from serve_app.settings import Settings
from serve_app.store.client import both_stores, read_memory, read_side_by_side


class HandleWriter:
    """A writer deployment seen through its handle, as :class:`serve_app.ingest.core.Writer`."""

    def __init__(self, broker: str, by_country: bool, handle: DeploymentHandle) -> None:
        self.broker = broker
        self.by_country = by_country
        self._handle = handle

    async def write(self, chunks: Sequence[Chunk], timeout_s: float) -> int:
        return await self._handle.write.remote(chunks, timeout_s)

    async def health(self, timeout_s: float) -> dict[str, Any]:
        return await self._handle.health.remote(timeout_s)


def limits_from(config: Settings) -> IngestLimits:
    return IngestLimits(
        max_body_bytes=config.max_body_bytes,
        max_batch_tweets=config.max_batch_tweets,
        max_json_depth=config.max_json_depth,
        retry_after_s=config.retry_after_s,
        stream_max_in_flight=config.stream_max_in_flight,
        stream_max_open=config.stream_max_open,
        stream_idle_timeout_s=config.stream_idle_timeout_s,
        stream_max_bytes_in_flight=config.stream_max_bytes_in_flight,
    )


def admission_from(config: Settings) -> Admission:
    """The brokers' own limits are read from them at every poll; the settings add a volume
    budget for each and the shares of those limits, and of each store's maxmemory, that
    may be used before new tweets are refused. Kafka feeds Redis, RabbitMQ feeds Valkey."""
    policy = AdmissionPolicy(
        limits={
            KafkaChunkWriter.broker: BacklogLimit(config.admission_kafka_max_bytes),
            RabbitChunkWriter.broker: BacklogLimit(config.admission_rabbitmq_max_bytes),
        },
        stores={"redis": KafkaChunkWriter.broker, "valkey": RabbitChunkWriter.broker},
        broker_limit_ratio=config.admission_broker_limit_ratio,
        store_memory_ratio=config.admission_store_memory_ratio,
        stale_after_s=config.admission_stale_after_s,
    )
    return Admission(policy, (KafkaChunkWriter.broker, RabbitChunkWriter.broker))


def concurrency_from(config: Settings, metrics: MetricsSink) -> GradientLimiter:
    """The replica's adaptive limit on ``POST /input`` in flight; each move is a gauge."""
    gradient = GradientConfig(
        initial=config.concurrency_limit_initial,
        floor=config.concurrency_limit_floor,
        ceiling=config.concurrency_limit_ceiling,
        tolerance=config.concurrency_limit_tolerance,
    )
    return GradientLimiter(
        gradient, on_limit=lambda limit: metrics.set(CONCURRENCY_LIMIT, limit, face="rest")
    )


@serve.deployment
@serve.ingress()
class Gateway:
    """REST and gRPC in one replica; both brokers written at once for every batch."""

    def __init__(
        self, kafka_writer: DeploymentHandle, rabbit_writer: DeploymentHandle, config: Settings
    ) -> None:
        self.ingest = Ingest(
            [
                HandleWriter(KafkaChunkWriter.broker, KafkaChunkWriter.by_country, kafka_writer),
                HandleWriter(RabbitChunkWriter.broker, RabbitChunkWriter.by_country, rabbit_writer),
            ],
            config.tweet_rules,
            limits_from(config),
            max_chunk_bytes=config.max_chunk_bytes,
            publish_timeout_s=config.publish_timeout_s,
            metrics=ray_metrics(),
            admission=admission_from(config),
        )
        batching = BatchConfig()  # until reconfigure() brings the deployed user_config
        self._coalescer = Coalescer(
            self.ingest.publish,
            batching.max_batch_tweets,
            batching.max_writes_in_flight,
            batching.linger_s,
        )
        self._config = config
        self.concurrency = concurrency_from(config, self.ingest.metrics)
        self._stores = both_stores(config)
        self._grpc = PublisherService(self.ingest, self.publish)

    async def _watch_backlogs(self) -> None:
        """The replica's one poller of the brokers' backlogs and the stores' memory (the
        app's lifespan runs it, supervised), never per request."""
        async with KafkaProbe(self._config) as kafka, RabbitProbe(self._config) as rabbit:

            async def queue() -> BacklogReading:
                try:
                    return await rabbit.backlog()
                except Exception:  # reconnect next time, as RabbitProbe.read does
                    await rabbit.close()
                    raise

            stores = {name: store.client for name, store in self._stores.items()}
            await self.ingest.admission.run(
                {
                    KafkaChunkWriter.broker: kafka.backlog,
                    RabbitChunkWriter.broker: queue,
                    **{name: partial(read_memory, client) for name, client in stores.items()},
                },
                self.ingest.metrics,
                self._config.admission_poll_interval_s,
            )

    def __serve_build_asgi_app__(self) -> Starlette:
        async def to_dashboard(request: Request) -> RedirectResponse:
            return RedirectResponse("/dashboard/", status_code=307)

        return build_rest_app(
            self.ingest,
            self.publish,
            lambda latest: read_side_by_side(self._stores, latest),
            extra_routes=[Route("/", to_dashboard, methods=["GET"]), *docs_routes("/openapi.json")],
            ids_check=ray_token_check(),
            background=lambda: supervise(
                self._watch_backlogs,
                self.ingest.admission.poller,
                on_restart=lambda _: self.ingest.metrics.inc(
                    POLLER_RESTARTS, task="backlog_poller"
                ),
            ),
            concurrency=self.concurrency,
        )

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        batching = BatchConfig.model_validate(user_config)
        largest_request = self.ingest.limits.max_batch_tweets
        if batching.max_batch_tweets < largest_request:
            raise ValueError(
                f"user_config max_batch_tweets={batching.max_batch_tweets} is below "
                f"MAX_BATCH_TWEETS={largest_request}: a full request could never be batched"
            )
        self._coalescer.configure(
            batching.max_batch_tweets, batching.max_writes_in_flight, batching.linger_s
        )

    async def publish(self, tweets: list[Tweet]) -> None:
        """One request's publish: coalesced with its neighbours, bounded by one deadline;
        how long it took moves the replica's concurrency limit."""
        deadline_s = self.ingest.publish_timeout_s
        try:
            async with asyncio.timeout(deadline_s):
                await self.concurrency.timed(lambda: self._coalescer.submit(tweets))
        except TimeoutError:
            late = f"not confirmed within {deadline_s:g} s"
            raise PublishFailed({w.broker: late for w in self.ingest.writers}) from None

    async def Publish(  # noqa: N802 - gRPC method name
        self, request: weather_pb2.Tweet, grpc_context: Any
    ) -> weather_pb2.PublishResponse:
        return await self._grpc.Publish(request, grpc_context)

    async def PublishBatch(  # noqa: N802 - gRPC method name
        self, request: weather_pb2.TweetBatch, grpc_context: Any
    ) -> weather_pb2.PublishBatchResponse:
        return await self._grpc.PublishBatch(request, grpc_context)
