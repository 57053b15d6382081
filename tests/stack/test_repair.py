"""The store repair against the real Redis and Valkey, and ``weather repair`` through the
deployed dashboard.

The store-level tests run in a key namespace of their own (every key prefixed), so they
touch nothing the pipeline counts: the count script, the TTLs, conflicts and the skip
report's clearing are the real scripts on the real servers. The end-to-end test counts
tweets of its own ids in the real keys, some in one store only (as a skip or a lost write
would leave them), runs ``weather repair`` (dry run, then ``--apply``, then again) limited
to its ids, and ends with both stores agreeing on them.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from weather_client.cli import main as weather

from devstack.config import app_settings, stack_config
from serve_app.model.schema import Tweet
from serve_app.store.client import both_stores, connect_store
from serve_app.store.core import KEYS, CountedTweet, StoreKeys, marker
from serve_app.store.repair import STORE_NAMES, RedisMarkers, RepairPlan, repair

settings = app_settings()
DAY_S = 86_400


def counted(tweet_id: str, text: str, country: str = "AQ") -> CountedTweet:
    tweet = Tweet(id=tweet_id, description=text, country=country, weather="Soleado",
                  accepted_at=datetime.now(UTC))  # fmt: skip
    return CountedTweet.of(tweet, settings.content_key())


# --- the scripts, in a namespace of the test's own -----------------------------------------
@pytest.fixture
async def namespaced() -> Any:
    """Both stores' markers and counters under ``repair-test-<uuid>:``; deleted after."""
    space = f"repair-test-{uuid.uuid4().hex}:"
    keys = StoreKeys(**{name: space + key for name, key in asdict(KEYS).items()})
    stores = {name: RedisMarkers(connect_store(settings, name), keys) for name in STORE_NAMES}
    yield stores, keys
    for store in stores.values():
        async for key in store.client.scan_iter(match=f"{space}*", count=1000):
            await store.client.delete(key)
        await store.aclose()


async def count_raw(store: RedisMarkers, keys: StoreKeys, tweet: CountedTweet, ttl_s: int) -> None:
    """What a consumer leaves for one tweet: its marker and its counts."""
    client = store.client
    await client.set(keys.seen_prefix + tweet.id, marker(tweet), ex=ttl_s)
    await client.incr(keys.total)
    await client.hincrby(keys.by_country, tweet.country, 1)
    await client.hincrby(keys.by_weather, tweet.weather, 1)
    field = keys.country_weather_field(tweet.country, tweet.weather)
    await client.hincrby(keys.by_country_weather, field, 1)


async def counts(store: RedisMarkers, keys: StoreKeys) -> tuple[Any, ...]:
    client = store.client
    hashes = (keys.by_country, keys.by_weather, keys.by_country_weather)
    breakdowns = [{k: int(v) for k, v in (await client.hgetall(h)).items()} for h in hashes]
    return (int(await client.get(keys.total) or 0), *breakdowns)


async def test_the_scripts_count_each_missing_id_once_and_never_overwrite(namespaced) -> None:
    stores, keys = namespaced
    redis, valkey = stores["redis"], stores["valkey"]
    tweets = [counted(f"id-{i}", f"sol {i}", "AQ" if i % 2 else "BV") for i in range(12)]
    for tweet in tweets[:8]:  # both counted these
        await count_raw(redis, keys, tweet, 2 * DAY_S)
        await count_raw(valkey, keys, tweet, 2 * DAY_S)
    for tweet in tweets[8:11]:  # only Valkey: Redis skipped them
        await count_raw(valkey, keys, tweet, 2 * DAY_S - 600)
    await count_raw(redis, keys, tweets[11], 2 * DAY_S)  # only Redis
    other = counted("id-taken", "granizo", "BV")
    await count_raw(redis, keys, counted("id-taken", "sol", "AQ"), 2 * DAY_S)
    await count_raw(valkey, keys, other, 2 * DAY_S)
    # one id counted by an older release (unkeyed fingerprint) in Redis, keyed in Valkey
    both_kinds = counted("id-both-kinds", "nieve", "BV")
    await count_raw(redis, keys, both_kinds._replace(fingerprint=both_kinds.legacy), 2 * DAY_S)
    await count_raw(valkey, keys, both_kinds, 2 * DAY_S)
    await redis.client.hset(keys.skipped_ranges, "weather-tweets/0:5-9", 1)
    await redis.client.hset(keys.skipped, "weather-tweets/0", 5)

    dry = await repair(stores, RepairPlan())
    assert [(d.missing, d.conflicts) for d in dry.directions] == [(3, 1), (1, 1)]
    assert await redis.client.exists(keys.seen_prefix + "id-8") == 0

    applied = await repair(stores, RepairPlan(apply=True, batch=5))
    assert [d.missing for d in applied.directions] == [3, 1]
    assert [d.conflict_ids for d in applied.directions] == [["id-taken"], ["id-taken"]]
    # the markers agree, with the source's TTL; the conflict kept each store's own tweet
    for tweet in tweets:
        assert await redis.client.get(keys.seen_prefix + tweet.id) == marker(tweet)
        assert await valkey.client.get(keys.seen_prefix + tweet.id) == marker(tweet)
    copied_ttl = await redis.client.pttl(keys.seen_prefix + "id-9")
    source_ttl = await valkey.client.pttl(keys.seen_prefix + "id-9")
    assert source_ttl < 2 * DAY_S * 1000 - 600_000  # the copy expires when its source does
    assert abs(source_ttl - copied_ttl) < 2000
    assert await valkey.client.get(keys.seen_prefix + "id-taken") == marker(other)
    # counts: 12 each, the one counted with both kinds of fingerprint (agreeing), plus each
    # store's own tweet for the taken id
    redis_counts, valkey_counts = await counts(redis, keys), await counts(valkey, keys)
    assert redis_counts[0] == valkey_counts[0] == 14
    assert redis_counts[3] == {"AQ:Soleado": 7, "BV:Soleado": 7}
    assert valkey_counts[3] == {"AQ:Soleado": 6, "BV:Soleado": 8}
    # a conflict keeps the skip report; once it is settled the next repair clears it
    assert applied.directions[0].skip_report_kept_because == "1 conflicts"
    await valkey.client.set(keys.seen_prefix + "id-taken", await redis.client.get(
        keys.seen_prefix + "id-taken"))  # fmt: skip
    again = await repair(stores, RepairPlan(apply=True))
    assert [d.missing for d in again.directions] == [0, 0]
    assert await counts(redis, keys) == redis_counts
    assert again.directions[0].skip_report_cleared
    assert await redis.client.hgetall(keys.skipped) == {}
    assert await redis.client.hgetall(keys.skipped_ranges) == {}


async def test_only_the_skip_ranges_seen_at_the_start_are_cleared(namespaced) -> None:
    stores, keys = namespaced
    redis = stores["redis"]
    await redis.client.hset(keys.skipped_ranges, mapping={"t/0:1-10": 1, "t/1:3-4": 1})
    await redis.client.hset(keys.skipped, mapping={"t/0": 10, "t/1": 2})
    # a range found during the repair: 't/0:20-21' (the same partition, later)
    await redis.client.hset(keys.skipped_ranges, "t/0:20-21", 1)
    await redis.client.hincrby(keys.skipped, "t/0", 2)
    assert await redis.clear_skip_ranges(["t/0:1-10", "t/1:3-4", "t/9:1-1"]) == 2
    assert await redis.client.hgetall(keys.skipped) == {"t/0": "2"}
    assert await redis.client.hgetall(keys.skipped_ranges) == {"t/0:20-21": "1"}


async def test_a_prefix_with_glob_characters_is_matched_literally(namespaced) -> None:
    stores, keys = namespaced
    for id_ in ("run[1]*-a", "run[1]*-b", "run1x-c"):
        await count_raw(stores["valkey"], keys, counted(id_, "sol"), DAY_S * 2)
    report = await repair(stores, RepairPlan(into=("redis",), prefix="run[1]*"))
    assert report.directions[0].missing == 2


# --- weather repair through the deployed dashboard ---------------------------------------
BASE = stack_config.serve_http_url


async def weather_repair(*args: str) -> tuple[int, str, dict[str, Any] | None]:
    """``weather repair --url <stack> ARGS`` (in a thread: it runs its own event loop); the
    token comes from RAY_AUTH_TOKEN_PATH (tests/conftest.py sets it to this checkout's)."""
    run = await asyncio.to_thread(CliRunner().invoke, weather, ["repair", "--url", BASE, *args])
    report = json.loads(run.stdout) if "--json" in args and run.stdout.startswith("{") else None
    return run.exit_code, f"{run.output}{run.exception or ''}", report


@pytest.mark.usefixtures("devstack_serve")
async def test_weather_repair_makes_both_stores_agree_on_the_ids_it_was_given() -> None:
    tag = f"repair-e2e-{uuid.uuid4().hex[:12]}-"
    stores = both_stores(settings)
    in_both = [counted(f"{tag}both-{i}", f"sol {i}") for i in range(5)]
    only_valkey = [counted(f"{tag}v-{i}", f"nube {i}", "BV") for i in range(4)]
    only_redis = [counted(f"{tag}r-{i}", f"lluvia {i}") for i in range(2)]
    ids = [t.id for t in in_both + only_valkey + only_redis]
    before = {name: await stores[name].read_stats() for name in STORE_NAMES}
    await stores["redis"].record_batch(in_both + only_redis)
    await stores["valkey"].record_batch(in_both + only_valkey)

    async def markers(name: str) -> list[str | None]:
        return list(await stores[name].client.mget([KEYS.seen_prefix + i for i in ids]))

    try:
        # without the token: refused, nothing runs
        async with httpx.AsyncClient(base_url=BASE, timeout=10) as http:
            refused = await http.post("/dashboard/api/repair", params={"prefix": tag})
        assert refused.status_code == 401, refused.text

        code, output, report = await weather_repair("--prefix", tag, "--json")
        assert code == 0, output
        assert report is not None and report["dry_run"] is True
        into_redis, into_valkey = report["directions"]
        assert (into_redis["missing"], into_redis["by_country"]) == (4, {"BV": 4})
        assert (into_valkey["missing"], into_valkey["by_country"]) == (2, {"AQ": 2})
        assert (await markers("redis")).count(None) == 4  # the dry run changed nothing

        code, output, _ = await weather_repair("--prefix", tag, "--apply")
        assert code == 0, output
        assert "valkey → redis: 9 markers read; Redis lacks 4 (counted), has 5 already" in output
        assert await markers("redis") == await markers("valkey")
        assert None not in await markers("redis")

        code, output, report = await weather_repair("--prefix", tag, "--apply", "--json")
        assert code == 0 and report is not None
        assert [d["missing"] for d in report["directions"]] == [0, 0]
        # each store gained this test's 11 tweets, with the same breakdowns (the stack
        # lock keeps other tests' loads out meanwhile)
        for name in STORE_NAMES:
            after = await stores[name].read_stats()
            assert after["total"] - before[name]["total"] == len(ids)
            gained = {k: v - before[name]["by_country"].get(k, 0)
                      for k, v in after["by_country"].items()}  # fmt: skip
            assert (gained["AQ"], gained["BV"]) == (7, 4)
    finally:
        # whatever happened, the shared stores agree on these ids again (the store script
        # counts nothing twice: after a repair these are duplicates)
        await stores["redis"].record_batch(only_valkey)
        await stores["valkey"].record_batch(only_redis)
        await asyncio.gather(*(s.client.aclose() for s in stores.values()))
