"""Faults of a consumer scaled out: with two (or more) actors per broker, the actor that
holds each store's dead-letter drainer lease is killed (-9) under load. Its sibling keeps
consuming (the RabbitMQ queue's other consumer at once; the Kafka group's other member on
its own partitions, and on the killed one's after the rebalance) until Ray brings it back;
the lease stays with one actor of that broker; the verdict counts every 202 once."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from typing import Any

from loadtest.chaos.core import Context, consumers, settings, totals
from serve_app.consume.actors import KAFKA_ACTOR_PREFIX, RABBIT_ACTOR_PREFIX
from serve_app.store.client import both_stores
from serve_app.store.core import KEYS

BACK_TIMEOUT_S = 60.0
FED_BY = {"redis": KAFKA_ACTOR_PREFIX, "valkey": RABBIT_ACTOR_PREFIX}
"""Each store and the prefix of the consumer actors that write into it."""


async def lease_holders() -> dict[str, str | None]:
    """Who holds each store's dead-letter drainer lease (an actor name, or None)."""
    stores = both_stores(settings)
    try:
        return {
            name: await store.client.get(KEYS.dead_letter_drainer) for name, store in stores.items()
        }
    finally:
        for store in stores.values():
            await store.client.aclose()


def victims(report: dict[str, Any], holders: dict[str, str | None]) -> dict[str, str]:
    """Per store: the lease holder if it is one of its broker's actors, else the first."""
    chosen = {}
    for store, prefix in FED_BY.items():
        names = sorted(n for n in report["actors"] if n.startswith(prefix))
        holder = holders.get(store)
        chosen[store] = holder if holder in names else names[0]
    return chosen


def back(report: dict[str, Any], pids: dict[str, int]) -> bool:
    """Every killed actor runs again in a new process and is connected."""
    actors = report.get("actors") or {}
    return all(
        actors.get(n, {}).get("connected") and actors[n].get("pid") not in (None, pid)
        for n, pid in pids.items()
    )


async def consumer_actor_kill(ctx: Context) -> None:
    """Kill each store's drainer-lease holder; measure how each store kept counting."""
    report = await asyncio.to_thread(consumers)
    per_broker = {p: sum(n.startswith(p) for n in report["actors"]) for p in FED_BY.values()}
    ctx.notes["actors_per_broker"] = per_broker
    ctx.checks["two_actors_per_broker"] = min(per_broker.values()) >= 2
    holders = await lease_holders()
    chosen = victims(report, holders)
    pids = {name: report["actors"][name]["pid"] for name in chosen.values()}
    at_kill = await totals()
    killed_at = time.monotonic()
    for pid in pids.values():
        os.kill(pid, signal.SIGKILL)
    ctx.notes.update(lease_holders_before=holders, killed=pids)
    report, seen = {}, {}
    while time.monotonic() - killed_at < BACK_TIMEOUT_S:
        try:
            report = await asyncio.to_thread(consumers)
        except Exception:  # noqa: BLE001 - the supervisor may be busy a moment
            report = {}
        if back(report, pids):
            break
        seen = await totals()  # the last count before the killed actors were back
        await asyncio.sleep(0.5)
    back_s = round(time.monotonic() - killed_at, 1)
    ctx.notes["killed_back_after_s"] = back_s
    ctx.checks["killed_actors_back"] = back(report, pids)
    # the siblings consumed while the killed actors were gone (both stores grew)
    grew = {s: seen.get(s, at_kill[s]) - at_kill[s] for s in at_kill}
    ctx.notes["counted_while_killed_were_down"] = grew
    ctx.checks["each_store_counted_while_its_actor_was_down"] = all(g > 0 for g in grew.values())
    after = await lease_holders()
    ctx.notes["lease_holders_after"] = after
    ctx.checks["one_drainer_per_store_of_its_broker"] = all(
        after[store] is not None and after[store].startswith(prefix)
        for store, prefix in FED_BY.items()
    )
