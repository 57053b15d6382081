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
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import groupby
from typing import Any, Literal

import msgspec
from pydantic import ValidationError

from serve_app.errors import PipelineError
from serve_app.model.schema import Tweet, TweetModel, describe_errors

CHUNK_VERSION = 2
_OPEN = b'{"v":2,"tweets":['
_CLOSE = b"]}"
_CHUNK_OVERHEAD = len(_OPEN) + len(_CLOSE)


@dataclass(frozen=True)
class Chunk:
    """One broker message. ``country`` is the Kafka key of a chunk holding one country's
    tweets, and ``""`` for a chunk of mixed countries (RabbitMQ's fanout needs no key)."""

    country: str
    ids: tuple[str, ...]
    body: bytes


class ChunkTooLarge(PipelineError, ValueError):
    """A single tweet does not fit in ``max_chunk_bytes`` (a misconfiguration, not bad input)."""


class EncodedBatch:
    """A batch of tweets serialized once; chunked per country for Kafka (whose key keeps a
    country's order) and across countries for RabbitMQ (fewer, fuller messages)."""

    def __init__(self, tweets: Sequence[Tweet], max_chunk_bytes: int) -> None:
        self.tweets = tweets
        self.max_chunk_bytes = max_chunk_bytes
        self.bodies = [t.to_json() for t in tweets]
        for tweet, body in zip(tweets, self.bodies, strict=True):
            if _CHUNK_OVERHEAD + len(body) > max_chunk_bytes:
                raise ChunkTooLarge(
                    f"tweet {tweet.id} encodes to {len(body)} bytes; "
                    f"MAX_CHUNK_BYTES={max_chunk_bytes} cannot hold it"
                )

    def chunks(self, by_country: bool) -> list[Chunk]:
        if not by_country:
            return list(self._pack("", range(len(self.tweets))))
        order = sorted(range(len(self.tweets)), key=lambda i: self.tweets[i].country)
        return [
            chunk
            for country, indexes in groupby(order, key=lambda i: self.tweets[i].country)
            for chunk in self._pack(country, indexes)
        ]

    def _pack(self, key: str, indexes: Iterable[int]) -> Iterator[Chunk]:
        ids: list[str] = []
        bodies: list[bytes] = []
        size = _CHUNK_OVERHEAD
        for i in indexes:
            body = self.bodies[i]
            if bodies and size + 1 + len(body) > self.max_chunk_bytes:
                yield Chunk(key, tuple(ids), _OPEN + b",".join(bodies) + _CLOSE)
                ids, bodies, size = [], [], _CHUNK_OVERHEAD
            size += len(body) + (1 if bodies else 0)
            ids.append(self.tweets[i].id)
            bodies.append(body)
        if bodies:
            yield Chunk(key, tuple(ids), _OPEN + b",".join(bodies) + _CLOSE)


def encode_chunks(
    tweets: Sequence[Tweet], max_chunk_bytes: int, by_country: bool = True
) -> list[Chunk]:
    """One layout of :class:`EncodedBatch`, for callers that need only one."""
    return EncodedBatch(tweets, max_chunk_bytes).chunks(by_country)


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


class _Chunk(msgspec.Struct):
    v: Literal[2]  # CHUNK_VERSION
    tweets: list[Tweet]


_CHUNK = msgspec.json.Decoder(_Chunk)


def decode_message(body: bytes) -> Decoded:
    """Tweets and poison of one message, in either format; never raises."""
    try:  # a well-formed chunk: parsed and validated in one pass of msgspec
        return Decoded(_CHUNK.decode(body).tweets, [])
    except (msgspec.DecodeError, RecursionError):
        return decode_carefully(body)  # anything else, poison included


def decode_carefully(body: bytes) -> Decoded:
    """:func:`decode_message` without its fast path: every rule and every poison reason."""
    try:
        document = json.loads(body)
    except (ValueError, RecursionError) as exc:  # ValueError: also a number of 4,301+ digits
        return Decoded([], [Poison(body, f"undecodable: {exc}"[:500])])
    if isinstance(document, dict) and "tweets" in document and "v" in document:
        if document["v"] != CHUNK_VERSION or not isinstance(document["tweets"], list):
            version = json.dumps(document["v"])[:100]
            return Decoded([], [Poison(body, f"unknown chunk version {version}")])
        return _decode_items(document["tweets"])
    return _decode_items([document], whole=body)


def _decode_items(items: list[Any], whole: bytes | None = None) -> Decoded:
    tweets: list[Tweet] = []
    poison: list[Poison] = []
    for item in items:
        try:
            tweets.append(TweetModel.model_validate(item).as_tweet())
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
