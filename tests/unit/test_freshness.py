"""The freshness gauge's logic (serve_app/consume/freshness.py): the newest tweet a batch
counted, its age, and what a consumer exports (plain fakes, no Ray)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from serve_app.consume.freshness import Freshness, freshness_s, newest_accepted_at
from serve_app.model.metrics import FRESHNESS
from serve_app.model.schema import Tweet
from tests.support.fakes import RecordingMetrics

T0 = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)


def tweet(i: int, accepted_at: datetime) -> Tweet:
    return Tweet(id=f"f-{i}", description="sol", country="GT", weather="Soleado",
                 accepted_at=accepted_at)  # fmt: skip


def test_the_newest_counted_tweet_leaves_out_those_the_store_refused() -> None:
    tweets = [
        tweet(0, T0),
        tweet(1, T0 + timedelta(seconds=5)),
        tweet(2, T0 + timedelta(seconds=2)),
    ]
    assert newest_accepted_at(tweets) == (T0 + timedelta(seconds=5)).timestamp()
    assert newest_accepted_at(tweets, {1}) == (T0 + timedelta(seconds=2)).timestamp()
    assert newest_accepted_at(tweets, {0, 1, 2}) is None
    assert newest_accepted_at([]) is None


def test_freshness_is_the_age_never_negative_and_none_before_any_tweet() -> None:
    assert freshness_s(None, 100.0) is None
    assert freshness_s(90.0, 100.0) == 10.0
    assert freshness_s(100.5, 100.0) == 0.0  # the ingest node's clock a little ahead


def test_an_older_redelivered_batch_does_not_make_the_store_look_staler() -> None:
    now = [1000.0]
    fresh = Freshness("redis", clock=lambda: now[0])
    assert fresh.age_s() is None
    fresh.counted(None)  # a batch of poison only
    assert fresh.age_s() is None
    fresh.counted(990.0)
    fresh.counted(980.0)
    assert fresh.age_s() == 10.0
    now[0] = 1030.0
    assert fresh.age_s() == 40.0, "it grows while nothing new arrives"


async def test_the_consumer_exports_its_stores_age_on_its_own() -> None:
    now = [1000.0]
    sink = RecordingMetrics()
    fresh = Freshness("valkey", clock=lambda: now[0])
    task = asyncio.create_task(fresh.run(sink, interval_s=0.01))
    try:
        await asyncio.sleep(0.03)
        assert sink.gauge(FRESHNESS, store="valkey") is None, "nothing counted: nothing exported"
        fresh.counted(997.0)
        await asyncio.sleep(0.03)
        assert sink.gauge(FRESHNESS, store="valkey") == 3.0
        now[0] = 1010.0
        await asyncio.sleep(0.03)
        assert sink.gauge(FRESHNESS, store="valkey") == 13.0
    finally:
        task.cancel()
