"""A bounded load client that keeps the pipeline's promise on its side: it retries every
request that did not get a 202 with the same ids, as the API asks, until it gets one.

Used by the fault tests (a node killed mid-load): whatever fails, every id it reports
accepted must end up counted exactly once in Redis and in Valkey. Loopback only, bounded in
requests and in time.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from devstack.config import stack_config
from devstack.waits import apoll
from loadtest.tweets import TweetFactory

RETRY_PAUSE_S = 0.25


@dataclass
class RetryingResult:
    accepted_ids: set[str] = field(default_factory=set)
    requests: int = 0
    retries: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    gave_up: int = 0

    def count(self, what: str) -> None:
        self.statuses[what] = self.statuses.get(what, 0) + 1


async def send_until_accepted(
    client: httpx.AsyncClient, batch: list[dict[str, Any]], result: RetryingResult,
    give_up_at: float,
) -> None:  # fmt: skip
    """POST ``batch`` until a 202, every ``RETRY_PAUSE_S``, giving up at ``give_up_at``."""

    sent = 0

    async def attempt() -> int | None:
        nonlocal sent
        result.retries += sent > 0
        result.requests += 1
        sent += 1
        try:
            response = await client.post("/input", json=batch)
        except httpx.HTTPError as exc:
            result.count(type(exc).__name__)
            return None
        result.count(str(response.status_code))
        if 400 <= response.status_code < 500:
            raise AssertionError(f"the pipeline refused a valid batch: {response.text[:300]}")
        return response.status_code

    timeout = max(0.0, give_up_at - time.monotonic())
    status = await apoll(attempt, lambda got: got == 202, timeout=timeout, every=RETRY_PAUSE_S)
    if status == 202:
        result.accepted_ids.update(t["id"] for t in batch)
    else:
        result.gave_up += 1


async def run(
    *,
    duration_s: float,
    rate_tweets_s: float,
    batch: int = 10,
    concurrency: int = 16,
    retry_for_s: float = 120.0,
    tag: str = "retrying",
    base_url: str | None = None,
) -> RetryingResult:
    """Send ``rate_tweets_s`` tweets/s in batches for ``duration_s``; every batch is retried
    with the same ids until it is accepted or ``retry_for_s`` has passed since it was due."""
    factory = TweetFactory(tag)
    result = RetryingResult()
    interval = batch / rate_tweets_s
    slots = asyncio.Semaphore(concurrency)
    tasks: list[asyncio.Task[None]] = []
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(
        base_url=base_url or stack_config.serve_http_url, timeout=30, limits=limits
    ) as client:

        async def one(items: list[dict[str, Any]], give_up_at: float) -> None:
            async with slots:
                await send_until_accepted(client, items, result, give_up_at)

        started = time.monotonic()
        due = started
        while due < started + duration_s:
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            tasks.append(asyncio.create_task(one(factory.many(batch), due + retry_for_s)))
            due += interval
        await asyncio.gather(*tasks)
    return result
