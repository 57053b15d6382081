"""Counting helpers shared by the consumer and end-to-end tests.

Counts are global and other traffic may hit the same stores, so tests use countries
nobody else sends and compare deltas.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime
from typing import Any

from devstack.config import app_settings
from serve_app.model.schema import Tweet

settings = app_settings()

WAIT_S = 60.0
# Countries nobody else sends (other tests and load may run against the same stores):
# deltas of every other country are "foreign" traffic and are subtracted exactly.
COUNTRIES = ("AQ", "BV", "HM", "TF", "GS", "IO", "UM")


def make_tweets(n: int, tag: str = "") -> list[Tweet]:
    """``n`` tweets with unique ids and a known, uneven country x weather mix."""
    run = uuid.uuid4().hex[:12]
    rng = random.Random(run)
    weights = [len(COUNTRIES) - i for i in range(len(COUNTRIES))]  # AQ most, UM least
    countries = rng.choices(COUNTRIES, weights=weights, k=n)
    weathers = rng.choices(settings.weathers, weights=[3, 2, 1][: len(settings.weathers)], k=n)
    now = datetime.now(UTC)
    return [
        Tweet(
            id=f"test-{tag}{run}-{i}",
            description=f"consumer test {i} ☀ «{tag}»",
            country=countries[i],
            weather=weathers[i],
            accepted_at=now,
        )
        for i in range(n)
    ]


def expected_delta(tweets: Iterable[Tweet]) -> dict[str, Any]:
    tweets = list(tweets)
    return {
        "total": len(tweets),
        "by_country": dict(Counter(t.country for t in tweets)),
        "by_weather": dict(Counter(t.weather for t in tweets)),
        "by_country_weather": dict(Counter(f"{t.country}:{t.weather}" for t in tweets)),
    }


def delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """What this test's tweets changed: the growth of every counter, minus exactly what
    tweets from other countries (foreign traffic) added to the total and per weather."""
    grown: dict[str, Any] = {}
    for key in ("by_country", "by_weather", "by_country_weather"):
        fields = set(before[key]) | set(after[key])
        grown[key] = {f: after[key].get(f, 0) - before[key].get(f, 0) for f in fields}
    foreign_total = sum(d for c, d in grown["by_country"].items() if c not in COUNTRIES)
    foreign_weather: Counter[str] = Counter()
    for field, d in grown["by_country_weather"].items():
        country, weather = field.split(":", 1)
        if country not in COUNTRIES:
            foreign_weather[weather] += d
    by_weather = {w: d - foreign_weather[w] for w, d in grown["by_weather"].items()}
    return {
        "total": after["total"] - before["total"] - foreign_total,
        "by_country": {c: d for c, d in grown["by_country"].items() if d and c in COUNTRIES},
        "by_weather": {w: d for w, d in by_weather.items() if d},
        "by_country_weather": {
            f: d
            for f, d in grown["by_country_weather"].items()
            if d and f.split(":", 1)[0] in COUNTRIES
        },
    }


async def wait_until(
    check: Callable[[], Awaitable[bool]], what: str, timeout: float = WAIT_S
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if await check():
                return
        except Exception:  # a store or broker may be down on purpose
            pass
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
        await asyncio.sleep(0.25)
