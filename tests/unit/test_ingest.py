"""The publish core over plain fake writers: both brokers or a typed failure (no servers)."""

from __future__ import annotations

import asyncio

import pytest

from serve_app.errors import PublishFailed
from serve_app.ingest.core import accept
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
