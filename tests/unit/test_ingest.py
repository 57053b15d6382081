"""The publish core over plain fake writers: both brokers or a typed failure (no servers)."""

from __future__ import annotations

import asyncio

import pytest

from serve_app.errors import PublishFailed
from serve_app.ingest.core import accept, distinct
from serve_app.model.schema import TweetValidationError
from tests.support.fakes import make_ingest

SEED = {"description": "Está lloviendo", "country": "GT", "weather": "Lluvioso"}


async def test_publish_writes_every_tweet_to_both_brokers_in_their_layout() -> None:
    ingest, kafka, rabbit = make_ingest()
    tweets = accept(ingest.validate([SEED, {**SEED, "country": "sv"}, SEED]))
    await ingest.publish(tweets)
    assert [c.country for c in kafka.chunks] == ["GT", "SV"]  # keyed: one country each
    assert [c.country for c in rabbit.chunks] == [""]  # fanout: one message for all
    assert kafka.tweets() == [tweets[0], tweets[2], tweets[1]]
    assert rabbit.tweets() == tweets


async def test_one_broker_failing_names_it_and_still_waits_for_the_other() -> None:
    ingest, kafka, rabbit = make_ingest()
    rabbit.fail = "connection refused"
    with pytest.raises(PublishFailed) as caught:
        await ingest.publish(accept(ingest.validate([SEED])))
    assert caught.value.reasons == {"rabbitmq": "connection refused"}
    assert len(kafka.tweets()) == 1  # written concurrently: Kafka confirmed its copy


async def test_a_hanging_broker_fails_within_the_deadline() -> None:
    ingest, kafka, rabbit = make_ingest(timeout_s=0.2)
    kafka.hang = True
    with pytest.raises(PublishFailed) as caught:
        await asyncio.wait_for(ingest.publish(accept(ingest.validate([SEED]))), timeout=5)
    assert caught.value.reasons == {"kafka": "timed out"}


async def test_health_reports_each_broker() -> None:
    ingest, kafka, rabbit = make_ingest()
    rabbit.fail = "down"
    assert await ingest.health() == {
        "kafka": {"ok": True, "detail": "reachable"},
        "rabbitmq": {"ok": False, "detail": "down"},
    }


def test_one_id_with_two_contents_in_a_request_is_refused_naming_both_indexes() -> None:
    ingest, _, _ = make_ingest()
    items = [{**SEED, "id": "a"}, {**SEED, "id": "b"}, {**SEED, "id": "a", "weather": "Soleado"}]
    with pytest.raises(TweetValidationError) as caught:
        ingest.validate(items)
    [error] = caught.value.errors
    assert error["loc"] == [2, "id"]
    assert "tweets[0]" in error["msg"] and error["type"] == "id_conflict"


def test_the_same_tweet_twice_is_one_tweet_whatever_the_spelling() -> None:
    ingest, _, _ = make_ingest()
    twice = ingest.validate([{**SEED, "id": "a"}, {**SEED, "id": "a", "country": "gt"}])
    tweets = accept(twice)
    assert [t.id for t in distinct(tweets)] == ["a"]


def test_tweets_without_an_id_are_never_merged() -> None:
    ingest, _, _ = make_ingest()
    tweets = accept(ingest.validate([SEED, SEED]), prefix="p")
    assert [t.id for t in distinct(tweets)] == ["p-0", "p-1"]
