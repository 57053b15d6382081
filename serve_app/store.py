"""The store schema: the only code that knows Redis/Valkey key names.

Consumers write through :func:`record_batch`; ``GET /stats``, the tests and the
Grafana dashboard generator read through :func:`read_stats` and :data:`KEYS`.
Both stores (Redis fed by Kafka, Valkey fed by RabbitMQ) use the same layout.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from serve_app.schema import Tweet
from serve_app.settings import Settings


@dataclass(frozen=True)
class StoreKeys:
    """Every key the pipeline writes. ``seen_prefix`` + tweet id marks a counted tweet."""

    total: str = "tweets:total"
    by_country: str = "tweets:by_country"
    by_weather: str = "tweets:by_weather"
    by_country_weather: str = "tweets:by_country_weather"
    latest: str = "tweets:latest"
    conflicts: str = "tweets:conflicts"
    seen_prefix: str = "tweets:seen:"
    conflict_prefix: str = "tweets:conflict:"

    @staticmethod
    def country_weather_field(country: str, weather: str) -> str:
        return f"{country}:{weather}"

    def data_keys(self) -> tuple[str, ...]:
        """Keys a dashboard may read (everything but the per-id markers)."""
        return (
            self.total,
            self.by_country,
            self.by_weather,
            self.by_country_weather,
            self.latest,
            self.conflicts,
        )


KEYS = StoreKeys()

# One atomic round trip per batch. For each tweet not seen before (SET NX with a TTL, the
# value a fingerprint of its content), bump every counter and push it on the capped latest
# list. An id seen before with the same content (a redelivery, a client's retry) changes
# nothing; with other content it is a conflict: never counted, returned so the consumer
# dead-letters it, and counted once in tweets:conflicts (its own marker, so a redelivered
# conflict is not counted again). Markers of older releases hold '1': same content assumed.
_RECORD_BATCH_LUA = """
local ttl = tonumber(ARGV[1])
local latest_len = tonumber(ARGV[2])
local seen_prefix, conflict_prefix = ARGV[3], ARGV[4]
local new, duplicates, conflicts = 0, 0, {}
for i = 5, #ARGV, 5 do
  local id, fp, country, weather, body = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4]
  if redis.call('SET', seen_prefix .. id, fp, 'NX', 'EX', ttl) then
    new = new + 1
    redis.call('HINCRBY', KEYS[2], country, 1)
    redis.call('HINCRBY', KEYS[3], weather, 1)
    redis.call('HINCRBY', KEYS[4], country .. ':' .. weather, 1)
    redis.call('LPUSH', KEYS[5], body)
  else
    local seen = redis.call('GET', seen_prefix .. id)
    if seen == false or seen == fp or seen == '1' then
      duplicates = duplicates + 1
    else
      conflicts[#conflicts + 1] = id
      if redis.call('SET', conflict_prefix .. id .. ':' .. fp, '1', 'NX', 'EX', ttl) then
        redis.call('INCR', KEYS[6])
      end
    end
  end
end
if new > 0 then
  redis.call('INCRBY', KEYS[1], new)
  redis.call('LTRIM', KEYS[5], 0, latest_len - 1)
end
return {new, duplicates, conflicts}
"""


def fingerprint(description: str, country: str, weather: str) -> str:
    """What makes two tweets with one id the same tweet (not when it was accepted: a retry
    after a 503 is accepted again, later)."""
    content = "\x1f".join((description, country, weather)).encode("utf-8")
    return hashlib.blake2b(content, digest_size=8).hexdigest()


@dataclass(frozen=True)
class CountedTweet:
    """What the store needs of a tweet: id, content fingerprint, the two dimensions, and its
    JSON for 'latest'."""

    id: str
    fingerprint: str
    country: str
    weather: str
    body: str

    @classmethod
    def of(cls, tweet: Tweet) -> CountedTweet:
        return cls(
            id=tweet.id,
            fingerprint=fingerprint(tweet.description, tweet.country, tweet.weather),
            country=tweet.country,
            weather=tweet.weather,
            body=tweet.model_dump_json(),
        )


@dataclass(frozen=True)
class RecordResult:
    """What one batch did: new tweets counted, duplicates ignored, conflicting ids refused."""

    new: int = 0
    duplicates: int = 0
    conflicts: tuple[str, ...] = ()


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

    async def record_batch(self, tweets: Sequence[CountedTweet]) -> RecordResult:
        """Count every tweet whose id this store has not seen (one atomic script)."""
        if not tweets:
            return RecordResult()
        args: list[Any] = [self._ttl, self._latest_len, KEYS.seen_prefix, KEYS.conflict_prefix]
        for t in tweets:
            args.extend((t.id, t.fingerprint, t.country, t.weather, t.body))
        keys = [KEYS.total, KEYS.by_country, KEYS.by_weather, KEYS.by_country_weather,
                KEYS.latest, KEYS.conflicts]  # fmt: skip
        new, duplicates, conflicts = await self._record(keys=keys, args=args)
        return RecordResult(int(new), int(duplicates), tuple(conflicts))

    async def read_stats(self, latest: int = 0) -> dict[str, Any]:
        """Totals and breakdowns read in one MULTI so they agree with each other."""
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.get(KEYS.total)
            pipe.hgetall(KEYS.by_country)
            pipe.hgetall(KEYS.by_weather)
            pipe.hgetall(KEYS.by_country_weather)
            pipe.get(KEYS.conflicts)
            if latest:
                pipe.lrange(KEYS.latest, 0, latest - 1)
            results = await pipe.execute()
        stats: dict[str, Any] = {
            "total": int(results[0] or 0),
            "by_country": _ints(results[1]),
            "by_weather": _ints(results[2]),
            "by_country_weather": _ints(results[3]),
            "conflicts": int(results[4] or 0),
        }
        if latest:
            stats["latest"] = [json.loads(raw) for raw in results[5]]
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
