"""Unit tests of the tweet schema and the REST body parser (pure logic, no servers)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from serve_app.ingress import HTTPError, parse_tweets
from serve_app.schema import (
    Tweet,
    TweetValidationError,
    accept,
    parse_broker_payload,
    validate_tweets,
)
from serve_app.settings import settings

pytestmark = pytest.mark.offline

SEED = {"description": "Está lloviendo", "country": "GT", "weather": "Lluvioso"}


def test_seed_tweet_is_valid_and_canonicalised() -> None:
    [tweet] = validate_tweets([{**SEED, "country": "gt", "weather": "LLUVIOSO"}])
    assert (tweet.country, tweet.weather, tweet.description) == (
        "GT",
        "Lluvioso",
        SEED["description"],
    )


@pytest.mark.parametrize(
    ("field", "value", "fragment"),
    [
        ("country", "ZZ", "ISO 3166-1"),
        ("country", "GTM", "ISO 3166-1"),
        ("weather", "Nevado", "Lluvioso, Nubloso, Soleado"),
        ("description", "", "at least 1"),
        ("description", "x" * 281, "at most 280"),
    ],
)
def test_bad_fields_are_named(field: str, value: str, fragment: str) -> None:
    with pytest.raises(TweetValidationError) as caught:
        validate_tweets([SEED, {**SEED, field: value}])
    [error] = caught.value.errors
    assert error["loc"] == [1, field]
    assert fragment in error["msg"]


def test_unknown_field_and_missing_field_rejected() -> None:
    with pytest.raises(TweetValidationError) as caught:
        validate_tweets([{"description": "a", "country": "GT", "wether": "Soleado"}])
    locs = {tuple(e["loc"]) for e in caught.value.errors}
    assert locs == {(0, "weather"), (0, "wether")}


def test_280_unicode_characters_kept_byte_exact() -> None:
    text = "🌧️ñ" * 93 + "a"  # 280 code points, many more bytes
    assert len(text) == 280
    [tweet] = accept(validate_tweets([{**SEED, "description": text}]))
    assert json.loads(tweet.to_json())["description"] == text
    assert parse_broker_payload(tweet.to_json()).description == text


def test_accept_keeps_client_id_and_assigns_uuid_otherwise() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    mine, assigned = accept(validate_tweets([{**SEED, "id": "client-1"}, SEED]), now)
    assert mine.id == "client-1"
    assert len(assigned.id) == 36 and assigned.id != mine.id
    assert mine.accepted_at == now


def test_broker_payload_round_trip_and_poison() -> None:
    [tweet] = accept(validate_tweets([SEED]))
    assert parse_broker_payload(tweet.to_json()) == tweet
    for poison in (b"\xff\xfe", b"{}", b'{"id": "x"}', b"[1, 2]"):
        with pytest.raises(ValueError):
            parse_broker_payload(poison)
    assert isinstance(parse_broker_payload(tweet.to_json()), Tweet)


def _parse(body: bytes | str, key: str | None = None):
    raw = body.encode() if isinstance(body, str) else body
    return parse_tweets(raw, key, settings)


def test_parse_single_batch_and_idempotency_key() -> None:
    tweets, is_batch = _parse(json.dumps(SEED), key="k-1")
    assert not is_batch and tweets[0].id == "k-1"
    tweets, is_batch = _parse(json.dumps([SEED, SEED]))
    assert is_batch and len(tweets) == 2


@pytest.mark.parametrize(
    ("body", "key", "status", "fragment"),
    [
        ("{not json", None, 400, "malformed JSON"),
        (b"\xff", None, 400, "malformed JSON"),
        ("42", None, 422, "expected a tweet object"),
        ("[]", None, 422, "1 to"),
        (json.dumps([SEED] * (settings.max_batch_tweets + 1)), None, 422, "1 to"),
        (json.dumps([SEED]), "k", 422, "single tweet"),
        (json.dumps({**SEED, "id": "a"}), "b", 422, "differ"),
    ],
)
def test_parse_errors(body, key, status: int, fragment: str) -> None:
    with pytest.raises(HTTPError) as caught:
        _parse(body, key)
    assert caught.value.status == status
    assert fragment in caught.value.message
