"""What the load tools read to know what happened: both stores' counters, consumer lag
and RabbitMQ depth, and the Gateway's ``GET /stats``. Every address comes from the
application's settings as the tooling sees them (:func:`devstack.config.app_settings`)."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from typing import Any

from devstack.config import app_settings, stack_config
from serve_app.store.client import connect_redis, connect_valkey
from serve_app.store.core import KEYS

HTTP_BASE = stack_config.serve_http_url


class Counters:
    """``tweets:total`` of Redis and Valkey, read directly (cheap to poll)."""

    def __init__(self) -> None:
        self.redis = connect_redis(app_settings())
        self.valkey = connect_valkey(app_settings())

    async def totals(self) -> tuple[int, int]:
        r, v = await asyncio.gather(self.redis.get(KEYS.total), self.valkey.get(KEYS.total))
        return int(r or 0), int(v or 0)

    async def counted(self, ids: list[str]) -> tuple[list[bool], list[bool]]:
        """Whether each id is counted in Redis and in Valkey (its seen-marker exists)."""
        keys = [f"{KEYS.seen_prefix}{i}" for i in ids]

        async def check(client: Any) -> list[bool]:
            async with client.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.exists(key)
                return [bool(x) for x in await pipe.execute()]

        r, v = await asyncio.gather(check(self.redis), check(self.valkey))
        return r, v

    async def pause_writes(self, seconds: float) -> None:
        """Both stores hold every write (``CLIENT PAUSE ... WRITE``; reads still answer)
        for at most ``seconds``: the consumers stop counting while the brokers keep the
        backlog, which :meth:`resume_writes` releases at once."""
        ms = max(1, round(seconds * 1000))
        await asyncio.gather(self.redis.client_pause(ms, all=False),
                             self.valkey.client_pause(ms, all=False))  # fmt: skip

    async def resume_writes(self) -> None:
        await asyncio.gather(self.redis.client_unpause(), self.valkey.client_unpause())

    async def close(self) -> None:
        await self.redis.aclose()
        await self.valkey.aclose()


async def lag() -> dict[str, int | None]:
    """Kafka consumer-group lag and RabbitMQ ready depth (None if unreadable)."""
    from serve_app.brokers.kafka import kafka_lag
    from serve_app.brokers.rabbitmq import rabbit_depth

    async def safe(fn: Any) -> int | None:
        try:
            return int(await asyncio.wait_for(fn(app_settings()), timeout=15))
        except Exception:  # noqa: BLE001 - reported as unknown, not fatal
            return None

    kafka, rabbit = await asyncio.gather(safe(kafka_lag), safe(rabbit_depth))
    return {"kafka_lag": kafka, "rabbitmq_depth": rabbit}


def http_stats(timeout: float = 10.0) -> dict[str, Any]:
    """``GET /stats`` of the Gateway."""
    with urllib.request.urlopen(f"{HTTP_BASE}/stats", timeout=timeout) as resp:
        return json.loads(resp.read())


def stats_totals(stats: dict[str, Any]) -> tuple[int, int]:
    return int(stats["redis"]["total"]), int(stats["valkey"]["total"])
