"""End to end: POST /input -> brokers -> consumers -> Redis and Valkey, read back via GET /stats.

Everything real: Ray Serve on 127.0.0.1:8000, Kafka, RabbitMQ, Redis, Valkey.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from devstack.config import app_settings, stack_config
from serve_app.model.schema import Tweet
from tests.support.counting import COUNTRIES, WAIT_S, delta, expected_delta, make_tweets, wait_until

settings = app_settings()

pytestmark = pytest.mark.usefixtures("devstack_serve")

BASE = stack_config.serve_http_url
STORES = ("redis", "valkey")


def as_request(tweet: Tweet, country_case: str = "upper") -> dict[str, str]:
    country = tweet.country.lower() if country_case == "lower" else tweet.country
    return {
        "id": tweet.id,
        "description": tweet.description,
        "country": country,
        "weather": tweet.weather.upper(),
    }


async def stats(client: httpx.AsyncClient) -> dict[str, Any]:
    response = await client.get("/stats")
    assert response.status_code == 200, response.text
    return response.json()


async def post_all(client: httpx.AsyncClient, tweets: list[Tweet], singles: int) -> list[str]:
    """The first ``singles`` tweets one request each (50 at a time), the rest in batches."""
    limit = asyncio.Semaphore(50)

    async def one(tweet: Tweet) -> list[str]:
        async with limit:
            response = await client.post("/input", json=as_request(tweet, "lower"))
        assert response.status_code == 202, response.text
        return [response.json()["id"]]

    async def batch(chunk: list[Tweet]) -> list[str]:
        response = await client.post("/input", json=[as_request(t) for t in chunk])
        assert response.status_code == 202, response.text
        return response.json()["ids"]

    rest = tweets[singles:]
    jobs = [one(t) for t in tweets[:singles]]
    jobs += [batch(rest[i : i + 250]) for i in range(0, len(rest), 250)]
    return [tweet_id for ids in await asyncio.gather(*jobs) for tweet_id in ids]


async def wait_until_admitting(client: httpx.AsyncClient) -> None:
    """Admission open for every broker and store (bounded wait): an earlier test's load or a
    server it restarted may still hold it closed, and a 503 then is right, not a failure."""

    async def admitting() -> bool:
        health = (await client.get("/health")).json()
        return all(reading["admitting"] for reading in health["admission"].values())

    await wait_until(admitting, "admission open on every broker and store", WAIT_S)


async def wait_for_counts(
    client: httpx.AsyncClient, before: dict[str, Any], expected: dict[str, Any]
) -> None:
    """Both stores reach exactly ``expected`` (bounded wait) and do not overshoot after."""

    async def reached() -> bool:
        now = await stats(client)
        return all(delta(before[s], now[s])["total"] >= expected["total"] for s in STORES)

    await wait_until(reached, f"both stores +{expected['total']}", WAIT_S * 2)
    await asyncio.sleep(2)
    now = await stats(client)
    for store in STORES:
        assert delta(before[store], now[store]) == expected, store


async def test_posted_tweets_counted_exactly_once_in_both_stores() -> None:
    tweets = make_tweets(2400, "e2e")
    expected = expected_delta(tweets)
    assert set(expected["by_country"]) == set(COUNTRIES)
    async with httpx.AsyncClient(base_url=BASE, timeout=60) as client:
        before = await stats(client)
        ids = await post_all(client, tweets, singles=400)
        assert sorted(ids) == sorted(t.id for t in tweets)
        await wait_for_counts(client, before, expected)

        # A client retry (same ids, single and batch) changes nothing ...
        await post_all(client, tweets[:300], singles=100)
        await asyncio.sleep(3)
        await wait_for_counts(client, before, expected)

        # ... while new ids count exactly once more each.
        more = make_tweets(150, "e2e-more")
        await post_all(client, more, singles=50)
        await wait_for_counts(client, before, expected_delta([*tweets, *more]))

        latest = (await client.get("/stats", params={"latest": 1000})).json()
        for store in STORES:
            assert len(latest[store]["latest"]) <= settings.latest_tweets_length
