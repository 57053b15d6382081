"""Tweets on the client's side: ids given before the first attempt, batches that fit the
server's limits, and JSON-lines input read with errors that name the line."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Iterator, Mapping
from typing import IO, Any

from weather_client.errors import TweetFileError

Tweet = dict[str, Any]
DEFAULT_BATCH_TWEETS = 500
SERVER_MAX_BATCH_TWEETS = 1000
"""The pipeline's array limit (``max_batch_tweets``) unless the server says otherwise."""
SERVER_MAX_BODY_BYTES = 1_048_576
BODY_MARGIN_BYTES = 1024
"""Room left under the body limit for the array's brackets and what an encoder adds."""


def new_id() -> str:
    """A UUID per tweet: unique without coordination, printable ASCII (the id rule)."""
    return str(uuid.uuid4())


def with_id(tweet: Mapping[str, Any]) -> Tweet:
    """A copy of ``tweet`` that has an id: its own if it has one, else a new one. The copy
    is what every attempt sends, so a retry carries the same id."""
    if not isinstance(tweet, Mapping):
        raise TypeError(f"a tweet is a mapping of fields, got {type(tweet).__name__}")
    copy = dict(tweet)
    if not copy.get("id"):
        copy["id"] = new_id()
    return copy


def encoded_size(tweet: Tweet) -> int:
    """Bytes the tweet takes in a request body (compact UTF-8 JSON, plus a comma)."""
    return len(json.dumps(tweet, ensure_ascii=False, separators=(",", ":")).encode()) + 1


def batches(
    tweets: Iterable[Mapping[str, Any]],
    max_tweets: int = DEFAULT_BATCH_TWEETS,
    max_bytes: int = SERVER_MAX_BODY_BYTES - BODY_MARGIN_BYTES,
) -> Iterator[list[Tweet]]:
    """Tweets (given ids) in requests of at most ``max_tweets`` tweets and ``max_bytes``
    of body, in input order; lazily, so a large file is never held whole."""
    if max_tweets < 1:
        raise ValueError(f"a batch holds at least 1 tweet, got {max_tweets}")
    if isinstance(tweets, Mapping):
        raise TypeError("expected an iterable of tweets; put a single tweet in a list")
    batch: list[Tweet] = []
    size = 2
    for tweet in tweets:
        item = with_id(tweet)
        item_size = encoded_size(item)
        if batch and (len(batch) >= max_tweets or size + item_size > max_bytes):
            yield batch
            batch, size = [], 2
        batch.append(item)
        size += item_size
    if batch:
        yield batch


def read_json_lines(stream: IO[str], source: str = "-") -> Iterator[Tweet]:
    """One tweet object per line (blank lines skipped). A line that is not a JSON object
    raises :class:`TweetFileError` naming ``source`` and the line number, before it is sent."""
    for number, line in enumerate(stream, start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except ValueError as exc:
            raise TweetFileError(f"{source}:{number}: not JSON: {exc}") from None
        if not isinstance(item, dict):
            kind = "null" if item is None else type(item).__name__
            raise TweetFileError(f"{source}:{number}: expected a tweet object, got {kind}")
        yield item
