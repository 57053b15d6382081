"""The broker message format: chunks out, tweets and per-tweet poison back (no servers)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from serve_app.model.codec import ChunkTooLarge, decode_message, encode_chunks
from serve_app.model.schema import Tweet

NOW = datetime(2026, 11, 28, tzinfo=UTC)


def tweet(i: int, country: str = "GT", text: str = "lluvia") -> Tweet:
    return Tweet(id=f"t-{i}", description=f"{text} {i}", country=country, weather="Lluvioso",
                 accepted_at=NOW)  # fmt: skip


def test_chunks_group_by_country_in_order_and_round_trip() -> None:
    tweets = [tweet(i, ["GT", "SV", "GT", "HN"][i % 4]) for i in range(40)]
    chunks = encode_chunks(tweets, max_chunk_bytes=100_000)
    assert [c.country for c in chunks] == ["GT", "HN", "SV"]
    for chunk in chunks:
        decoded = decode_message(chunk.body)
        assert decoded.poison == []
        assert [t.id for t in decoded.tweets] == list(chunk.ids)
        expected = [t for t in tweets if t.country == chunk.country]
        assert decoded.tweets == expected  # same tweets, acceptance order kept


def test_mixed_chunks_keep_acceptance_order_across_countries() -> None:
    tweets = [tweet(i, ["GT", "SV"][i % 2]) for i in range(10)]
    [chunk] = encode_chunks(tweets, max_chunk_bytes=100_000, by_country=False)
    assert chunk.country == "" and decode_message(chunk.body).tweets == tweets


def test_chunks_respect_the_byte_bound() -> None:
    tweets = [tweet(i, text="ñ" * 200) for i in range(100)]
    chunks = encode_chunks(tweets, max_chunk_bytes=4096)
    assert len(chunks) > 1
    assert all(len(c.body) <= 4096 for c in chunks)
    assert [i for c in chunks for i in c.ids] == [t.id for t in tweets]
    with pytest.raises(ChunkTooLarge):
        encode_chunks([tweet(0, text="x" * 270)], max_chunk_bytes=200)


def test_version_1_single_tweet_messages_still_decode() -> None:
    old = tweet(7)
    decoded = decode_message(old.to_json())
    assert decoded.tweets == [old] and decoded.poison == []


def test_a_bad_tweet_in_a_chunk_is_poison_alone_with_its_reason() -> None:
    good = json.loads(tweet(1).to_json())
    bad = {**good, "id": "t-bad", "country": "ZZ"}
    body = json.dumps({"v": 2, "tweets": [good, bad, "junk"]}).encode()
    decoded = decode_message(body)
    assert [t.id for t in decoded.tweets] == ["t-1"]
    assert [p.id for p in decoded.poison] == ["t-bad", None]
    assert "country" in decoded.poison[0].reason
    assert json.loads(decoded.poison[0].body) == bad


@pytest.mark.parametrize(
    "body",
    [
        b"\xff\xfe",
        b"{}",
        b'{"id": "x"}',
        b"[1, 2]",
        b'{"v": 3, "tweets": []}',
        b"[" * 5000,
        b"9" * 4301,
    ],  # json.loads raises a plain ValueError past 4,300 digits
)
def test_unreadable_messages_are_poison_whole(body: bytes) -> None:
    decoded = decode_message(body)
    assert decoded.tweets == []
    assert [p.body for p in decoded.poison] == [body]


def _chunk(**changes: object) -> bytes:
    document = {"v": 2, "tweets": [json.loads(tweet(i).to_json()) for i in range(3)]}
    return json.dumps({**document, **changes}, ensure_ascii=False).encode()


@pytest.mark.parametrize(
    "body",
    [
        _chunk(),
        _chunk(extra="ignored"),
        _chunk(v=True),
        _chunk(v=2.0),
        _chunk(v="2"),
        _chunk(tweets=[]),
        _chunk(tweets=[{"description": "x", "country": "GT", "weather": "Lluvioso"}]),
        _chunk().replace(b'"v": 2', b'"v": 2, "v": 3'),  # duplicate keys: the last wins
        tweet(9).to_json(),
        "Está lloviendo".encode(),
    ],
)
def test_the_fast_path_decodes_exactly_as_the_careful_one(body: bytes) -> None:
    from serve_app.model.codec import decode_carefully

    fast, careful = decode_message(body), decode_carefully(body)
    assert fast.tweets == careful.tweets
    assert [(p.body, p.reason, p.id) for p in fast.poison] == [
        (p.body, p.reason, p.id) for p in careful.poison
    ]


def test_a_well_formed_chunk_takes_the_fast_path() -> None:
    from serve_app.model import codec

    assert codec._CHUNK.decode(_chunk()).tweets == [tweet(i) for i in range(3)]
