"""Stage 1, gRPC face: ``weather.v1.Publisher`` over :class:`serve_app.ingest.core.Ingest`.

No Ray in here: the ``Gateway`` deployment delegates its gRPC methods to
:class:`PublisherService`, and the unit tests call it with a plain fake context.

Status codes mirror the REST face: INVALID_ARGUMENT (422), UNAVAILABLE (503). An
UNAVAILABLE carries the retry ids in structured form: tweets the client gave an id keep it,
and every other tweet was given ``<prefix>-<index in the request>``, where the prefix is the
trailing metadata entry ``weather-id-prefix`` (one short entry, however large the batch:
gRPC metadata is limited to a few KiB). Error details are bounded in size too.
"""

from __future__ import annotations

from typing import Any, Protocol

import grpc

from serve_app.errors import PublishFailed, describe
from serve_app.ingest.core import Ingest, accept, distinct, request_id_prefix
from serve_app.ingest.rest import Publish
from serve_app.model.schema import Tweet, TweetValidationError
from serve_app.pb.weather.v1 import weather_pb2

ID_PREFIX_METADATA = "weather-id-prefix"
MAX_DETAILS_CHARS = 2000


class GrpcContext(Protocol):
    """The part of a gRPC servicer context this face uses (Serve's or grpc.aio's)."""

    def set_code(self, code: grpc.StatusCode) -> None: ...

    def set_details(self, details: str) -> None: ...

    def set_trailing_metadata(self, trailing_metadata: list[tuple[str, str]]) -> None: ...


def tweet_fields(message: weather_pb2.Tweet) -> dict[str, Any]:
    """A proto tweet as the schema validates it (empty id = "assign one")."""
    fields: dict[str, Any] = {
        "description": message.description,
        "country": message.country,
        "weather": message.weather,
    }
    if message.id:
        fields["id"] = message.id
    return fields


def bounded(text: str, limit: int = MAX_DETAILS_CHARS) -> str:
    return text if len(text) <= limit else f"{text[: limit - 20]}… ({len(text)} chars)"


class PublisherService:
    """``Publish`` and ``PublishBatch``; ``publish`` owns the deadline (the Gateway's)."""

    def __init__(self, ingest: Ingest, publish: Publish) -> None:
        self.ingest = ingest
        self.publish = publish
        self.counted = ingest.face_metrics("grpc")

    def _invalid(self, context: GrpcContext, details: str) -> None:
        context.set_code(grpc.StatusCode.INVALID_ARGUMENT)
        context.set_details(bounded(details))
        self.counted.rejected(grpc.StatusCode.INVALID_ARGUMENT.name)

    async def Publish(  # noqa: N802 - gRPC method name
        self, request: weather_pb2.Tweet, context: GrpcContext
    ) -> weather_pb2.PublishResponse:
        ids = await self._take([tweet_fields(request)], context, batch=False)
        return weather_pb2.PublishResponse(id=ids[0] if ids else "")

    async def PublishBatch(  # noqa: N802 - gRPC method name
        self, request: weather_pb2.TweetBatch, context: GrpcContext
    ) -> weather_pb2.PublishBatchResponse:
        limit = self.ingest.limits.max_batch_tweets
        if not 1 <= len(request.tweets) <= limit:
            self._invalid(
                context, f"tweets: a batch holds 1 to {limit} tweets, got {len(request.tweets)}"
            )
            return weather_pb2.PublishBatchResponse()
        ids = await self._take([tweet_fields(t) for t in request.tweets], context, batch=True)
        return weather_pb2.PublishBatchResponse(ids=ids)

    async def _take(self, items: list[dict[str, Any]], context: GrpcContext, *, batch: bool):
        try:
            tweets = self.ingest.validate(items, index_errors=batch)
        except TweetValidationError as exc:
            self._invalid(context, f"invalid tweet: {exc}")
            return []
        prefix = request_id_prefix()
        accepted: list[Tweet] = accept(tweets, prefix)
        unique = distinct(accepted)
        try:
            await self.publish(unique)
        except Exception as exc:  # PublishFailed, a dead writer, a deadline: all retryable
            reason = str(exc) if isinstance(exc, PublishFailed) else describe(exc)
            self.counted.unavailable(grpc.StatusCode.UNAVAILABLE.name, exc)
            context.set_code(grpc.StatusCode.UNAVAILABLE)
            context.set_trailing_metadata([(ID_PREFIX_METADATA, prefix)])
            context.set_details(
                bounded(
                    f"{reason}; retry with the same ids (a tweet sent without an id was "
                    f"given '{prefix}-<its index in the request>')"
                )
            )
            return []
        self.counted.accepted(len(unique))
        return [t.id for t in accepted]
