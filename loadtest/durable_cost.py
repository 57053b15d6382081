"""What durable store writes cost: the same drain of tweet batches into each store, first
as before (``appendfsync everysec``, no wait), then durable (``appendfsync always`` and
WAITAOF as the settings ask), in one run against the running stack.

    python -m loadtest.durable_cost --batches 200

Each tweet id is fresh (a uuid prefix), so both drains count every tweet; the server's
``appendfsync`` is set back to what it was afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid

from devstack.config import app_settings
from serve_app.model.schema import Tweet
from serve_app.settings import Settings
from serve_app.store.client import TweetStore, both_stores
from serve_app.store.core import CountedTweet

BATCH = 100
"""Tweets per batch: the consumers' default batch of single-tweet messages."""


def batches(count: int, key: bytes) -> list[list[CountedTweet]]:
    run = uuid.uuid4().hex[:12]
    return [
        [
            CountedTweet.of(
                Tweet(
                    id=f"cost-{run}-{b}-{i}",
                    description="Está lloviendo",
                    country="GT",
                    weather="Lluvioso",
                    accepted_at=time.time(),
                ),
                key,
            )
            for i in range(BATCH)
        ]
        for b in range(count)
    ]


async def drain(store: TweetStore, work: list[list[CountedTweet]]) -> float:
    """Tweets per second of writing ``work`` one batch after the other, as a consumer does."""
    started = time.perf_counter()
    for batch in work:
        await store.record_batch(batch)
    return len(work) * BATCH / (time.perf_counter() - started)


async def measure(settings: Settings, count: int) -> None:
    key = settings.content_key() if settings.fingerprint_key.get_secret_value() else b"k" * 32
    for name, store in both_stores(settings).items():
        fsync = (await store.client.config_get("appendfsync"))["appendfsync"]
        wanted = store.durable.wanted
        try:
            await store.client.config_set("appendfsync", "everysec")
            store.durable.wanted = (0, 0)
            before = await drain(store, batches(count, key))
            await store.client.config_set("appendfsync", "always")
            store.durable.wanted = wanted
            after = await drain(store, batches(count, key))
        finally:
            await store.client.config_set("appendfsync", fsync)
            store.durable.wanted = wanted
        how = "WAITAOF" if store.durable.waitaof else "WAIT"
        print(
            f"{name}: {before:,.0f} tweets/s (everysec, no wait) -> {after:,.0f} tweets/s "
            f"(always, {how} {wanted[0]} {wanted[1]}): {100 * (1 - after / before):.0f} % less"
        )


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m loadtest.durable_cost", description=__doc__)
    parser.add_argument("--batches", type=int, default=200, help=f"batches of {BATCH} tweets")
    args = parser.parse_args()
    asyncio.run(measure(app_settings(), max(1, min(args.batches, 10_000))))


if __name__ == "__main__":
    main()
