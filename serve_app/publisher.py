"""Stage 2: the ``Publisher`` gRPC service (weather.v1.Publisher), also called by the ingress.

Outside clients reach it through Serve's gRPC proxy (port 9000, metadata
``application: publisher``); the REST ingress calls :meth:`Publisher.publish` through a
DeploymentHandle. Concurrent calls are coalesced with ``serve.batch`` so each writer sees
one call per batch, and a batch is published to Kafka first, then RabbitMQ: a Kafka
failure leaves nothing in either broker.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Sequence

import grpc
from ray import serve
from ray.serve.grpc_util import RayServegRPCContext
from ray.serve.handle import DeploymentHandle

from serve_app.pb.weather.v1 import weather_pb2
from serve_app.schema import (
    Tweet,
    TweetIn,
    TweetValidationError,
    accept,
    count_tweets,
    validate_tweets,
)
from serve_app.settings import settings
from serve_app.writers import BrokerUnavailable, EncodedTweet


def encode(tweets: Sequence[Tweet]) -> list[EncodedTweet]:
    """Serialize once; both writers send the same bytes."""
    return [EncodedTweet(t.id, t.country, t.to_json()) for t in tweets]


def _tweet_from_proto(message: weather_pb2.Tweet) -> dict[str, object]:
    fields: dict[str, object] = {
        "description": message.description,
        "country": message.country,
        "weather": message.weather,
    }
    if message.id:
        fields["id"] = message.id
    return fields


@serve.deployment
class Publisher:
    """Publishes every tweet to both brokers; answers only once both confirmed."""

    def __init__(self, kafka_writer: DeploymentHandle, rabbit_writer: DeploymentHandle) -> None:
        self._kafka = kafka_writer
        self._rabbit = rabbit_writer

    async def publish(self, tweets: list[Tweet]) -> list[str]:
        """Publish already-validated tweets (ids assigned); return their ids in order."""
        await self._publish_coalesced(tweets)
        return [t.id for t in tweets]

    @serve.batch(
        max_batch_size=2000,
        batch_wait_timeout_s=0.002,
        max_concurrent_batches=8,
        batch_size_fn=count_tweets,
    )
    async def _publish_coalesced(self, batches: list[list[Tweet]]) -> list[None]:
        encoded = encode(list(itertools.chain.from_iterable(batches)))
        await self._kafka.write.remote(encoded)
        await self._rabbit.write.remote(encoded)
        return [None] * len(batches)

    async def health(self) -> dict[str, dict[str, object]]:
        kafka, rabbit = await asyncio.gather(
            self._kafka.health.remote(), self._rabbit.health.remote()
        )
        return {"kafka": kafka, "rabbitmq": rabbit}

    async def Publish(  # noqa: N802 - gRPC method name
        self, request: weather_pb2.Tweet, grpc_context: RayServegRPCContext
    ) -> weather_pb2.PublishResponse:
        ids = await self._publish_grpc([_tweet_from_proto(request)], grpc_context, batch=False)
        return weather_pb2.PublishResponse(id=ids[0] if ids else "")

    async def PublishBatch(  # noqa: N802 - gRPC method name
        self, request: weather_pb2.TweetBatch, grpc_context: RayServegRPCContext
    ) -> weather_pb2.PublishBatchResponse:
        items = [_tweet_from_proto(t) for t in request.tweets]
        if not 1 <= len(items) <= settings.max_batch_tweets:
            grpc_context.set_code(grpc.StatusCode.INVALID_ARGUMENT)
            grpc_context.set_details(
                f"tweets: a batch holds 1 to {settings.max_batch_tweets} tweets, got {len(items)}"
            )
            return weather_pb2.PublishBatchResponse()
        ids = await self._publish_grpc(items, grpc_context, batch=True)
        return weather_pb2.PublishBatchResponse(ids=ids)

    async def _publish_grpc(
        self, items: list[dict[str, object]], grpc_context: RayServegRPCContext, *, batch: bool
    ) -> list[str]:
        try:
            tweets: list[TweetIn] = validate_tweets(items, index_errors=batch)
        except TweetValidationError as exc:
            grpc_context.set_code(grpc.StatusCode.INVALID_ARGUMENT)
            grpc_context.set_details(str(exc))
            return []
        accepted = accept(tweets)
        try:
            return await self.publish(accepted)
        except BrokerUnavailable as exc:
            grpc_context.set_code(grpc.StatusCode.UNAVAILABLE)
            grpc_context.set_details(
                f"{exc.summary}; retry with the same ids: {','.join(t.id for t in accepted)}"
            )
            return []
