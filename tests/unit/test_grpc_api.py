"""The gRPC face with a plain fake context over fake writers (no servers, no Ray)."""

from __future__ import annotations

import grpc
import pytest

from serve_app.ingest.grpc import ID_PREFIX_METADATA, PublisherService
from serve_app.pb.weather.v1 import weather_pb2
from tests.support.fakes import LIMITS, FakeGrpcContext, make_ingest

SEED = weather_pb2.Tweet(description="Está lloviendo", country="GT", weather="Lluvioso")
BAD_COUNTRY = weather_pb2.Tweet(description="x", country="ZZ", weather="Soleado")


@pytest.fixture
def service():
    ingest, kafka, rabbit = make_ingest()
    return PublisherService(ingest, ingest.publish), kafka, rabbit


async def test_publish_and_publish_batch(service) -> None:
    api, kafka, rabbit = service
    context = FakeGrpcContext()
    one = await api.Publish(SEED, context)
    mine = weather_pb2.Tweet(id="mine", description="sol", country="sv", weather="SOLEADO")
    batch = weather_pb2.TweetBatch(tweets=[SEED, mine])
    many = await api.PublishBatch(batch, context)
    assert context.code == grpc.StatusCode.OK
    assert list(many.ids)[1] == "mine"
    assert {t.id for t in rabbit.tweets()} == {one.id, *many.ids}
    assert {t.id for t in kafka.tweets()} == {one.id, *many.ids}


@pytest.mark.parametrize(
    ("batch", "fragment"),
    [
        (weather_pb2.TweetBatch(), "1 to"),
        (weather_pb2.TweetBatch(tweets=[SEED] * (LIMITS.max_batch_tweets + 1)), "1 to"),
        (weather_pb2.TweetBatch(tweets=[SEED, BAD_COUNTRY]), "[1, 'country']"),
    ],
)
async def test_invalid_argument_publishes_nothing(service, batch, fragment: str) -> None:
    api, kafka, _ = service
    context = FakeGrpcContext()
    assert list((await api.PublishBatch(batch, context)).ids) == []
    assert context.code == grpc.StatusCode.INVALID_ARGUMENT
    assert fragment in context.details
    assert kafka.chunks == []


async def test_unavailable_carries_the_id_prefix_and_bounded_details(service) -> None:
    api, kafka, rabbit = service
    kafka.fail = "broker down " * 500
    context = FakeGrpcContext()
    batch = weather_pb2.TweetBatch(tweets=[SEED, SEED])
    assert list((await api.PublishBatch(batch, context)).ids) == []
    assert context.code == grpc.StatusCode.UNAVAILABLE
    [(key, prefix)] = context.trailing
    assert key == ID_PREFIX_METADATA
    assert len(context.details) <= 2000
    assert {t.id for t in rabbit.tweets()} == {f"{prefix}-0", f"{prefix}-1"}


async def test_one_id_with_two_contents_is_invalid_argument_naming_both_indexes(service) -> None:
    api, kafka, _ = service
    first = weather_pb2.Tweet(id="x", description="sol", country="GT", weather="Soleado")
    other = weather_pb2.Tweet(id="x", description="lluvia", country="GT", weather="Soleado")
    context = FakeGrpcContext()
    await api.PublishBatch(weather_pb2.TweetBatch(tweets=[first, SEED, other]), context)
    assert context.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "[2, 'id']" in context.details and "tweets[0]" in context.details
    assert kafka.chunks == []


async def test_the_same_tweet_twice_is_published_once(service) -> None:
    api, kafka, rabbit = service
    tweet = weather_pb2.Tweet(id="x", description="sol", country="GT", weather="Soleado")
    context = FakeGrpcContext()
    reply = await api.PublishBatch(weather_pb2.TweetBatch(tweets=[tweet, tweet]), context)
    assert context.code == grpc.StatusCode.OK and list(reply.ids) == ["x", "x"]
    assert [t.id for t in kafka.tweets()] == [t.id for t in rabbit.tweets()] == ["x"]
