"""The reference client keeps the exactly-once promise through a broker outage.

20,000 tweets go out through ``weather_client.AsyncClient`` (over REST, the WebSocket stream
and gRPC in turn; batches of 250, a new round of 500 tweets every half second) while Kafka
is stopped (SIGSTOP to its whole
process session) for 10 s: publishes time out, the Gateway answers 503 / UNAVAILABLE with the
ids, and the client retries them with the same ids until they are accepted. Afterwards every one
of the 20,000 ids is accepted, each is marked counted in Redis and in Valkey, and both
stores grew by exactly the test's own tweets (its countries are used by no other traffic;
foreign deltas are subtracted, see tests/support/counting.py).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from typing import Any

import pytest
from weather_client import AsyncClient, RetryPolicy, SendResult
from weather_client.client import VIAS, Via

from devstack import procs, stack
from devstack.config import app_settings, stack_config
from serve_app.store.client import TweetStore, both_stores, read_side_by_side
from serve_app.store.core import KEYS
from tests.support.counting import delta, expected_delta, make_tweets, wait_until

settings = app_settings()

pytestmark = [pytest.mark.usefixtures("devstack_serve"), pytest.mark.timeout(600)]

TWEETS = 20_000
ROUND_TWEETS = 500
ROUND_EVERY_S = 0.5
BATCH = 250
STOPPED_BROKER = "kafka"
STOPPED_S = 10.0
STOP_AFTER_ACCEPTED = 2_000
SEND_DEADLINE_S = 240.0
COUNT_WAIT_S = 240.0
EXISTS_CHUNK = 1000


def signal_broker(name: str, sig: signal.Signals) -> None:
    """``sig`` to the broker and every process of its session, by pid (devstack's pidfile)."""
    pid = stack.get(name).pid()
    assert pid, f"{name} is not running"
    for member in {pid, *procs.session_members([pid])}:
        os.kill(member, sig)


async def counted_ids(store: TweetStore, ids: list[str]) -> int:
    """How many of ``ids`` the store marks counted (its ``tweets:seen:<id>`` markers)."""
    found = 0
    for start in range(0, len(ids), EXISTS_CHUNK):
        keys = [KEYS.seen_prefix + i for i in ids[start : start + EXISTS_CHUNK]]
        found += int(await store.client.exists(*keys))
    return found


async def send_in_rounds(
    client: AsyncClient, tweets: list[dict[str, str]], progress: SendResult
) -> SendResult:
    """A steady source: one ``send`` of ``ROUND_TWEETS`` every ``ROUND_EVERY_S``, each
    retrying on its own; ``progress`` learns every batch's accepted ids as they come."""

    def tally(batch: SendResult) -> None:
        progress.accepted.extend(batch.accepted)

    rounds = []
    for start in range(0, len(tweets), ROUND_TWEETS):
        chunk = tweets[start : start + ROUND_TWEETS]
        sending = client.send(chunk, deadline_s=SEND_DEADLINE_S, on_batch=tally)
        rounds.append(asyncio.create_task(sending))
        await asyncio.sleep(ROUND_EVERY_S)
    total = SendResult()
    for result in await asyncio.gather(*rounds):
        total.add(result)
    return total


async def stop_broker_once_sending(progress: SendResult) -> dict[str, float]:
    """Wait until the client has some tweets accepted, then stop the broker for
    ``STOPPED_S`` (always continued again)."""

    async def some_accepted() -> bool:
        return len(progress.accepted) >= STOP_AFTER_ACCEPTED

    await wait_until(some_accepted, "the first tweets accepted")
    stopped_at = time.monotonic()
    signal_broker(STOPPED_BROKER, signal.SIGSTOP)
    try:
        await asyncio.sleep(STOPPED_S)
    finally:
        signal_broker(STOPPED_BROKER, signal.SIGCONT)
    return {"stopped_at": stopped_at, "accepted_before_stop": float(len(progress.accepted))}


def as_request(tweet: Any) -> dict[str, str]:
    return {
        "id": tweet.id,
        "description": tweet.description,
        "country": tweet.country,
        "weather": tweet.weather,
    }


@pytest.mark.parametrize("via", VIAS)
async def test_every_tweet_counted_once_in_both_stores_through_a_broker_stop(via: Via) -> None:
    made = make_tweets(TWEETS, f"client-{via}")
    tweets = [as_request(t) for t in made]
    ids = [t["id"] for t in tweets]
    expected = expected_delta(made)
    stores = both_stores(settings)
    before, complete = await read_side_by_side(stores)
    assert complete, before

    progress = SendResult()  # the accepted so far, for the moment to stop the broker
    policy = RetryPolicy(deadline_s=SEND_DEADLINE_S)
    started = time.monotonic()
    async with AsyncClient(
        stack_config.serve_http_url,
        via=via,
        batch=BATCH,
        concurrency=2,
        policy=policy,
        grpc_target=stack_config.serve_grpc_target,
    ) as client:
        fault = asyncio.create_task(stop_broker_once_sending(progress))
        result = await send_in_rounds(client, tweets, progress)
        stop = await fault
    sent_s = time.monotonic() - started

    assert not result.refused, result.refused[:5]
    assert sorted(result.accepted) == sorted(ids)
    assert result.unavailable > 0, "the stop never reached the client: the test proved nothing"
    assert result.retries > 0

    async def both_complete() -> bool:
        now, ok = await read_side_by_side(stores)
        return ok and all(delta(before[s], now[s])["total"] >= TWEETS for s in stores)

    await wait_until(both_complete, f"both stores +{TWEETS}", COUNT_WAIT_S)
    await asyncio.sleep(2)  # anything counted twice would show as an overshoot
    after, complete = await read_side_by_side(stores)
    assert complete, after
    for name, store in stores.items():
        assert delta(before[name], after[name]) == expected, name
        assert await counted_ids(store, ids) == TWEETS, name
    counted_s = time.monotonic() - started

    print(
        json.dumps(
            {
                "via": via,
                "tweets": TWEETS,
                "stopped": f"{STOPPED_BROKER} {STOPPED_S:g} s",
                "accepted_before_stop": int(stop["accepted_before_stop"]),
                "requests": result.requests,
                "retries": result.retries,
                "503s": result.unavailable,
                "retried_because": dict(result.retried_because),
                "sent_s": round(sent_s, 1),
                "counted_in_both_s": round(counted_s, 1),
            }
        )
    )
