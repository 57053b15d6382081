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
from weather_client.delivery import Delivery, Outcome, Refused, Retry, classify_answer
from weather_client.retry import Deadline, RetryPolicy, parse_retry_after, system_uniform

from devstack.config import stack_config
from loadtest.tweets import TweetFactory

RETRY_PAUSE_S = 0.25
LOAD_POLICY = RetryPolicy(base_s=RETRY_PAUSE_S, cap_s=2 * RETRY_PAUSE_S, max_retry_after_s=0.0)
"""The reference client's retry rule (weather_client: which answers are retried, same ids,
full jitter) at a load generator's pace: a window of 0.25-0.5 s and no wait for the
server's Retry-After, so the fault rounds see recovery within a fraction of a second."""


@dataclass
class RetryingResult:
    accepted_ids: set[str] = field(default_factory=set)
    requests: int = 0
    retries: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    gave_up: int = 0

    def count(self, what: str) -> None:
        self.statuses[what] = self.statuses.get(what, 0) + 1


async def post_batch(
    client: httpx.AsyncClient, batch: list[dict[str, Any]], result: RetryingResult
) -> Outcome:
    """One ``POST /input``, counted by status (or by the exception's name); a 4xx for a
    batch this generator made valid is a bug of the pipeline's, so it fails the run."""
    try:
        response = await client.post("/input", json=batch)
    except httpx.HTTPError as exc:
        result.count(type(exc).__name__)
        return Retry(type(exc).__name__, str(exc))
    result.count(str(response.status_code))
    try:
        body = response.json()
    except ValueError:
        body = None
    outcome = classify_answer(
        response.status_code, body, parse_retry_after(response.headers.get("retry-after"))
    )
    if isinstance(outcome, Refused):
        raise AssertionError(f"the pipeline refused a valid batch: {response.text[:300]}")
    return outcome


async def send_until_accepted(
    client: httpx.AsyncClient, batch: list[dict[str, Any]], result: RetryingResult,
    give_up_at: float,
) -> None:  # fmt: skip
    """POST ``batch`` until a 202, retried by :data:`LOAD_POLICY` with the same ids, giving
    up at ``give_up_at`` (``time.monotonic``)."""
    deadline = Deadline(give_up_at, time.monotonic)
    delivery = Delivery(batch, LOAD_POLICY, deadline, system_uniform())
    while delivery.pending:
        if deadline.expired():
            delivery.give_up()
            break
        wait = delivery.record(await post_batch(client, delivery.sending(), result))
        if wait is None:
            break
        await asyncio.sleep(wait)
    done = delivery.result
    result.accepted_ids.update(done.accepted)
    result.requests += done.requests
    result.retries += done.retries
    result.gave_up += bool(done.not_accepted)


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
