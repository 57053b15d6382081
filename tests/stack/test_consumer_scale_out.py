"""Two consumer actors per broker (serve_config.yaml's ``consumers`` args) against the real
stack: a Kafka consumer group over the topic's partitions and competing consumers on the
RabbitMQ queue. Under load through the Gateway, every tweet answered 202 is counted once in
both stores, and both actors of each broker do work; with the dead-letter drainers' lease
holders killed (-9) mid-load, Ray brings them back and nothing is lost or counted twice."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from typing import Any

import httpx
import pytest

from devstack.config import stack_config
from loadtest import retrying
from loadtest.counters import Counters
from serve_app.consume.actors import KAFKA_ACTOR_PREFIX, RABBIT_ACTOR_PREFIX
from serve_app.store.core import KEYS

pytestmark = [pytest.mark.usefixtures("devstack_serve"), pytest.mark.timeout(300)]

LOAD_S = 8.0
RATE = 2500.0  # tweets/s in arrays of 50: well within one actor's rate, so every actor idles
BATCH = 50
COUNT_TIMEOUT_S = 120.0


def consumers() -> dict[str, Any]:
    return httpx.get(f"{stack_config.serve_http_url}/consumers", timeout=30).json()


def actors_of(report: dict[str, Any], prefix: str) -> dict[str, dict[str, Any]]:
    return {n: a for n, a in report["actors"].items() if n.startswith(prefix)}


async def until(check: Any, timeout_s: float, every: float = 0.5) -> bool:
    """Poll ``check`` (async) until true or ``timeout_s`` ran out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if await check():
            return True
        await asyncio.sleep(every)
    return False


async def exactly_counted(counters: Counters, before: tuple[int, int], ids: set[str]) -> None:
    """Both totals grow by exactly the accepted tweets, and each accepted id is in both."""

    async def reached() -> bool:
        now = await counters.totals()
        return all(n - b >= len(ids) for n, b in zip(now, before, strict=True))

    assert await until(reached, COUNT_TIMEOUT_S), (await counters.totals(), before, len(ids))
    await asyncio.sleep(2)  # anything counted beyond the 202s would show up now
    after = await counters.totals()
    assert [a - b for a, b in zip(after, before, strict=True)] == [len(ids), len(ids)]
    in_redis, in_valkey = await counters.counted(sorted(ids))
    assert all(in_redis) and all(in_valkey)


def two_per_broker() -> dict[str, Any]:
    report = consumers()
    for prefix in (KAFKA_ACTOR_PREFIX, RABBIT_ACTOR_PREFIX):
        running = [n for n, a in actors_of(report, prefix).items() if a.get("running")]
        assert len(running) >= 2, (
            f"{prefix}*: {running} running; serve_config.yaml's consumers args ask for 2 per "
            "broker (kafka_consumers, rabbit_consumers)"
        )
    return report


async def test_two_actors_per_broker_count_every_202_once_and_share_the_work() -> None:
    report = two_per_broker()
    batches_before = {n: a["batches"] for n, a in report["actors"].items()}
    counters = Counters()
    try:
        before = await counters.totals()
        result = await retrying.run(
            duration_s=LOAD_S, rate_tweets_s=RATE, batch=BATCH, tag="scale-out"
        )
        assert result.gave_up == 0 and result.accepted_ids, result
        await exactly_counted(counters, before, result.accepted_ids)
    finally:
        await counters.close()
    grew = {n: a["batches"] - batches_before.get(n, 0) for n, a in consumers()["actors"].items()}
    assert all(g > 0 for g in grew.values()), f"an actor did no work: {grew}"


async def lease_holder(counters: Counters, store: str) -> str | None:
    holder = await getattr(counters, store).get(KEYS.dead_letter_drainer)
    return holder.decode() if isinstance(holder, bytes) else holder


async def test_lease_holders_killed_under_load_come_back_with_nothing_lost() -> None:
    report = two_per_broker()
    counters = Counters()
    try:
        holders = {
            prefix: await lease_holder(counters, store)
            for prefix, store in ((KAFKA_ACTOR_PREFIX, "redis"), (RABBIT_ACTOR_PREFIX, "valkey"))
        }
        # the drainer of each store (one actor of its broker), or the first actor if none
        victims = {
            prefix: holder if holder in report["actors"] else sorted(actors_of(report, prefix))[0]
            for prefix, holder in holders.items()
        }
        pids = {name: report["actors"][name]["pid"] for name in victims.values()}
        before = await counters.totals()
        load = asyncio.create_task(
            retrying.run(duration_s=LOAD_S, rate_tweets_s=RATE, batch=BATCH, tag="scale-kill")
        )
        await asyncio.sleep(LOAD_S / 3)
        for pid in pids.values():
            os.kill(pid, signal.SIGKILL)
        result = await load
        assert result.gave_up == 0 and result.accepted_ids, result
        await exactly_counted(counters, before, result.accepted_ids)

        async def back() -> bool:
            now = consumers()["actors"]
            return all(
                now[n].get("running") and now[n].get("pid") not in (None, pids[n]) for n in pids
            )

        assert await until(back, 60), consumers()
        for prefix, store in ((KAFKA_ACTOR_PREFIX, "redis"), (RABBIT_ACTOR_PREFIX, "valkey")):
            holder = await lease_holder(counters, store)  # one drainer, one of that broker's
            assert holder is None or holder.startswith(prefix), (store, holder)
    finally:
        await counters.close()
