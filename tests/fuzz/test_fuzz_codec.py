"""Property-based fuzzing of the consumers' decoding (issue #11): ``decode_message`` never
raises, good tweets round-trip, every bad item is poison with a reason, and every item of a
chunk is accounted for. Offline and fast; ``FUZZ_EXAMPLES`` scales ``max_examples``."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from serve_app.model.codec import Decoded, decode_message, encode_chunks
from serve_app.model.schema import Tweet
from tests.support.fuzzing import (
    FIELDS,
    NON_STRINGS,
    OFFLINE,
    bad_values,
    fuzz_settings,
    good_tweets,
)

pytestmark = [pytest.mark.offline, pytest.mark.fuzz]

JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)
TIMES = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
)


@st.composite
def tweets(draw: st.DrawFn) -> Tweet:
    """An accepted tweet, as the writers encode it."""
    fields = draw(good_tweets(OFFLINE, with_id=True))
    fields["country"] = fields["country"].upper()
    return Tweet(**fields, accepted_at=draw(TIMES))


@st.composite
def bad_items(draw: st.DrawFn) -> Any:
    """A chunk item that is not a tweet: an accepted tweet with a field missing, of the wrong
    type, refused by the schema or unknown; or any other JSON value."""
    item = json.loads(draw(tweets()).to_json())
    how = draw(st.sampled_from(("missing", "type", "value", "unknown", "other")))
    if how == "missing":
        del item[draw(st.sampled_from(sorted(item)))]
    elif how == "type":
        item[draw(st.sampled_from(FIELDS))] = draw(NON_STRINGS)
    elif how == "value":  # the weather is checked at ingest only: its list may change
        name = draw(st.sampled_from(("description", "country", "id")))
        item[name] = draw(bad_values(OFFLINE)[name])
    elif how == "unknown":
        item[draw(st.text().filter(lambda k: k not in item))] = draw(JSON_VALUES)
    else:
        return draw(JSON_VALUES.filter(lambda v: not isinstance(v, dict)))
    return item


def canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def assert_accounted(decoded: Decoded, items: int) -> None:
    assert len(decoded.tweets) + len(decoded.poison) == items
    assert all(p.reason and isinstance(p.body, bytes) for p in decoded.poison)


@fuzz_settings(300)
@given(body=st.binary(max_size=2000))
def test_arbitrary_bytes_never_raise(body: bytes) -> None:
    decoded = decode_message(body)
    assert all(p.reason for p in decoded.poison)
    assert decoded.tweets or decoded.poison  # every message yields something


@fuzz_settings(300)
@given(document=JSON_VALUES, ensure_ascii=st.booleans())
def test_arbitrary_json_documents_never_raise(document: Any, ensure_ascii: bool) -> None:
    body = json.dumps(document, ensure_ascii=ensure_ascii).encode("utf-8", "surrogatepass")
    decoded = decode_message(body)
    assert decoded.tweets or decoded.poison
    assert all(p.reason for p in decoded.poison)


@fuzz_settings(200)
@given(
    body=st.sampled_from((b"9" * 4301, b"[" * 100_000, b'{"v":2,"tweets":[' + b"9" * 5000 + b"]}"))
)
def test_limits_of_the_json_parser_are_poison(body: bytes) -> None:
    decoded = decode_message(body)
    assert decoded.tweets == [] and [p.body for p in decoded.poison] == [body]


@fuzz_settings(200)
@given(
    sent=st.lists(tweets(), min_size=1, max_size=30, unique_by=lambda t: t.id),
    by_country=st.booleans(),
)
def test_good_tweets_round_trip_through_chunks(sent: list[Tweet], by_country: bool) -> None:
    chunks = encode_chunks(sent, max_chunk_bytes=4096, by_country=by_country)
    decoded = [decode_message(c.body) for c in chunks]
    assert all(d.poison == [] for d in decoded)
    received = [t for d in decoded for t in d.tweets]
    assert sorted(received, key=lambda t: t.id) == sorted(sent, key=lambda t: t.id)
    assert [t.id for c in chunks for t in decode_message(c.body).tweets] == [
        i for c in chunks for i in c.ids
    ]


@fuzz_settings(150)
@given(items=st.lists(st.tuples(st.booleans(), tweets(), bad_items()), max_size=12))
def test_every_item_of_a_chunk_is_a_tweet_or_poison(items: list[tuple[bool, Tweet, Any]]) -> None:
    chosen = [json.loads(t.to_json()) if good else bad for good, t, bad in items]
    body = json.dumps({"v": 2, "tweets": chosen}).encode()
    decoded = decode_message(body)
    assert_accounted(decoded, len(chosen))
    assert decoded.tweets == [t for good, t, _ in items if good]
    bad = [b for good, _, b in items if not good]
    poisoned = [json.loads(p.body.decode("utf-8", "surrogatepass")) for p in decoded.poison]
    assert [canonical(p) for p in poisoned] == [canonical(b) for b in bad]
    assert all(p.reason.startswith("invalid tweet: ") for p in decoded.poison)
    assert [p.id for p in decoded.poison] == [
        b.get("id") if isinstance(b, dict) and isinstance(b.get("id"), str) else None for b in bad
    ]


@fuzz_settings(200)
@given(tweet=tweets())
def test_version_1_messages_round_trip(tweet: Tweet) -> None:
    assert decode_message(tweet.to_json()) == Decoded([tweet], [])
