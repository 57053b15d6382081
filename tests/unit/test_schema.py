"""Unit tests of the tweet schema (pure logic, no servers, no Ray)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import msgspec
import pytest

from serve_app.ingest.core import accept
from serve_app.model.codec import decode_message
from serve_app.model.schema import TweetModel, TweetRules, TweetValidationError, validate_tweets
from tests.support.fakes import RULES

SEED = {"description": "Está lloviendo", "country": "GT", "weather": "Lluvioso"}


def test_seed_tweet_is_valid_and_canonicalised() -> None:
    [tweet] = validate_tweets([{**SEED, "country": "gt", "weather": "LLUVIOSO"}], RULES)
    assert (tweet.country, tweet.weather, tweet.description) == (
        "GT",
        "Lluvioso",
        SEED["description"],
    )


@pytest.mark.parametrize(
    ("field", "value", "fragment"),
    [
        ("country", "ZZ", "ISO 3166-1"),
        ("country", "GTM", "pattern"),
        ("country", "ıo", "pattern"),  # Unicode upper case would make it "IO"
        ("country", "Ｇt", "pattern"),  # fullwidth G
        ("weather", "Nevado", "Lluvioso, Nubloso, Soleado"),
        ("weather", "nubloſo", "Lluvioso, Nubloso, Soleado"),  # long s: casefold "nubloso"
        ("weather", " Nubloso", "Lluvioso, Nubloso, Soleado"),
        ("description", "", "at least 1"),
        ("description", "x" * 281, "at most 280"),
        ("description", "a\ud800b", "valid string"),  # a lone surrogate
        ("id", "has space", "pattern"),
        ("id", "x" * 129, "at most 128"),
    ],
)
def test_bad_fields_are_named(field: str, value: str, fragment: str) -> None:
    with pytest.raises(TweetValidationError) as caught:
        validate_tweets([SEED, {**SEED, field: value}], RULES)
    [error] = caught.value.errors
    assert error["loc"] == [1, field]
    assert fragment in error["msg"]


def test_weather_ignores_ascii_case_only() -> None:
    tweets = validate_tweets([{**SEED, "weather": w} for w in ("soleado", "NUBLOSO")], RULES)
    assert [t.weather for t in tweets] == ["Soleado", "Nubloso"]


def test_unknown_field_and_missing_field_rejected() -> None:
    with pytest.raises(TweetValidationError) as caught:
        validate_tweets([{"description": "a", "country": "GT", "wether": "Soleado"}], RULES)
    locs = {tuple(e["loc"]) for e in caught.value.errors}
    assert locs == {(0, "weather"), (0, "wether")}


def test_280_unicode_characters_kept_byte_exact() -> None:
    text = "🌧️ñ" * 93 + "a"  # 280 code points, many more bytes
    assert len(text) == 280
    [tweet] = accept(validate_tweets([{**SEED, "description": text}], RULES))
    assert json.loads(tweet.to_json())["description"] == text
    assert decode_message(tweet.to_json()).tweets[0].description == text


def test_accept_keeps_client_ids_and_numbers_the_rest_under_one_prefix() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    tweets = validate_tweets([{**SEED, "id": "client-1"}, SEED, SEED], RULES)
    mine, second, third = accept(tweets, "req", now)
    assert (mine.id, second.id, third.id) == ("client-1", "req-1", "req-2")
    assert mine.accepted_at == now
    fresh = accept(tweets[1:])
    assert fresh[0].id.endswith("-0") and len(fresh[0].id) == 38


def test_an_accepted_tweet_keeps_its_weather_whatever_the_rules_are_now() -> None:
    """Ingest checks the weather against the configured values; a tweet already accepted
    (read back from a broker) is not checked again, so changing the list never turns
    messages in a broker into poison."""
    fewer = TweetRules(("Soleado",))
    with pytest.raises(TweetValidationError):
        validate_tweets([SEED], fewer)
    [tweet] = accept(validate_tweets([SEED], RULES))
    again = TweetModel.model_validate(msgspec.to_builtins(tweet), context=fewer.context)
    assert again.as_tweet() == tweet
    assert decode_message(tweet.to_json()).tweets == [tweet]
