"""The broker message format, shared by the writers (encode) and the consumers (decode).

A message is a *chunk*: ``{"v": 2, "tweets": [<tweet>, ...]}``, UTF-8 JSON, at most
``max_chunk_bytes`` long, holding tweets of one country in acceptance order (so Kafka keys
it by country and keeps per-country order). Every tweet keeps its own id inside it. One
message per chunk instead of one per tweet is what makes the brokers cheap: framing an
AMQP message costs ~110 µs, a tweet inside a chunk ~1 µs.

Version 1 messages (one bare tweet object, what earlier releases published) still decode,
so messages already in a broker still count. Decoding never raises: a chunk holding a bad
tweet yields the good ones plus that one as :class:`Poison`, with its reason.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import groupby
from typing import Any

from pydantic import TypeAdapter, ValidationError

from serve_app.schema import Tweet, describe_errors

CHUNK_VERSION = 2
_OPEN = b'{"v":2,"tweets":['
_CLOSE = b"]}"
_CHUNK_OVERHEAD = len(_OPEN) + len(_CLOSE)


@dataclass(frozen=True)
class Chunk:
    """One broker message: tweets of one country, encoded once for both brokers."""

    country: str
    ids: tuple[str, ...]
    body: bytes


class ChunkTooLarge(ValueError):
    """A single tweet does not fit in ``max_chunk_bytes`` (a misconfiguration, not bad input)."""


def encode_chunks(tweets: Sequence[Tweet], max_chunk_bytes: int) -> list[Chunk]:
    """Group tweets by country (stable: acceptance order kept) and pack each group into
    chunks of at most ``max_chunk_bytes``."""
    by_country = sorted(range(len(tweets)), key=lambda i: tweets[i].country)
    chunks: list[Chunk] = []
    for country, indexes in groupby(by_country, key=lambda i: tweets[i].country):
        chunks.extend(_pack(country, [tweets[i] for i in indexes], max_chunk_bytes))
    return chunks


def _pack(country: str, tweets: list[Tweet], max_chunk_bytes: int) -> Iterator[Chunk]:
    ids: list[str] = []
    bodies: list[bytes] = []
    size = _CHUNK_OVERHEAD
    for tweet in tweets:
        body = tweet.to_json()
        added = len(body) + (1 if bodies else 0)
        if _CHUNK_OVERHEAD + len(body) > max_chunk_bytes:
            raise ChunkTooLarge(
                f"tweet {tweet.id} encodes to {len(body)} bytes; "
                f"MAX_CHUNK_BYTES={max_chunk_bytes} cannot hold it"
            )
        if bodies and size + added > max_chunk_bytes:
            yield Chunk(country, tuple(ids), _OPEN + b",".join(bodies) + _CLOSE)
            ids, bodies, size = [], [], _CHUNK_OVERHEAD
            added = len(body)
        ids.append(tweet.id)
        bodies.append(body)
        size += added
    if bodies:
        yield Chunk(country, tuple(ids), _OPEN + b",".join(bodies) + _CLOSE)


@dataclass(frozen=True)
class Poison:
    """Something in a message that can never be counted, and why. ``body`` is what goes
    to the dead letters: the bad tweet alone, or the whole message if it is unreadable."""

    body: bytes
    reason: str
    id: str | None = None


@dataclass(frozen=True)
class Decoded:
    tweets: list[Tweet]
    poison: list[Poison]


_TWEET = TypeAdapter(Tweet)


def decode_message(body: bytes) -> Decoded:
    """Tweets and poison of one message, in either format; never raises."""
    try:
        document = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        return Decoded([], [Poison(body, f"undecodable: {exc}"[:500])])
    if isinstance(document, dict) and "tweets" in document and "v" in document:
        if document["v"] != CHUNK_VERSION or not isinstance(document["tweets"], list):
            return Decoded([], [Poison(body, f"unknown chunk version {document['v']!r}")])
        return _decode_items(document["tweets"])
    return _decode_items([document], whole=body)


def _decode_items(items: list[Any], whole: bytes | None = None) -> Decoded:
    tweets: list[Tweet] = []
    poison: list[Poison] = []
    for item in items:
        try:
            tweets.append(_TWEET.validate_python(item))
        except ValidationError as exc:
            reason = "; ".join(f"{e['loc']}: {e['msg']}" for e in describe_errors(exc))
            raw = whole if whole is not None else _item_bytes(item)
            item_id = item.get("id") if isinstance(item, dict) else None
            poison.append(Poison(raw, f"invalid tweet: {reason}"[:1000], _str_or_none(item_id)))
    return Decoded(tweets, poison)


def _item_bytes(item: Any) -> bytes:
    return json.dumps(item, ensure_ascii=False, separators=(",", ":")).encode(
        "utf-8", "surrogatepass"
    )


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None
