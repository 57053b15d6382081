"""The store's scripts against the real Redis and Valkey: new, duplicate, conflict (the same
winner in either order), parked dead letters and skipped ranges."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest

from devstack.config import app_settings
from serve_app.model.schema import Tweet
from serve_app.store.client import both_stores
from serve_app.store.core import KEYS, MAX_TWEETS_PER_SCRIPT, CountedTweet

settings = app_settings()


def counted(tweet_id: str, text: str, country: str = "AQ") -> CountedTweet:
    tweet = Tweet(id=tweet_id, description=text, country=country, weather="Soleado",
                  accepted_at=datetime.now(UTC))  # fmt: skip
    return CountedTweet.of(tweet, settings.content_key())


def ordered(tweet_id: str) -> tuple[CountedTweet, CountedTweet]:
    """Two contents for one id: (winner, loser) by the rule, smaller fingerprint wins."""
    a, b = counted(tweet_id, "sol", "AQ"), counted(tweet_id, "granizo", "BV")
    return (a, b) if a.fingerprint < b.fingerprint else (b, a)


@pytest.mark.parametrize("name", ["redis", "valkey"])
async def test_an_id_counts_once_and_a_later_loser_is_a_conflict(name) -> None:
    store = both_stores(settings)[name]
    tag = uuid.uuid4().hex
    a, b = f"store-{tag}-a", f"store-{tag}-b"
    winner, loser = ordered(b)
    before = await store.read_stats()
    first = await store.record_batch([counted(a, "sol"), winner])
    assert (first.new, first.duplicates, first.refused, first.displaced) == (2, 0, (), ())
    # a redelivery (same content, later accepted_at) and the id reused with other content
    again = await store.record_batch([counted(a, "sol"), loser])
    assert (again.new, again.duplicates, again.refused, again.displaced) == (0, 1, (1,), ())
    # the same conflict redelivered: refused again, but counted as a conflict once
    await store.record_batch([loser])
    after = await store.read_stats()
    assert after["total"] - before["total"] == 2
    assert after["conflicts"] - before["conflicts"] == 1


@pytest.mark.parametrize("name", ["redis", "valkey"])
async def test_a_later_winner_takes_the_id_and_moves_the_counts(name) -> None:
    """Either order ends the same: the winner counted (its country), the loser a conflict."""
    store = both_stores(settings)[name]
    ends = []
    for order in ("winner first", "loser first"):
        tweet_id = f"store-{uuid.uuid4().hex}"
        winner, loser = ordered(tweet_id)
        before = await store.read_stats()
        for t in (winner, loser) if order == "winner first" else (loser, winner):
            result = await store.record_batch([t])
        if order == "loser first":
            [old] = result.displaced
            assert (old.id, old.fingerprint, old.country) == (tweet_id, loser.fingerprint,
                                                                loser.country)  # fmt: skip
        await store.record_batch([loser, winner])  # redeliveries change nothing
        after = await store.read_stats()
        ends.append(
            {
                "total": after["total"] - before["total"],
                "conflicts": after["conflicts"] - before["conflicts"],
                winner.country: after["by_country"].get(winner.country, 0)
                - before["by_country"].get(winner.country, 0),
                loser.country: after["by_country"].get(loser.country, 0)
                - before["by_country"].get(loser.country, 0),
            }
        )
    assert ends[0] == ends[1] == {"total": 1, "conflicts": 1, winner.country: 1,
                                  loser.country: 0}  # fmt: skip


@pytest.mark.parametrize("name", ["redis", "valkey"])
async def test_both_contents_in_one_batch_keep_the_winner(name) -> None:
    store = both_stores(settings)[name]
    tweet_id = f"store-{uuid.uuid4().hex}"
    winner, loser = ordered(tweet_id)
    result = await store.record_batch([loser, winner])
    assert (result.new, result.refused, result.displaced) == (1, (0,), ())
    again = await store.record_batch([winner, loser])
    assert (again.duplicates, again.refused) == (1, (1,))


@pytest.mark.parametrize("size", [149, MAX_TWEETS_PER_SCRIPT + 149])
@pytest.mark.parametrize("name", ["redis", "valkey"])
async def test_a_large_batch_counts_every_field_and_keeps_the_newest_in_order(name, size) -> None:
    """Counters summed per field within a batch, a displacement moving one count back out
    (across two scripts in the larger batch), and the latest list holding the batch's newest
    bodies, newest first."""
    store = both_stores(settings)[name]
    tag = uuid.uuid4().hex
    countries = ["AQ", "BV", "TF"]
    tweets = [counted(f"store-{tag}-{i}", f"t{i}", countries[i % 3]) for i in range(size)]
    winner, loser = ordered(f"store-{tag}-moved")
    before = await store.read_stats()
    result = await store.record_batch([*tweets[:70], loser, *tweets[70:], winner])
    assert (result.new, result.refused) == (size + 1, (70,))
    after = await store.read_stats(latest=settings.latest_tweets_length)
    assert after["total"] - before["total"] == size + 1
    expected = {c: sum(t.country == c for t in tweets) for c in countries}
    expected[winner.country] += 1
    for country, count in expected.items():
        assert after["by_country"].get(country, 0) - before["by_country"].get(country, 0) == count
    weathers = after["by_weather"].get("Soleado", 0) - before["by_weather"].get("Soleado", 0)
    assert weathers == size + 1
    newest = [winner, *reversed(tweets[70:]), loser, *reversed(tweets[:70])]
    # other writers (the stack's consumers) may have pushed tweets since: ours, in order
    kept = [t["id"] for t in after["latest"] if t["id"].startswith(f"store-{tag}-")]
    assert kept and kept == [t.id for t in newest[: len(kept)]]


@pytest.mark.parametrize("name", ["redis", "valkey"])
async def test_any_text_reaches_the_store_as_it_was(name) -> None:
    """Ids and descriptions with quotes, backslashes, control and non-ASCII characters
    survive the JSON the script decodes."""
    store = both_stores(settings)[name]
    tag = uuid.uuid4().hex
    texts = ['comillas " y \\ barra', "Está lloviendo 🌧️ en Xelajú", "tab\tnul\u0000", "[1,2]"]
    tweets = [counted(f'store-{tag}-"{i}"\\', text) for i, text in enumerate(texts)]
    result = await store.record_batch(tweets)
    assert result.new == len(tweets)
    latest = (await store.read_stats(latest=settings.latest_tweets_length))["latest"]
    ours = [(t["id"], t["description"]) for t in latest if t["id"].startswith(f"store-{tag}-")]
    assert list(reversed(ours)) == [(t.id, text) for t, text in zip(tweets, texts, strict=True)]
    again = await store.record_batch(tweets)
    assert (again.new, again.duplicates) == (0, len(tweets))


@pytest.mark.parametrize("name", ["redis", "valkey"])
async def test_skipped_ranges_are_kept_and_reported_once(name) -> None:
    """(Dead letters waiting in the store: tests/stack/test_dead_letter_outbox.py.)"""
    store = both_stores(settings)[name]
    source = f"test-topic-{uuid.uuid4().hex[:8]}/0"
    assert await store.record_skipped(source, 100, 149)
    assert not await store.record_skipped(source, 100, 149)  # found again: counted once
    assert (await store.read_stats())["skipped"][source] == 50
    await store.client.hdel(KEYS.skipped, source)
    await store.client.hdel(KEYS.skipped_ranges, f"{source}:100-149")
