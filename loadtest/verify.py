"""Do Redis (fed by Kafka) and Valkey (fed by RabbitMQ) hold exactly the same counts?

    python -m loadtest.verify [--wait 60]     (or `make verify`)

Compares the two stores key by key (total, by country, by weather, country × weather,
conflicts) and exits 1 naming every difference, 0 when they agree. It also fails, naming
them, on broker records a consumer had to skip (deleted by the broker before they were read:
``tweets:skipped``, never silent) and on dead letters still parked in a store (the
dead-letter broker has not taken them yet). ``--wait`` first waits (bounded) until nothing
is left to drain and the stores agree, for use right after a load or a fault.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from devstack.config import app_settings
from devstack.waits import apoll
from serve_app.dashboard.sources import Monitor
from serve_app.store.client import both_stores, read_side_by_side

settings = app_settings()

COMPARED = ("total", "conflicts", "by_country", "by_weather", "by_country_weather")


def differences(redis: dict[str, Any], valkey: dict[str, Any]) -> list[str]:
    """One line per key (or hash field) whose value differs between the stores."""
    found = []
    for key in COMPARED:
        a, b = redis.get(key), valkey.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            for field in sorted(set(a) | set(b)):
                if a.get(field, 0) != b.get(field, 0):
                    found.append(
                        f"{key}[{field}]: redis {a.get(field, 0)} != valkey {b.get(field, 0)}"
                    )
        elif a != b:
            found.append(f"{key}: redis {a} != valkey {b}")
    return found


def unsettled(name: str, stats: dict[str, Any]) -> list[str]:
    """Skipped records and parked dead letters of one store, one line each."""
    found = [
        f"{name}: {count} records of {source} skipped (deleted by the broker before read)"
        for source, count in stats.get("skipped", {}).items()
        if count
    ]
    if stats.get("parked_dead_letters"):
        found.append(f"{name}: {stats['parked_dead_letters']} dead letters still parked")
    return found


async def compare(wait_s: float = 0.0) -> list[str]:
    """The differences once drained and equal, or as they stand when ``wait_s`` ran out."""
    stores = both_stores(settings)
    monitor = Monitor(settings, {})

    async def look() -> tuple[list[str], bool]:
        stats, complete = await read_side_by_side(stores)
        found = (
            differences(stats["redis"], stats["valkey"])
            + [line for n, s in stats.items() for line in unsettled(n, s)]
            if complete
            else [f"{n}: {s['error']}" for n, s in stats.items() if "error" in s]
        )
        backlog = await monitor.read()
        drained = backlog["kafka"].get("lag") == 0 and backlog["rabbitmq"].get("depth") == 0
        return found, drained

    try:
        found, _ = await apoll(
            look, lambda seen: not seen[0] and seen[1], timeout=wait_s, every=0.5
        )
        return found
    finally:
        await monitor.close()
        for store in stores.values():
            await store.client.aclose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--wait", type=float, default=0.0, help="seconds to wait for a drain")
    args = parser.parse_args(argv)
    found = asyncio.run(compare(args.wait))
    if found:
        print("Redis and Valkey differ:\n  " + "\n  ".join(found))
        return 1
    print("Redis and Valkey agree on every count.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
