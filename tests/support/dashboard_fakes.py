"""In-memory stand-ins for the dashboard's sources (no broker, store or Ray needed)."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

from serve_app.model.health import Health


class FakeStore:
    """Counts tweets like ``TweetStore`` (each id once) and answers ``read_stats``."""

    def __init__(self) -> None:
        self.tweets: list[dict[str, Any]] = []
        self._ids: set[str] = set()
        self.error: Exception | None = None
        self.blocked = False

    def record(self, tweets: list[dict[str, Any]]) -> int:
        new = [t for t in tweets if t["id"] not in self._ids]
        self._ids.update(t["id"] for t in new)
        self.tweets.extend(new)
        return len(new)

    async def read_stats(self, latest: int = 0) -> dict[str, Any]:
        if self.error is not None:
            raise self.error
        if self.blocked:
            await asyncio.Event().wait()  # never answers: the caller's timeout must cut it
        countries = Counter(t["country"] for t in self.tweets)
        weathers = Counter(t["weather"] for t in self.tweets)
        pairs = Counter(f"{t['country']}:{t['weather']}" for t in self.tweets)
        stats: dict[str, Any] = {
            "total": len(self.tweets),
            "by_country": dict(sorted(countries.items())),
            "by_weather": dict(sorted(weathers.items())),
            "by_country_weather": dict(sorted(pairs.items())),
        }
        if latest:
            stats["latest"] = list(reversed(self.tweets[-latest:]))
        return stats


def ok(detail: str = "ok") -> Health:
    return {"ok": True, "detail": detail}


class FakeMonitor:
    """Fixed broker readings; ``kafka_down`` turns Kafka's entry into an error entry."""

    def __init__(self, stores: list[str]) -> None:
        self.stores = stores
        self.lag = 3
        self.depth = 2
        self.kafka_down = False
        self.closed = False

    async def read(self) -> dict[str, Any]:
        kafka: dict[str, Any] = {"health": ok("4 partitions"), "lag": self.lag, "dead_letters": 1}
        if self.kafka_down:
            kafka = {
                "health": {"ok": False, "detail": "KafkaConnectionError: down"},
                "lag": None,
                "dead_letters": None,
            }
        return {
            "kafka": kafka,
            "rabbitmq": {"health": ok(), "depth": self.depth, "dead_letters": 0},
            "stores": {
                name: {"health": ok(), "used_memory": 1_048_576, "ops_per_sec": 42}
                for name in self.stores
            },
        }

    async def close(self) -> None:
        self.closed = True


async def fake_replicas() -> dict[str, dict[str, int]]:
    return {
        "ingress": {"Ingress": 2},
        "publisher": {"Publisher": 1, "KafkaWriter": 1, "RabbitWriter": 1},
        "consumers": {"ConsumerSupervisor": 1},
        "dashboard": {"Dashboard": 1},
    }


class FakeClock:
    """A clock the test moves by hand, so rates and freshness are exact."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now
