"""Id conflicts against the real Redis and Valkey scripts: a ground attack wins only by the
keyed rule's chance, and a marker an older release wrote (unkeyed fingerprint) keeps its
tweet a duplicate on redelivery and its id against other content."""

from __future__ import annotations

import hashlib
import uuid
from datetime import UTC, datetime

import pytest

from devstack.config import app_settings
from serve_app.model.schema import Tweet
from serve_app.store.client import both_stores
from serve_app.store.core import KEYS, CountedTweet

settings = app_settings()
KEY = settings.content_key()
ATTACKS = 32


def tweet(tweet_id: str, text: str, country: str = "AQ") -> Tweet:
    return Tweet(id=tweet_id, description=text, country=country, weather="Soleado",
                 accepted_at=datetime.now(UTC))  # fmt: skip


def unkeyed(t: Tweet) -> str:
    """The fingerprint older releases wrote, and all a client can compute."""
    content = "\x1f".join((t.description, t.country, t.weather)).encode("utf-8")
    return hashlib.blake2b(content, digest_size=8).hexdigest()


def ground(victim: Tweet) -> Tweet:
    """Other content for the victim's id whose unkeyed fingerprint is below the victim's."""
    for i in range(100_000):
        attack = tweet(victim.id, f"takeover #{i}", "BV")
        if unkeyed(attack) < unkeyed(victim):
            return attack
    raise AssertionError("no smaller description found")


@pytest.mark.parametrize("name", ["redis", "valkey"])
async def test_a_ground_attack_wins_only_when_the_keyed_rule_says(name) -> None:
    store = both_stores(settings)[name]
    tag = uuid.uuid4().hex
    victims = [tweet(f"takeover-{tag}-{n}", f"victim {n}") for n in range(ATTACKS)]
    attacks = [ground(v) for v in victims]
    try:
        first = await store.record_batch([CountedTweet.of(v, KEY) for v in victims])
        assert first.new == ATTACKS
        result = await store.record_batch([CountedTweet.of(a, KEY) for a in attacks])
        taken = {d.id for d in result.displaced}
        for victim, attack in zip(victims, attacks, strict=True):
            keyed_wins = (
                CountedTweet.of(attack, KEY).fingerprint < CountedTweet.of(victim, KEY).fingerprint
            )
            assert (victim.id in taken) == keyed_wins, victim.id
        assert len(taken) < ATTACKS  # every attack "won" by the function a client knows
    finally:
        await store.client.aclose()


@pytest.mark.parametrize("name", ["redis", "valkey"])
async def test_a_marker_of_an_older_release_keeps_its_tweet_and_its_id(name) -> None:
    store = both_stores(settings)[name]
    old = tweet(f"legacy-{uuid.uuid4().hex}", "contado por la versión anterior")
    key = f"{KEYS.seen_prefix}{old.id}"
    try:
        # what an older release wrote when it counted ``old``
        await store.client.set(key, f"{unkeyed(old)}:AQ:Soleado", ex=settings.seen_id_ttl_s)
        before = await store.read_stats()
        again = await store.record_batch([CountedTweet.of(old, KEY)])  # a redelivery
        assert (again.new, again.duplicates, again.refused, again.displaced) == (0, 1, (), ())
        other = tweet(old.id, "otra cosa con el mismo id", "BV")
        conflict = await store.record_batch([CountedTweet.of(other, KEY)])
        assert (conflict.new, conflict.refused, conflict.displaced) == (0, (0,), ())
        after = await store.read_stats()
        assert after["total"] == before["total"]
        assert after["by_country"].get("BV", 0) == before["by_country"].get("BV", 0)
        assert after["conflicts"] - before["conflicts"] == 1
        assert await store.client.get(key) == f"{unkeyed(old)}:AQ:Soleado"
    finally:
        await store.client.aclose()
