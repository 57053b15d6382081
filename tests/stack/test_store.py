"""The store's one script against the real Redis and Valkey: new, duplicate, conflict."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest

from devstack.config import app_settings
from serve_app.model.schema import Tweet
from serve_app.store.client import both_stores
from serve_app.store.core import CountedTweet

settings = app_settings()


def counted(tweet_id: str, text: str) -> CountedTweet:
    tweet = Tweet(id=tweet_id, description=text, country="AQ", weather="Soleado",
                  accepted_at=datetime.now(UTC))  # fmt: skip
    return CountedTweet.of(tweet)


@pytest.mark.parametrize("name", ["redis", "valkey"])
async def test_an_id_counts_once_and_a_reused_id_with_other_content_is_a_conflict(name) -> None:
    store = both_stores(settings)[name]
    tag = uuid.uuid4().hex
    a, b = f"store-{tag}-a", f"store-{tag}-b"
    before = await store.read_stats()
    first = await store.record_batch([counted(a, "sol"), counted(b, "lluvia")])
    assert (first.new, first.duplicates, first.conflicts) == (2, 0, ())
    # a redelivery (same content, later accepted_at) and a reused id with other content
    again = await store.record_batch([counted(a, "sol"), counted(b, "granizo")])
    assert (again.new, again.duplicates, again.conflicts) == (0, 1, (b,))
    # the same conflict redelivered: refused again, but counted as a conflict once
    await store.record_batch([counted(b, "granizo")])
    after = await store.read_stats()
    assert after["total"] - before["total"] == 2
    assert after["conflicts"] - before["conflicts"] == 1
