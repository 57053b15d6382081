"""The store schema: the only code that knows Redis/Valkey key names.

Consumers write through :func:`record_batch`; ``GET /stats``, the tests and the
Grafana dashboard generator read through :func:`read_stats` and :data:`KEYS`.
Both stores (Redis fed by Kafka, Valkey fed by RabbitMQ) use the same layout.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from serve_app.settings import Settings


@dataclass(frozen=True)
class StoreKeys:
    """Every key the pipeline writes. ``seen_prefix`` + tweet id marks a counted tweet."""

    total: str = "tweets:total"
    by_country: str = "tweets:by_country"
    by_weather: str = "tweets:by_weather"
    by_country_weather: str = "tweets:by_country_weather"
    latest: str = "tweets:latest"
    seen_prefix: str = "tweets:seen:"

    @staticmethod
    def country_weather_field(country: str, weather: str) -> str:
        return f"{country}:{weather}"

    def data_keys(self) -> tuple[str, ...]:
        """Keys a dashboard may read (everything but the per-id markers)."""
        return (self.total, self.by_country, self.by_weather, self.by_country_weather, self.latest)


KEYS = StoreKeys()

# One atomic round trip per batch. For each tweet not seen before (SET NX with a TTL),
# bump every counter and push it on the capped latest list; a redelivered or retried
# id changes nothing. Returns how many tweets were new.
_RECORD_BATCH_LUA = """
local ttl = tonumber(ARGV[1])
local latest_len = tonumber(ARGV[2])
local prefix = ARGV[3]
local new = 0
for i = 4, #ARGV, 4 do
  local id, country, weather, body = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  if redis.call('SET', prefix .. id, '1', 'NX', 'EX', ttl) then
    new = new + 1
    redis.call('HINCRBY', KEYS[2], country, 1)
    redis.call('HINCRBY', KEYS[3], weather, 1)
    redis.call('HINCRBY', KEYS[4], country .. ':' .. weather, 1)
    redis.call('LPUSH', KEYS[5], body)
  end
end
if new > 0 then
  redis.call('INCRBY', KEYS[1], new)
  redis.call('LTRIM', KEYS[5], 0, latest_len - 1)
end
return new
"""


@dataclass(frozen=True)
class CountedTweet:
    """What the store needs of a tweet: its id, the two dimensions, and its JSON for 'latest'."""

    id: str
    country: str
    weather: str
    body: str


def connect(host: str, port: int, password: str = "") -> aioredis.Redis:
    """One client per process; redis-py pools and reconnects by itself."""
    return aioredis.Redis(
        host=host,
        port=port,
        password=password or None,
        decode_responses=True,
        socket_timeout=5,
        socket_connect_timeout=2,
        health_check_interval=10,
    )


def connect_redis(settings: Settings) -> aioredis.Redis:
    return connect(settings.redis_host, settings.redis_port, settings.redis_password)


def connect_valkey(settings: Settings) -> aioredis.Redis:
    return connect(settings.valkey_host, settings.valkey_port, settings.valkey_password)


class TweetStore:
    """Idempotent writes and consistent reads of the counters in one Redis-protocol store."""

    def __init__(self, client: aioredis.Redis, settings: Settings) -> None:
        self.client = client
        self._record = client.register_script(_RECORD_BATCH_LUA)
        self._ttl = settings.seen_id_ttl_s
        self._latest_len = settings.latest_tweets_length

    async def record_batch(self, tweets: Sequence[CountedTweet]) -> int:
        """Count every tweet whose id this store has not seen; return how many were new."""
        if not tweets:
            return 0
        args: list[Any] = [self._ttl, self._latest_len, KEYS.seen_prefix]
        for t in tweets:
            args.extend((t.id, t.country, t.weather, t.body))
        keys = [KEYS.total, KEYS.by_country, KEYS.by_weather, KEYS.by_country_weather, KEYS.latest]
        return int(await self._record(keys=keys, args=args))

    async def read_stats(self, latest: int = 0) -> dict[str, Any]:
        """Totals and breakdowns read in one MULTI so they agree with each other."""
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.get(KEYS.total)
            pipe.hgetall(KEYS.by_country)
            pipe.hgetall(KEYS.by_weather)
            pipe.hgetall(KEYS.by_country_weather)
            if latest:
                pipe.lrange(KEYS.latest, 0, latest - 1)
            results = await pipe.execute()
        stats: dict[str, Any] = {
            "total": int(results[0] or 0),
            "by_country": _ints(results[1]),
            "by_weather": _ints(results[2]),
            "by_country_weather": _ints(results[3]),
        }
        if latest:
            stats["latest"] = [json.loads(raw) for raw in results[4]]
        return stats

    async def latest_length(self) -> int:
        return int(await self.client.llen(KEYS.latest))


def both_stores(settings: Settings) -> dict[str, TweetStore]:
    """Redis (fed by Kafka) and Valkey (fed by RabbitMQ), named as ``GET /stats`` names them."""
    return {
        "redis": TweetStore(connect_redis(settings), settings),
        "valkey": TweetStore(connect_valkey(settings), settings),
    }


async def read_side_by_side(
    stores: dict[str, TweetStore], latest: int = 0
) -> tuple[dict[str, Any], bool]:
    """Every store's counts, read at the same time; a store that is down is reported as
    ``{"error": ...}`` and the other is still shown. Returns the stats and whether all
    answered."""

    async def read(tweet_store: TweetStore) -> dict[str, Any]:
        try:
            return await tweet_store.read_stats(latest=latest)
        except Exception as exc:
            return {"error": f"{type(exc).__name__}: {exc}"}

    names = list(stores)
    results = await asyncio.gather(*(read(stores[n]) for n in names))
    return dict(zip(names, results, strict=True)), not any("error" in r for r in results)


def _ints(mapping: dict[str, str]) -> dict[str, int]:
    return {k: int(v) for k, v in sorted(mapping.items())}
