"""Ids, batches and JSON-lines input on the client's side (weather_client.tweets)."""

from __future__ import annotations

import io
import json

import pytest
from weather_client.errors import TweetFileError
from weather_client.tweets import batches, encoded_size, read_json_lines, with_id

TWEET = {"description": "Está lloviendo", "country": "GT", "weather": "Lluvioso"}


def test_a_tweet_without_an_id_gets_a_fresh_one_and_the_caller_keeps_its_dict() -> None:
    original = dict(TWEET)
    first, second = with_id(original), with_id(original)
    assert "id" not in original
    assert first["id"] != second["id"]
    assert len(first["id"]) == 36 and first["id"].isascii()


def test_a_given_id_is_kept() -> None:
    assert with_id({**TWEET, "id": "mine-1"})["id"] == "mine-1"
    assert with_id({**TWEET, "id": ""})["id"] != ""  # empty means "give me one", as in gRPC


def test_a_non_mapping_is_refused_by_type() -> None:
    with pytest.raises(TypeError, match="list"):
        with_id([1, 2])  # type: ignore[arg-type]


def test_batches_hold_at_most_n_tweets_in_input_order_with_ids() -> None:
    tweets = [{**TWEET, "description": f"t{i}"} for i in range(23)]
    got = list(batches(tweets, max_tweets=10))
    assert [len(b) for b in got] == [10, 10, 3]
    assert [t["description"] for b in got for t in b] == [f"t{i}" for i in range(23)]
    assert all(t["id"] for b in got for t in b)


def test_batches_also_stay_under_the_body_limit() -> None:
    tweets = [{**TWEET, "id": f"id-{i}", "description": "x" * 280} for i in range(10)]
    size = encoded_size(with_id(tweets[0]))
    got = list(batches(tweets, max_tweets=1000, max_bytes=2 + 3 * size))
    assert [len(b) for b in got] == [3, 3, 3, 1]
    for batch in got:
        body = json.dumps(batch, ensure_ascii=False, separators=(",", ":")).encode()
        assert len(body) <= 2 + 3 * size


def test_batches_are_lazy() -> None:
    def endless():
        n = 0
        while True:
            n += 1
            yield {**TWEET, "id": f"e{n}"}

    first = next(batches(endless(), max_tweets=5))
    assert [t["id"] for t in first] == [f"e{i}" for i in range(1, 6)]


def test_a_single_tweet_instead_of_an_iterable_is_named() -> None:
    with pytest.raises(TypeError, match="in a list"):
        list(batches(TWEET))


def test_batch_size_must_be_positive() -> None:
    with pytest.raises(ValueError):
        list(batches([TWEET], max_tweets=0))


def test_json_lines_skip_blank_lines() -> None:
    text = json.dumps(TWEET) + "\n\n  \n" + json.dumps({**TWEET, "id": "b"}) + "\n"
    assert [t.get("id") for t in read_json_lines(io.StringIO(text))] == [None, "b"]


@pytest.mark.parametrize(
    ("line", "problem"),
    [("{not json", "not JSON"), ("[1, 2]", "got list"), ("null", "got null"), ('"x"', "got str")],
)
def test_a_bad_line_is_named_by_source_and_number(line: str, problem: str) -> None:
    text = json.dumps(TWEET) + "\n" + line + "\n"
    reader = read_json_lines(io.StringIO(text), "tweets.jsonl")
    assert next(reader) == TWEET
    with pytest.raises(TweetFileError, match=f"tweets.jsonl:2: .*{problem}"):
        next(reader)
