"""Re-count into a short store what the other store counted, by id markers.

Both stores keep one marker per counted id (``tweets:seen:<id>`` = ``fp:CC:weather``, see
:mod:`serve_app.store.core`). A store that missed tweets (Kafka deleted records before Redis
read them: its skip report; a store that lost data) lacks their markers, and its counters
lack their counts. A repair reads the other store's markers in bounded SCAN batches and, for
each id the short store lacks, sets the marker there (NX, with the same remaining TTL) and
adds the tweet to the total and the breakdowns, one atomic script per batch. A marker that is
already there means counted, so a second repair changes nothing; a marker with other content
is a conflict: reported, never overwritten. A dry run (the default) only reads.

Memory is one batch plus the per-country and per-weather tallies, whatever the store's size;
a progress report follows every batch. The dashboard's admin endpoint
(:mod:`serve_app.dashboard.admin`) runs it for ``weather repair``; unit tests drive it with a
plain fake :class:`MarkerStore`.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

from serve_app.settings import Settings
from serve_app.store.client import StoreClient, connect_store
from serve_app.store.core import FINGERPRINT_CHARS, KEYS, StoreKeys

STORE_NAMES = ("redis", "valkey")
DEFAULT_BATCH = 1000
MAX_BATCH = 10_000
DEFAULT_MIN_TTL_S = 12 * 3600
"""Markers closer to expiry than this are left alone. The short store may have counted such
an id *earlier* than the other store and already forgotten its marker (the stores' markers
expire as many hours apart as one store ran behind the other); counting it again would count
it twice. 12 h: admission refuses new tweets once the oldest unread one is half the broker's
24 h retention old (``admission_broker_limit_ratio``), so no consumer runs further behind."""
DEFAULT_TIME_BUDGET_S = 3600.0
SHOWN_CONFLICTS = 20
MAX_PREFIX_CHARS = 128

ALREADY, COUNTED, CONFLICT = 0, 1, 2
"""What the store's script says of each marker it was given."""


class Copy(NamedTuple):
    """One marker to set in the short store, and the two dimensions it adds to."""

    id: str
    marker: str
    ttl_ms: int  # the source's remaining TTL; -1: the source's marker has none
    country: str
    weather: str


class MarkerStore(Protocol):
    """What a repair needs of a store (:class:`RedisMarkers`; a plain fake in the tests)."""

    async def ping(self) -> None: ...

    async def scan(self, cursor: int, id_prefix: str, count: int) -> tuple[int, list[str]]:
        """One SCAN step over the markers of ids starting with ``id_prefix``: the next cursor
        (0: done) and the ids found."""
        ...

    async def markers(self, ids: Sequence[str]) -> list[tuple[str | None, int]]:
        """Each id's marker (None: gone) and its remaining TTL in ms (-1: none)."""
        ...

    async def values(self, ids: Sequence[str]) -> list[str | None]: ...

    async def count_missing(self, copies: Sequence[Copy]) -> list[int]:
        """Atomically: set each marker that is missing and count its tweet; per copy
        :data:`COUNTED`, :data:`ALREADY` (the same tweet is there) or :data:`CONFLICT`."""
        ...

    async def skip_ranges(self) -> list[str]:
        """The ranges of the skip report (``topic/partition:first-last``)."""
        ...

    async def clear_skip_ranges(self, ranges: Sequence[str]) -> int:
        """Drop these ranges and their records from the skip report; how many were there."""
        ...

    async def aclose(self) -> None: ...


def dimensions(marker: str) -> tuple[str, str] | None:
    """(country, weather) of a marker ``fp:CC:weather``; None for the markers of older
    releases (``1``, a bare fingerprint), which do not say what to count."""
    parts = marker.split(":", 2)
    if len(parts) != 3 or len(parts[0]) != FINGERPRINT_CHARS or not parts[1] or not parts[2]:
        return None
    return parts[1], parts[2]


def same_tweet(marker: str, other: str) -> bool:
    """Whether two markers of one id count the same tweet: the same fingerprint, or one of
    them from a release that wrote ``1`` (same content assumed, as the store's script does),
    or one fingerprint unkeyed (all hex: written before fingerprints were keyed) and the
    other keyed with the same dimensions: their content cannot be compared, their counts can."""
    if "1" in (marker, other):
        return True
    fingerprint, other_fingerprint = marker.split(":", 1)[0], other.split(":", 1)[0]
    if fingerprint == other_fingerprint:
        return True
    kinds_differ = _unkeyed(fingerprint) != _unkeyed(other_fingerprint)
    return (
        kinds_differ and dimensions(marker) is not None and dimensions(marker) == dimensions(other)
    )


def _unkeyed(fingerprint: str) -> bool:
    return all(c in "0123456789abcdef" for c in fingerprint)


def glob_escaped(text: str) -> str:
    """``text`` matched literally in a SCAN MATCH pattern (ids may hold ``*?[]\\``)."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


@dataclass(frozen=True)
class RepairPlan:
    """What to repair: ``into`` the stores that may be short (each from the other one),
    ids starting with ``prefix``, applied or a dry run. With a prefix the skip report is
    kept unless ``clear_skip_report`` says the prefix covers every skipped tweet."""

    into: tuple[str, ...] = STORE_NAMES
    prefix: str = ""
    apply: bool = False
    min_ttl_s: int = DEFAULT_MIN_TTL_S
    batch: int = DEFAULT_BATCH
    clear_skip_report: bool = False
    time_budget_s: float = DEFAULT_TIME_BUDGET_S

    def __post_init__(self) -> None:
        unknown = [name for name in self.into if name not in STORE_NAMES]
        if unknown or not self.into or len(set(self.into)) != len(self.into):
            raise ValueError(f"into: one or both of {', '.join(STORE_NAMES)}, got {self.into}")
        if len(self.prefix) > MAX_PREFIX_CHARS or not all(
            "\x21" <= c <= "\x7e" for c in self.prefix
        ):
            raise ValueError(f"prefix: at most {MAX_PREFIX_CHARS} printable ASCII characters")
        if self.min_ttl_s < 0:
            raise ValueError(f"min_ttl_s: 0 or more seconds, got {self.min_ttl_s}")
        if not 1 <= self.batch <= MAX_BATCH:
            raise ValueError(f"batch: 1 to {MAX_BATCH} markers, got {self.batch}")
        if self.time_budget_s <= 0:
            raise ValueError(f"time_budget_s: more than 0, got {self.time_budget_s}")

    def directions(self) -> list[tuple[str, str]]:
        """(source, target) pairs, in the order of ``into``."""
        return [(other_store(target), target) for target in self.into]


def other_store(name: str) -> str:
    return STORE_NAMES[1 - STORE_NAMES.index(name)]


@dataclass
class DirectionReport:
    """What one direction found (a dry run) or did: ``missing`` ids were counted into the
    target (or would be), ``agreeing`` ones were there already."""

    source: str
    target: str
    read: int = 0
    agreeing: int = 0
    missing: int = 0
    conflicts: int = 0
    conflict_ids: list[str] = field(default_factory=list)
    near_expiry: int = 0
    without_dimensions: int = 0
    by_country: Counter[str] = field(default_factory=Counter)
    by_weather: Counter[str] = field(default_factory=Counter)
    skip_ranges: int = 0
    skip_report_cleared: bool = False
    skip_report_kept_because: str | None = None
    complete: bool = False

    def conflict(self, id_: str) -> None:
        self.conflicts += 1
        if len(self.conflict_ids) < SHOWN_CONFLICTS:
            self.conflict_ids.append(id_)

    def counted(self, copy: Copy) -> None:
        self.missing += 1
        self.by_country[copy.country] += 1
        self.by_weather[copy.weather] += 1

    def left_alone(self) -> str | None:
        """Why this direction does not make the target whole, or None."""
        reasons = [
            f"{n} {what}"
            for n, what in (
                (self.conflicts, "conflicts"),
                (self.near_expiry, "ids near expiry"),
                (self.without_dimensions, "markers without dimensions"),
            )
            if n
        ]
        if not self.complete:
            reasons.insert(0, "the scan did not finish")
        return ", ".join(reasons) or None

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "target": self.target,
            "read": self.read,
            "agreeing": self.agreeing,
            "missing": self.missing,
            "conflicts": self.conflicts,
            "conflict_ids": list(self.conflict_ids),
            "near_expiry": self.near_expiry,
            "without_dimensions": self.without_dimensions,
            "by_country": dict(sorted(self.by_country.items())),
            "by_weather": dict(sorted(self.by_weather.items())),
            "skip_ranges": self.skip_ranges,
            "skip_report_cleared": self.skip_report_cleared,
            "skip_report_kept_because": self.skip_report_kept_because,
            "complete": self.complete,
        }


@dataclass
class RepairReport:
    """The whole run: each direction's report, and why it stopped early (if it did)."""

    plan: RepairPlan
    directions: list[DirectionReport]
    elapsed_s: float = 0.0
    stopped_because: str | None = None

    @property
    def whole(self) -> bool:
        """Every direction finished with nothing left alone."""
        return self.stopped_because is None and all(d.left_alone() is None for d in self.directions)

    def to_json(self) -> dict[str, Any]:
        return {
            "dry_run": not self.plan.apply,
            "prefix": self.plan.prefix,
            "min_ttl_s": self.plan.min_ttl_s,
            "directions": [d.to_json() for d in self.directions],
            "elapsed_s": round(self.elapsed_s, 3),
            "stopped_because": self.stopped_because,
            "whole": self.whole,
        }


RepairEvent = DirectionReport | RepairReport
"""A progress report (the direction's report so far, after each batch) or the final one."""


class _Budget:
    def __init__(self, seconds: float, clock: Callable[[], float]) -> None:
        self.clock, self.started, self.seconds = clock, clock(), seconds

    def spent(self) -> bool:
        return self.clock() - self.started > self.seconds

    def elapsed(self) -> float:
        return self.clock() - self.started


async def run_repair(
    stores: Mapping[str, MarkerStore],
    plan: RepairPlan,
    clock: Callable[[], float] = time.monotonic,
) -> AsyncIterator[RepairEvent]:
    """Repair each direction of ``plan`` in turn, yielding a progress report after every
    batch and the :class:`RepairReport` last. Stopping early (the time budget, a closed
    stream) is safe: every batch is one atomic script, and a repair run again finds what
    was counted already."""
    budget = _Budget(plan.time_budget_s, clock)
    report = RepairReport(plan, [DirectionReport(s, t) for s, t in plan.directions()])
    for direction in report.directions:
        source, target = stores[direction.source], stores[direction.target]
        async for progress in _repair_direction(source, target, direction, plan, budget):
            yield progress
        if not direction.complete:
            report.stopped_because = f"the time budget of {plan.time_budget_s:g} s was spent"
            break
    report.elapsed_s = budget.elapsed()
    yield report


async def repair(
    stores: Mapping[str, MarkerStore],
    plan: RepairPlan,
    clock: Callable[[], float] = time.monotonic,
) -> RepairReport:
    """:func:`run_repair` to its end: the final report."""
    final = None
    async for event in run_repair(stores, plan, clock):
        final = event
    assert isinstance(final, RepairReport)
    return final


async def _repair_direction(
    source: MarkerStore,
    target: MarkerStore,
    report: DirectionReport,
    plan: RepairPlan,
    budget: _Budget,
) -> AsyncIterator[DirectionReport]:
    """SCAN the source to its end (or the budget), one batch at a time; then clear the
    target's skip report as it was when the repair began, if the repair made it whole."""
    ranges = await target.skip_ranges()
    report.skip_ranges = len(ranges)
    cursor = 0
    while not budget.spent():  # SCAN ends by itself; the budget bounds its time
        cursor, ids = await source.scan(cursor, plan.prefix, plan.batch)
        if ids:
            await _repair_batch(source, target, ids, report, plan)
        if cursor == 0:
            report.complete = True
        yield report
        if report.complete:
            break
    report.skip_report_kept_because = _skip_report_kept_because(report, plan)
    if plan.apply and ranges and report.skip_report_kept_because is None:
        await target.clear_skip_ranges(ranges)
        report.skip_report_cleared = True


def _skip_report_kept_because(report: DirectionReport, plan: RepairPlan) -> str | None:
    if not report.skip_ranges:
        return None
    left = report.left_alone()
    if left:
        return left
    if plan.prefix and not plan.clear_skip_report:
        return f"only ids starting with {plan.prefix!r} were repaired"
    return None


async def _repair_batch(
    source: MarkerStore,
    target: MarkerStore,
    ids: Sequence[str],
    report: DirectionReport,
    plan: RepairPlan,
) -> None:
    """Sort one batch of the source's markers: already in the target, in conflict, left
    alone, or missing; count the missing ones (apply) or tally them (dry run)."""
    found = await source.markers(ids)
    there = await target.values(ids)
    copies: list[Copy] = []
    for id_, (marker, ttl_ms), seen in zip(ids, found, there, strict=True):
        if marker is None:  # expired since the scan
            continue
        report.read += 1
        if seen is not None:
            if same_tweet(marker, seen):
                report.agreeing += 1
            else:
                report.conflict(id_)
            continue
        dims = dimensions(marker)
        if dims is None:
            report.without_dimensions += 1
        elif 0 <= ttl_ms < plan.min_ttl_s * 1000:
            report.near_expiry += 1
        else:
            copies.append(Copy(id_, marker, ttl_ms, *dims))
    if not plan.apply:
        for copy in copies:
            report.counted(copy)
        return
    statuses = await target.count_missing(copies) if copies else []
    for copy, status in zip(copies, statuses, strict=True):
        if status == COUNTED:
            report.counted(copy)
        elif status == ALREADY:  # counted meanwhile (its consumer caught up)
            report.agreeing += 1
        else:
            report.conflict(copy.id)


# --- the Redis-protocol side ------------------------------------------------------------
# One batch of missing markers (a JSON array of [id, marker, ttl_ms, country, weather]):
# each marker is SET NX with the source's remaining TTL; one that was set is counted in the
# total and the three breakdowns (summed per field), as the consumers' script counts a new
# tweet; one that is there already is the same tweet (nothing to do) or a conflict (left
# as it is). Nothing is pushed on 'latest': those tweets are not new.
_COUNT_MISSING_LUA = """
local seen_prefix = ARGV[1]
local statuses, deltas, counted = {}, {{}, {}, {}}, 0
local function same_tweet(a, b)  -- as repair.same_tweet
  if a == '1' or b == '1' then
    return true
  end
  local fa, da = string.match(a, '^([^:]*)(.*)$')
  local fb, db = string.match(b, '^([^:]*)(.*)$')
  if fa == fb then
    return true
  end
  local unkeyed_a = string.match(fa, '^[0-9a-f]+$') ~= nil
  local unkeyed_b = string.match(fb, '^[0-9a-f]+$') ~= nil
  return unkeyed_a ~= unkeyed_b and da ~= '' and da == db
end
for i, row in ipairs(cjson.decode(ARGV[2])) do
  local key, marker, ttl = seen_prefix .. row[1], row[2], row[3]
  local set
  if tonumber(ttl) > 0 then
    set = redis.call('SET', key, marker, 'NX', 'PX', ttl)
  else
    set = redis.call('SET', key, marker, 'NX')
  end
  if set then
    counted = counted + 1
    local fields = {row[4], row[5], row[4] .. ':' .. row[5]}
    for h = 1, 3 do
      deltas[h][fields[h]] = (deltas[h][fields[h]] or 0) + 1
    end
    statuses[i] = 1
  else
    local seen = redis.call('GET', key)
    statuses[i] = (not seen or same_tweet(marker, seen)) and 0 or 2
  end
end
if counted > 0 then
  redis.call('INCRBY', KEYS[1], counted)
end
for h = 1, 3 do
  for field, delta in pairs(deltas[h]) do
    redis.call('HINCRBY', KEYS[h + 1], field, delta)
  end
end
return statuses
"""

# The skip report's ranges given (each 'topic/partition:first-last'): each one still there is
# dropped and its records taken off its source's count (the field goes at 0). A range found
# after the repair began is not given, so it stays.
_CLEAR_SKIP_RANGES_LUA = """
local cleared = 0
for _, range in ipairs(ARGV) do
  if redis.call('HDEL', KEYS[2], range) == 1 then
    cleared = cleared + 1
    local source, first, last = string.match(range, '^(.*):(%d+)-(%d+)$')
    if source then
      local records = tonumber(last) - tonumber(first) + 1
      if redis.call('HINCRBY', KEYS[1], source, -records) <= 0 then
        redis.call('HDEL', KEYS[1], source)
      end
    end
  end
end
return cleared
"""


class RedisMarkers:
    """:class:`MarkerStore` on one Redis-protocol client (Redis or Valkey). ``keys``: the
    layout (a test uses a namespace of its own); it owns ``client`` (see :meth:`aclose`)."""

    def __init__(self, client: StoreClient, keys: StoreKeys = KEYS) -> None:
        self.client = client
        self.keys = keys
        self._count = client.register_script(_COUNT_MISSING_LUA)
        self._clear = client.register_script(_CLEAR_SKIP_RANGES_LUA)

    def _key(self, id_: str) -> str:
        return self.keys.seen_prefix + id_

    async def ping(self) -> None:
        await self.client.ping()

    async def scan(self, cursor: int, id_prefix: str, count: int) -> tuple[int, list[str]]:
        match = glob_escaped(self.keys.seen_prefix + id_prefix) + "*"
        next_cursor, keys = await self.client.scan(cursor, match=match, count=count)
        cut = len(self.keys.seen_prefix)
        return int(next_cursor), [key[cut:] for key in keys]

    async def markers(self, ids: Sequence[str]) -> list[tuple[str | None, int]]:
        async with self.client.pipeline(transaction=False) as pipe:
            for id_ in ids:
                pipe.get(self._key(id_))
                pipe.pttl(self._key(id_))
            results = await pipe.execute()
        return [(value, int(ttl)) for value, ttl in zip(results[::2], results[1::2], strict=True)]

    async def values(self, ids: Sequence[str]) -> list[str | None]:
        return list(await self.client.mget([self._key(i) for i in ids])) if ids else []

    async def count_missing(self, copies: Sequence[Copy]) -> list[int]:
        rows = [[c.id, c.marker, str(c.ttl_ms), c.country, c.weather] for c in copies]
        packed = json.dumps(rows, ensure_ascii=False, separators=(",", ":"))
        keys = [self.keys.total, self.keys.by_country, self.keys.by_weather,
                self.keys.by_country_weather]  # fmt: skip
        statuses = await self._count(keys=keys, args=[self.keys.seen_prefix, packed])
        return [int(s) for s in statuses]

    async def skip_ranges(self) -> list[str]:
        return sorted(await self.client.hkeys(self.keys.skipped_ranges))

    async def clear_skip_ranges(self, ranges: Sequence[str]) -> int:
        if not ranges:
            return 0
        keys = [self.keys.skipped, self.keys.skipped_ranges]
        return int(await self._clear(keys=keys, args=list(ranges)))

    async def aclose(self) -> None:
        await self.client.aclose()


def open_marker_stores(settings: Settings) -> dict[str, RedisMarkers]:
    """Both stores, each on a client of its own (closed with :meth:`RedisMarkers.aclose`)."""
    return {name: RedisMarkers(connect_store(settings, name)) for name in STORE_NAMES}
