"""Did both stores count the same? Read through the API only (``GET /stats`` for the two
stores' counts, ``GET /health`` for each broker's backlog): wait, bounded, until nothing is
left to drain, then name every count that differs between Redis and Valkey, and every
record the pipeline reports lost on the way (skipped by a consumer, or a dead letter still
parked in a store)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from weather_client.errors import WeatherClientError

if TYPE_CHECKING:
    from weather_client.client import AsyncClient

STORES = ("redis", "valkey")
COMPARED = ("total", "conflicts", "by_country", "by_weather", "by_country_weather")


def differences(stats: dict[str, Any]) -> list[str]:
    """One line per count that differs between the stores (or a store that cannot be read)."""
    missing = [
        f"{name}: {_store_error(stats.get(name))}"
        for name in STORES
        if _unreadable(stats.get(name))
    ]
    if missing:
        return missing
    redis, valkey = stats["redis"], stats["valkey"]
    found = []
    for key in COMPARED:
        a, b = redis.get(key, 0), valkey.get(key, 0)
        if isinstance(a, dict) and isinstance(b, dict):
            found += [
                f"{key}[{name}]: redis {a.get(name, 0)} != valkey {b.get(name, 0)}"
                for name in sorted(set(a) | set(b))
                if a.get(name, 0) != b.get(name, 0)
            ]
        elif a != b:
            found.append(f"{key}: redis {a} != valkey {b}")
    return found


def _unreadable(store: Any) -> bool:
    return not isinstance(store, dict) or "error" in store


def _store_error(store: Any) -> str:
    return str(store.get("error")) if isinstance(store, dict) else "missing from /stats"


def losses(stats: dict[str, Any]) -> list[str]:
    """Records a consumer had to skip and dead letters still parked, per store."""
    found = []
    for name in STORES:
        store = stats.get(name)
        if _unreadable(store):
            continue
        for source, count in sorted(store.get("skipped", {}).items()):
            if count:
                found.append(f"{name}: {count} records of {source} skipped before they were read")
        if store.get("parked_dead_letters"):
            found.append(f"{name}: {store['parked_dead_letters']} dead letters still parked")
    return found


def backlog(health: dict[str, Any]) -> dict[str, int | None]:
    """Each broker's backlog as ``/health`` reports it (messages; None: not known). The
    stores' memory readings, also under ``admission``, have none and are left out."""
    admission = health.get("admission")
    if not isinstance(admission, dict):
        return {}
    return {
        broker: report.get("backlog_messages")
        for broker, report in admission.items()
        if isinstance(report, dict) and "backlog_messages" in report
    }


@dataclass
class Verdict:
    """What ``verify`` found when it stopped looking."""

    differences: list[str] = field(default_factory=list)
    losses: list[str] = field(default_factory=list)
    backlog: dict[str, int | None] = field(default_factory=dict)
    drained: bool = False
    waited_s: float = 0.0
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.drained and not self.differences and not self.losses

    def problems(self) -> list[str]:
        undrained = [
            f"{broker}: backlog unknown" if n is None else f"{broker}: {n} messages not drained"
            for broker, n in self.backlog.items()
            if n != 0
        ]
        if not self.drained and not undrained:
            undrained = ["the counts were still changing"]
        return [*undrained, *self.differences, *self.losses]


async def look(client: AsyncClient, previous: Verdict | None) -> Verdict:
    """One reading. Drained: every broker's backlog is 0, or (when ``/health`` reports no
    backlog) the stores' counts did not change since the previous reading."""
    stats, health = await asyncio.gather(client.stats(), client.health())
    verdict = Verdict(differences(stats), losses(stats), backlog(health), stats=stats)
    if verdict.backlog:
        verdict.drained = all(n == 0 for n in verdict.backlog.values())
    else:
        verdict.drained = previous is not None and _totals(previous.stats) == _totals(stats)
    return verdict


def _totals(stats: dict[str, Any]) -> list[Any]:
    return [s.get("total") if isinstance(s, dict) else None for s in map(stats.get, STORES)]


async def verify(
    client: AsyncClient,
    wait_s: float = 60.0,
    every_s: float = 1.0,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> Verdict:
    """Read until drained and equal, or until ``wait_s`` has passed (then the last reading,
    whose :meth:`Verdict.problems` say what is still wrong)."""
    started = clock()
    verdict: Verdict | None = None
    for _ in range(max(1, int(wait_s / every_s) + 2)):  # bounded in count as well as time
        try:
            verdict = await look(client, verdict)
        except WeatherClientError as exc:
            verdict = Verdict(differences=[str(exc)])
        verdict.waited_s = clock() - started
        if verdict.ok or verdict.waited_s + every_s > wait_s:
            break
        await sleep(every_s)
    assert verdict is not None
    return verdict
