"""A plain in-memory :class:`serve_app.store.repair.MarkerStore`: markers with TTLs, the
counters and a skip report, doing what the Redis scripts do (no server, no Ray)."""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from serve_app.store.repair import ALREADY, CONFLICT, COUNTED, Copy, same_tweet

DAY_MS = 86_400_000


def marker_of(description: str, country: str, weather: str) -> str:
    """A marker as the store writes it: 16 hex characters of fingerprint, then CC:weather."""
    content = f"{description}\x1f{country}\x1f{weather}".encode()
    return f"{hashlib.blake2b(content, digest_size=8).hexdigest()}:{country}:{weather}"


class FakeMarkers:
    """One store. ``scan`` walks the ids in sorted order, ``count`` ids per step (the cursor
    is the position, 0 at the end, as SCAN's is); every call is recorded in ``calls``."""

    def __init__(self) -> None:
        self.seen: dict[str, tuple[str, int]] = {}  # id -> (marker, ttl ms; -1 none)
        self.total = 0
        self.by_country: Counter[str] = Counter()
        self.by_weather: Counter[str] = Counter()
        self.by_country_weather: Counter[str] = Counter()
        self.skipped: Counter[str] = Counter()
        self.ranges: dict[str, int] = {}
        self.calls: list[tuple[str, int]] = []
        self.down = False
        self.closed = False
        self.on_scan: Callable[[FakeMarkers], None] = lambda _: None
        self.before_count: Callable[[FakeMarkers], None] = lambda _: None

    # what a consumer does ------------------------------------------------------------
    def count(self, id_: str, marker: str, ttl_ms: int = 2 * DAY_MS) -> None:
        self.seen[id_] = (marker, ttl_ms)
        self._bump(marker)

    def _bump(self, marker: str) -> None:
        _, country, weather = marker.split(":", 2)
        self.total += 1
        self.by_country[country] += 1
        self.by_weather[weather] += 1
        self.by_country_weather[f"{country}:{weather}"] += 1

    def skip(self, source: str, first: int, last: int) -> None:
        self.ranges[f"{source}:{first}-{last}"] = 1
        self.skipped[source] += last - first + 1

    def state(self) -> dict[str, Any]:
        """Everything a repair may change, to compare before and after."""
        return {
            "seen": dict(self.seen),
            "total": self.total,
            "by_country": dict(self.by_country),
            "by_weather": dict(self.by_weather),
            "by_country_weather": dict(self.by_country_weather),
            "skipped": dict(self.skipped),
            "ranges": dict(self.ranges),
        }

    def counts(self) -> tuple[Any, ...]:
        return (self.total, +self.by_country, +self.by_weather, +self.by_country_weather)

    # MarkerStore ---------------------------------------------------------------------
    async def ping(self) -> None:
        if self.down:
            raise ConnectionError("Connection refused")

    async def scan(self, cursor: int, id_prefix: str, count: int) -> tuple[int, list[str]]:
        self.on_scan(self)
        ids = sorted(i for i in self.seen if i.startswith(id_prefix))
        found = ids[cursor : cursor + count]
        self.calls.append(("scan", len(found)))
        after = cursor + count
        return (after if after < len(ids) else 0), found

    async def markers(self, ids: Sequence[str]) -> list[tuple[str | None, int]]:
        self.calls.append(("markers", len(ids)))
        return [self.seen.get(i, (None, -2)) for i in ids]

    async def values(self, ids: Sequence[str]) -> list[str | None]:
        self.calls.append(("values", len(ids)))
        return [self.seen[i][0] if i in self.seen else None for i in ids]

    async def count_missing(self, copies: Sequence[Copy]) -> list[int]:
        self.before_count(self)
        self.calls.append(("count_missing", len(copies)))
        statuses = []
        for copy in copies:
            if copy.id in self.seen:
                same = same_tweet(copy.marker, self.seen[copy.id][0])
                statuses.append(ALREADY if same else CONFLICT)
            else:
                self.count(copy.id, copy.marker, copy.ttl_ms)
                statuses.append(COUNTED)
        return statuses

    async def skip_ranges(self) -> list[str]:
        return sorted(self.ranges)

    async def clear_skip_ranges(self, ranges: Sequence[str]) -> int:
        cleared = 0
        for range_ in ranges:
            if self.ranges.pop(range_, None) is not None:
                cleared += 1
                source, _, span = range_.rpartition(":")
                first, last = (int(n) for n in span.split("-"))
                self.skipped[source] -= last - first + 1
                if self.skipped[source] <= 0:
                    del self.skipped[source]
        return cleared

    async def aclose(self) -> None:
        self.closed = True


def both() -> dict[str, FakeMarkers]:
    return {"redis": FakeMarkers(), "valkey": FakeMarkers()}
