"""The store repair (serve_app/store/repair.py) on plain fakes: a dry run changes nothing;
applying counts only the ids the short store lacks, once however often it runs; a marker
with other content is a conflict, reported and never overwritten; the skip report goes only
when the repair made that store whole."""

from __future__ import annotations

import pytest

from serve_app.store.repair import (
    CONFLICT,
    DirectionReport,
    RepairPlan,
    RepairReport,
    dimensions,
    glob_escaped,
    repair,
    run_repair,
    same_tweet,
)
from tests.support.repair_fakes import DAY_MS, FakeMarkers, both, marker_of

RAIN = marker_of("Está lloviendo", "GT", "Lluvioso")
SUN = marker_of("Hace sol", "HN", "Soleado")
CLOUD = marker_of("Nublado", "GT", "Nubloso")


def counted_in_both(stores: dict[str, FakeMarkers], ids: list[str], marker: str) -> None:
    for id_ in ids:
        stores["redis"].count(id_, marker)
        stores["valkey"].count(id_, marker)


def short_stores() -> dict[str, FakeMarkers]:
    """10 ids in both; 3 only Valkey counted (Redis skipped them), 2 only Redis counted."""
    stores = both()
    counted_in_both(stores, [f"both-{i}" for i in range(10)], RAIN)
    for i in range(3):
        stores["valkey"].count(f"skipped-{i}", SUN if i else CLOUD)
    for i in range(2):
        stores["redis"].count(f"gave-up-{i}", RAIN)
    stores["redis"].skip("weather-tweets/0", 100, 101)
    return stores


async def test_a_dry_run_lists_each_direction_and_changes_nothing() -> None:
    stores = short_stores()
    before = {name: store.state() for name, store in stores.items()}
    report = await repair(stores, RepairPlan())
    assert {name: store.state() for name, store in stores.items()} == before
    into_redis, into_valkey = report.directions
    assert (into_redis.source, into_redis.target) == ("valkey", "redis")
    assert (into_redis.read, into_redis.agreeing, into_redis.missing) == (13, 10, 3)
    assert into_redis.by_country == {"HN": 2, "GT": 1}
    assert into_redis.by_weather == {"Soleado": 2, "Nubloso": 1}
    assert (into_valkey.read, into_valkey.agreeing, into_valkey.missing) == (12, 10, 2)
    assert into_valkey.by_country == {"GT": 2}
    # the skip report would be cleared by the apply, and is still there
    assert into_redis.skip_ranges == 1 and into_redis.skip_report_kept_because is None
    assert not into_redis.skip_report_cleared and stores["redis"].ranges
    assert report.whole and report.to_json()["dry_run"] is True


async def test_apply_counts_only_the_missing_ids_and_the_stores_agree() -> None:
    stores = short_stores()
    report = await repair(stores, RepairPlan(apply=True))
    redis, valkey = stores["redis"], stores["valkey"]
    assert redis.counts() == valkey.counts()
    assert redis.total == 15 and set(redis.seen) == set(valkey.seen)
    assert redis.by_country_weather == {"GT:Lluvioso": 12, "HN:Soleado": 2, "GT:Nubloso": 1}
    # each copied marker keeps its content and its TTL
    assert redis.seen["skipped-1"] == valkey.seen["skipped-1"]
    assert [d.missing for d in report.directions] == [3, 2]
    # the skip report of Redis, made whole, is gone: the range and its records
    assert report.directions[0].skip_report_cleared
    assert redis.ranges == {} and redis.skipped == {}


async def test_a_second_repair_changes_nothing() -> None:
    stores = short_stores()
    await repair(stores, RepairPlan(apply=True))
    after_first = {name: store.state() for name, store in stores.items()}
    again = await repair(stores, RepairPlan(apply=True))
    assert {name: store.state() for name, store in stores.items()} == after_first
    assert [d.missing for d in again.directions] == [0, 0]
    assert [d.agreeing for d in again.directions] == [15, 15]


async def test_a_conflict_is_reported_and_never_overwritten() -> None:
    stores = short_stores()
    stores["redis"].count("taken", RAIN)
    stores["valkey"].count("taken", SUN)
    redis_before = stores["redis"].seen["taken"]
    report = await repair(stores, RepairPlan(apply=True))
    into_redis, into_valkey = report.directions
    assert stores["redis"].seen["taken"] == redis_before
    assert stores["valkey"].seen["taken"][0] == SUN
    assert (into_redis.conflicts, into_redis.conflict_ids) == (1, ["taken"])
    assert (into_valkey.conflicts, into_valkey.conflict_ids) == (1, ["taken"])
    # the missing ones were counted all the same; the skip report stays (not whole)
    assert into_redis.missing == 3
    assert into_redis.skip_report_kept_because == "1 conflicts"
    assert stores["redis"].ranges and not report.whole


async def test_an_id_counted_meanwhile_is_not_counted_again() -> None:
    """The short store's consumer catches up between the read and the script: the
    script finds the marker there and counts nothing."""
    stores = short_stores()

    def consumer_catches_up(store: FakeMarkers) -> None:
        if "skipped-0" not in store.seen:
            store.count("skipped-0", CLOUD)

    stores["redis"].before_count = consumer_catches_up
    report = await repair(stores, RepairPlan(into=("redis",), apply=True))
    assert stores["redis"].total == 10 + 2 + 3  # both, its own two, the three it lacked
    assert stores["redis"].by_country_weather["GT:Nubloso"] == 1
    [into_redis] = report.directions
    assert (into_redis.missing, into_redis.agreeing) == (2, 11)


async def test_a_skip_report_stays_unless_the_repair_covered_every_id() -> None:
    stores = short_stores()
    prefixed = await repair(stores, RepairPlan(into=("redis",), prefix="skipped-", apply=True))
    [into_redis] = prefixed.directions
    assert into_redis.missing == 3
    assert into_redis.skip_report_kept_because == "only ids starting with 'skipped-' were repaired"
    assert stores["redis"].ranges
    # the operator says the prefix covers what was skipped (the chaos round does)
    plan = RepairPlan(into=("redis",), prefix="skipped-", apply=True, clear_skip_report=True)
    cleared = await repair(stores, plan)
    assert cleared.directions[0].skip_report_cleared and not stores["redis"].ranges


async def test_only_the_ranges_known_when_the_repair_began_are_cleared() -> None:
    stores = short_stores()

    def new_skip_meanwhile(store: FakeMarkers) -> None:
        if "weather-tweets/1:7-9" not in stores["redis"].ranges:
            stores["redis"].skip("weather-tweets/1", 7, 9)

    stores["valkey"].on_scan = new_skip_meanwhile
    await repair(stores, RepairPlan(into=("redis",), apply=True))
    assert stores["redis"].ranges == {"weather-tweets/1:7-9": 1}
    assert stores["redis"].skipped == {"weather-tweets/1": 3}


async def test_markers_near_expiry_and_without_dimensions_are_left_alone() -> None:
    stores = short_stores()
    stores["valkey"].count("old", SUN, ttl_ms=DAY_MS // 4)  # 6 h left < 12 h
    stores["valkey"].seen["older-release"] = ("1", DAY_MS)
    before = stores["redis"].state()
    dry = await repair(stores, RepairPlan(into=("redis",)))
    [d] = dry.directions
    assert (d.missing, d.near_expiry, d.without_dimensions) == (3, 1, 1)
    assert d.skip_report_kept_because == "1 ids near expiry, 1 markers without dimensions"
    await repair(stores, RepairPlan(into=("redis",), apply=True))
    assert "old" not in stores["redis"].seen and "older-release" not in stores["redis"].seen
    assert stores["redis"].total == before["total"] + 3 and stores["redis"].ranges
    # with a smaller guard the near-expiry one is counted too
    await repair(stores, RepairPlan(into=("redis",), apply=True, min_ttl_s=3600))
    assert stores["redis"].seen["old"][0] == SUN


async def test_batches_are_bounded_and_each_is_followed_by_a_progress_report() -> None:
    stores = both()
    for i in range(25):
        stores["valkey"].count(f"id-{i:02}", RAIN)
    events = [e async for e in run_repair(stores, RepairPlan(into=("redis",), batch=10))]
    progress, final = events[:-1], events[-1]
    assert isinstance(final, RepairReport)
    assert all(isinstance(p, DirectionReport) for p in progress) and len(progress) == 3
    sizes = [n for call, n in stores["valkey"].calls if call == "scan"]
    assert sizes == [10, 10, 5]
    assert max(n for call, n in stores["redis"].calls if call == "values") <= 10


async def test_the_time_budget_stops_the_scan_and_keeps_the_skip_report() -> None:
    stores = short_stores()
    ticks = iter(range(0, 1000, 10))
    plan = RepairPlan(into=("redis",), apply=True, batch=2, time_budget_s=15)
    report = await repair(stores, plan, clock=lambda: next(ticks))
    [d] = report.directions
    assert not d.complete and report.stopped_because == "the time budget of 15 s was spent"
    assert d.skip_report_kept_because is not None and stores["redis"].ranges
    assert not report.whole


async def test_a_direction_with_nothing_to_do_is_whole() -> None:
    stores = both()
    counted_in_both(stores, ["a", "b"], RAIN)
    report = await repair(stores, RepairPlan(apply=True))
    assert report.whole and [d.missing for d in report.directions] == [0, 0]
    assert all(d.complete for d in report.directions)


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"into": ("mongo",)}, "into"),
        ({"into": ()}, "into"),
        ({"into": ("redis", "redis")}, "into"),
        ({"prefix": "sp ace"}, "prefix"),
        ({"prefix": "x" * 129}, "prefix"),
        ({"min_ttl_s": -1}, "min_ttl_s"),
        ({"batch": 0}, "batch"),
        ({"batch": 10_001}, "batch"),
        ({"time_budget_s": 0}, "time_budget_s"),
    ],
)
def test_a_bad_plan_names_what_is_wrong(kwargs: dict[str, object], named: str) -> None:
    with pytest.raises(ValueError, match=f"^{named}:"):
        RepairPlan(**kwargs)  # type: ignore[arg-type]


def test_markers_are_read_as_the_store_writes_them() -> None:
    assert dimensions(RAIN) == ("GT", "Lluvioso")
    assert dimensions("0123456789abcdef:GT:Muy: nublado") == ("GT", "Muy: nublado")
    assert dimensions("1") is None and dimensions("0123456789abcdef") is None
    assert same_tweet(RAIN, RAIN) and same_tweet(RAIN, "1") and same_tweet("1", SUN)
    assert same_tweet(RAIN, RAIN.split(":")[0]) and not same_tweet(RAIN, SUN)
    # a marker written before fingerprints were keyed and one written after: the content
    # cannot be compared, the dimensions can
    keyed_rain, keyed_sun = "k0123456789abcde:GT:Lluvioso", "k0123456789abcde:HN:Soleado"
    assert same_tweet(RAIN, keyed_rain) and same_tweet(keyed_rain, RAIN)
    assert not same_tweet(RAIN, keyed_sun)
    assert not same_tweet(keyed_rain, "kfedcba987654321:GT:Lluvioso")
    assert not same_tweet(RAIN.split(":")[0], keyed_rain)
    assert CONFLICT == 2


def test_an_id_prefix_is_matched_literally() -> None:
    assert glob_escaped("run-[1]*?\\") == "run-\\[1\\]\\*\\?\\\\"
