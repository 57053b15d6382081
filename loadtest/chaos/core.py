"""What every round shares: the context a fault fills in, the reads of both stores and both
brokers, the consumption-pause sampler, and the judge (pure, unit-tested)."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any

import httpx
from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from devstack.config import app_settings, stack_config
from devstack.waits import apoll
from loadtest import retrying
from loadtest.tweets import COUNTRIES, TweetFactory
from serve_app.brokers.rabbitmq import RabbitProbe
from serve_app.dashboard.sources import Monitor
from serve_app.store.client import both_stores, read_side_by_side

settings = app_settings()

LOAD_S = 16.0
FAULT_AT_S = 3.0
RATE = 200.0
DRAIN_TIMEOUT_S = 180.0
BROKERS = ("kafka", "rabbitmq")
STORES = ("redis", "valkey")


@dataclass
class Context:
    """What a fault may use and report: the accepted ids of extra sends, the dead letters it
    caused on purpose (per broker), its notes and its own pass/fail evidence."""

    notes: dict[str, Any]
    extra_ids: set[str]
    poison: dict[str, int] = field(default_factory=lambda: dict.fromkeys(BROKERS, 0))
    checks: dict[str, bool] = field(default_factory=dict)

    def add_poison(self, kafka: int = 0, rabbitmq: int = 0) -> None:
        self.poison["kafka"] += kafka
        self.poison["rabbitmq"] += rabbitmq


Fault = Callable[[Context], Awaitable[None]]
Setup = Callable[[Context], AbstractAsyncContextManager[None]]


@dataclass(frozen=True)
class Round:
    """A fault injected ``FAULT_AT_S`` into ``load_s`` of load. ``setup`` wraps the whole
    round (before the first snapshot, after the verdict) and restores what it changed even
    on failure; ``skips_allowed``: Kafka may delete unread records, which must be reported."""

    fault: Fault
    setup: Setup | None = None
    load_s: float = LOAD_S
    skips_allowed: bool = False
    after: Fault | None = None
    """Evidence read once both stores counted everything (before the verdict)."""
    refusals_expected: bool = False
    """The fault must have been felt by the clients: some request answered other than 202."""


# --- the verdict ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Tally:
    """What a round measured, as the judge needs it."""

    accepted: int
    redis: int
    valkey: int
    breakdowns_equal: bool
    dead: dict[str, int]
    expected_dead: dict[str, int]
    gave_up: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    checks: dict[str, bool] = field(default_factory=dict)


def failures(t: Tally, skips_allowed: bool = False) -> list[str]:
    """Why a round failed (empty: it passed). Exact counts in both stores, nothing good
    dead-lettered, nobody gave up, every check of the fault. A Kafka record deleted before
    it was read (``skips_allowed`` rounds only) may leave Redis short, but then it must have
    been reported (``tweets:skipped`` grew in Redis), and Valkey must still be exact."""
    why: list[str] = []
    short = t.accepted - t.redis
    reported = t.skipped.get("redis", 0)
    if t.valkey != t.accepted:
        why.append(f"valkey {t.valkey} != accepted {t.accepted}")
    if t.redis != t.accepted and not (skips_allowed and short > 0 and reported > 0):
        why.append(f"redis {t.redis} != accepted {t.accepted} (skipped reported: {reported})")
    if reported and not skips_allowed:
        why.append(f"redis reported {reported} skipped records")
    if t.skipped.get("valkey", 0):
        why.append(f"valkey reported {t.skipped['valkey']} skipped records")
    if not t.breakdowns_equal and t.redis == t.accepted:
        why.append("the stores' breakdowns grew differently")
    for broker in BROKERS:
        got, want = t.dead.get(broker, 0), t.expected_dead.get(broker, 0)
        if got != want:
            why.append(f"{broker} dead letters grew by {got}, expected {want}")
    if t.gave_up:
        why.append(f"{t.gave_up} requests gave up")
    why.extend(f"check failed: {name}" for name, ok in t.checks.items() if not ok)
    return why


# --- reads ----------------------------------------------------------------------------------
async def quiesce(timeout_s: float = 120.0) -> dict[str, Any]:
    """Wait (bounded) until Kafka lag and RabbitMQ depth are 0; returns the last reading."""

    def drained(backlog: dict[str, Any]) -> bool:
        return backlog["kafka"].get("lag") == 0 and backlog["rabbitmq"].get("depth") == 0

    async with Monitor(settings, {}) as monitor:
        return await apoll(monitor.read, drained, timeout=timeout_s, every=0.5)


async def rabbitmq_dead_letters(probe: RabbitProbe | None = None) -> int | None:
    """RabbitMQ's dead-letter queue depth now (None while it cannot be read), through
    ``probe`` if given (kept open), else a probe of its own."""
    own = probe is None
    probe = probe or RabbitProbe(settings)
    try:
        return (await probe.read())["dead_letters"]
    finally:
        if own:
            await probe.close()


async def rabbitmq_recovered(dead_letters: int, timeout_s: float = 180.0) -> float:
    """Wait (bounded) until a restarted RabbitMQ shows its dead-letter queue at the depth
    it had before the restart: a quorum queue reads empty until it has replayed its log
    (minutes for hundreds of thousands of messages), which a snapshot taken earlier would
    count as dead letters appearing. One connection for the whole wait. Returns the
    seconds it took."""
    started = time.monotonic()
    probe = RabbitProbe(settings)

    async def read() -> int | None:
        return await rabbitmq_dead_letters(probe)

    try:
        depth = await apoll(read, lambda d: d == dead_letters, timeout=timeout_s, every=1.0)
    finally:
        await probe.close()
    assert depth == dead_letters, f"dead-letter queue at {depth}, {dead_letters} before"
    return round(time.monotonic() - started, 1)


async def snapshot() -> tuple[dict[str, Any], dict[str, Any]]:
    """Both stores' stats (read together) and both brokers' dead-letter counts."""
    stores = both_stores(settings)
    try:
        stats, complete = await read_side_by_side(stores)
        assert complete, stats
    finally:
        for store in stores.values():
            await store.client.aclose()
    async with Monitor(settings, {}) as monitor:
        backlog = await monitor.read()
    dead = {broker: backlog[broker]["dead_letters"] for broker in BROKERS}
    assert all(isinstance(d, int) for d in dead.values()), backlog
    return stats, dead


async def totals() -> dict[str, int]:
    stats, _ = await snapshot()
    return {name: s["total"] for name, s in stats.items()}


def grown(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """How one store's total and breakdowns grew between two snapshots."""
    keys = ("by_country", "by_weather", "by_country_weather")
    delta_of: dict[str, Any] = {"total": after["total"] - before["total"]}
    for key in keys:
        delta = Counter(after[key])
        delta.subtract(before[key])
        delta_of[key] = {k: v for k, v in sorted(delta.items()) if v}
    return delta_of


def ours(delta: dict[str, Any], countries: tuple[str, ...] = COUNTRIES) -> dict[str, Any]:
    """The part of a store's growth made of the load's own countries (``country`` and
    ``country:weather`` keys), so that another client on the shared stack (the cluster test
    sends countries no load tool uses) cannot blur the count: ``total`` is their sum,
    ``other`` what the rest of the world added."""
    by_country = {c: n for c, n in delta["by_country"].items() if c in countries}
    by_cw = {k: n for k, n in delta["by_country_weather"].items() if k.split(":")[0] in countries}
    total = sum(by_country.values())
    return {
        "total": total,
        "other": delta["total"] - total,
        "by_country": by_country,
        "by_country_weather": by_cw,
        "by_weather": delta["by_weather"] if delta["total"] == total else None,
    }


def same_breakdowns(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Two stores' :func:`ours` grew alike (by weather only where no other traffic blurs it)."""
    weathers = (
        a["by_weather"] is None or b["by_weather"] is None or a["by_weather"] == b["by_weather"]
    )
    return weathers and all(a[k] == b[k] for k in ("by_country", "by_country_weather"))


def skipped_records(stats: dict[str, Any]) -> int:
    """Records this store reported skipped (``tweets:skipped``: source -> count)."""
    return sum(int(v) for v in (stats.get("skipped") or {}).values())


async def topic_partitions(topic: str) -> list[TopicPartition]:
    """``topic``'s partitions, from the admin client's metadata (a consumer knows only the
    topics it subscribed to)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers)
    await admin.start()
    try:
        [described] = await admin.describe_topics([topic])
    finally:
        await admin.close()
    return sorted(TopicPartition(topic, p["partition"]) for p in described["partitions"])


def consumers() -> dict[str, Any]:
    """``GET /consumers``: the supervisor's view of every consumer actor."""
    return httpx.get(f"{stack_config.serve_http_url}/consumers", timeout=30).json()


def health() -> dict[str, Any]:
    return httpx.get(f"{stack_config.serve_http_url}/health", timeout=10).json()


async def burst(ctx: Context, tweets: int, size: int = 500, tag: str = "chaos-burst") -> set[str]:
    """Arrays of ``size`` through the Gateway, retried like any client (adds to accepted)."""
    factory = TweetFactory(tag)
    result = retrying.RetryingResult()
    async with httpx.AsyncClient(base_url=stack_config.serve_http_url, timeout=30) as client:
        give_up_at = time.monotonic() + 120
        for _ in range(max(1, tweets // size)):
            await retrying.send_until_accepted(client, factory.many(size), result, give_up_at)
    ctx.extra_ids |= result.accepted_ids
    return result.accepted_ids


class GrowthWatch:
    """Samples both totals every 100 ms: the longest stretch neither grew while the load ran
    is the consumption pause a fault caused."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, int, int]] = []

    async def run(self, until: float) -> None:
        stores = both_stores(settings)
        try:  # a sampler, not a wait: it runs to ``until`` whatever it reads
            while time.monotonic() < until:
                stats, _ = await read_side_by_side(stores)
                if "error" not in stats["redis"] and "error" not in stats["valkey"]:
                    self.samples.append(
                        (time.monotonic(), stats["redis"]["total"], stats["valkey"]["total"])
                    )
                await asyncio.sleep(0.1)
        finally:
            for store in stores.values():
                await store.client.aclose()

    def longest_pause_s(self) -> float:
        return longest_pause(self.samples)


def longest_pause(samples: list[tuple[float, int, int]]) -> float:
    """The longest time between two samples where either total grew."""
    longest, last_growth = 0.0, None
    previous = None
    for at, r, v in samples:
        if previous is None or r > previous[0] or v > previous[1]:
            if last_growth is not None:
                longest = max(longest, at - last_growth)
            last_growth = at
        previous = (r, v)
    return round(longest, 1)
