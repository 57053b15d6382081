"""Stage 4 core: the store schema, the only code that knows Redis/Valkey key names.

No client in here: :mod:`serve_app.store.client` writes and reads through these keys;
``GET /stats``, the tests and the Grafana dashboard generator use :data:`KEYS`. Both stores
(Redis fed by Kafka, Valkey fed by RabbitMQ) use the same layout.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from serve_app.model.schema import Tweet


@dataclass(frozen=True)
class StoreKeys:
    """Every key the pipeline writes. ``seen_prefix`` + tweet id marks a counted tweet."""

    total: str = "tweets:total"
    by_country: str = "tweets:by_country"
    by_weather: str = "tweets:by_weather"
    by_country_weather: str = "tweets:by_country_weather"
    latest: str = "tweets:latest"
    conflicts: str = "tweets:conflicts"
    seen_prefix: str = "tweets:seen:"
    conflict_prefix: str = "tweets:conflict:"

    @staticmethod
    def country_weather_field(country: str, weather: str) -> str:
        return f"{country}:{weather}"

    def data_keys(self) -> tuple[str, ...]:
        """Keys a dashboard may read (everything but the per-id markers)."""
        return (
            self.total,
            self.by_country,
            self.by_weather,
            self.by_country_weather,
            self.latest,
            self.conflicts,
        )


KEYS = StoreKeys()


def fingerprint(description: str, country: str, weather: str) -> str:
    """What makes two tweets with one id the same tweet (not when it was accepted: a retry
    after a 503 is accepted again, later)."""
    content = "\x1f".join((description, country, weather)).encode("utf-8")
    return hashlib.blake2b(content, digest_size=8).hexdigest()


@dataclass(frozen=True)
class CountedTweet:
    """What the store needs of a tweet: id, content fingerprint, the two dimensions, and its
    JSON for 'latest'."""

    id: str
    fingerprint: str
    country: str
    weather: str
    body: str

    @classmethod
    def of(cls, tweet: Tweet) -> CountedTweet:
        return cls(
            id=tweet.id,
            fingerprint=fingerprint(tweet.description, tweet.country, tweet.weather),
            country=tweet.country,
            weather=tweet.weather,
            body=tweet.model_dump_json(),
        )


@dataclass(frozen=True)
class RecordResult:
    """What one batch did: new tweets counted, duplicates ignored, conflicting ids refused."""

    new: int = 0
    duplicates: int = 0
    conflicts: tuple[str, ...] = ()
