"""Stage 4 core: the store schema, the only code that knows Redis/Valkey key names.

No client in here: :mod:`serve_app.store.client` writes and reads through these keys;
``GET /stats``, the tests and the Grafana dashboard generator use :data:`KEYS`. Both stores
(Redis fed by Kafka, Valkey fed by RabbitMQ) use the same layout.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import NamedTuple

from serve_app.model.schema import Tweet


@dataclass(frozen=True)
class StoreKeys:
    """Every key the pipeline writes. ``seen_prefix`` + tweet id marks a counted tweet."""

    total: str = "tweets:total"
    by_country: str = "tweets:by_country"
    by_weather: str = "tweets:by_weather"
    by_country_weather: str = "tweets:by_country_weather"
    latest: str = "tweets:latest"
    conflicts: str = "tweets:conflicts"
    parked_dead_letters: str = "tweets:dead_letters:parked"
    """Dead letters parked by releases before the outbox (a list of envelopes): moved into
    the outbox by the drainer, so they are still published."""
    dead_letter_outbox: str = "tweets:dead_letters:outbox"
    """Every dead letter decided and not yet confirmed by the dead-letter broker: letter id
    -> entry (:func:`serve_app.consume.core.outbox_envelope` reads it)."""
    dead_letter_order: str = "tweets:dead_letters:order"
    """The outbox's letter ids by arrival (a sorted set), so it drains oldest first."""
    dead_letter_drainer: str = "tweets:dead_letters:drainer"
    """Which consumer publishes the outbox (a lease), so two never send one letter twice."""
    poison_prefix: str = "tweets:poison:"
    skipped: str = "tweets:skipped"
    skipped_ranges: str = "tweets:skipped:ranges"
    seen_prefix: str = "tweets:seen:"
    conflict_prefix: str = "tweets:conflict:"
    durable_mark: str = "tweets:durable:mark"  # one write per batch before its WAITAOF

    @staticmethod
    def country_weather_field(country: str, weather: str) -> str:
        return f"{country}:{weather}"

    def data_keys(self) -> tuple[str, ...]:
        """Keys a dashboard may read (everything but the per-id markers)."""
        return (
            self.total,
            self.by_country,
            self.by_weather,
            self.by_country_weather,
            self.latest,
            self.conflicts,
            self.dead_letter_outbox,
            self.skipped,
        )


KEYS = StoreKeys()


FINGERPRINT_CHARS = 16
KEYED_MARK = "k"
"""The first character of a keyed fingerprint. Unkeyed ones (older releases) are lowercase
hex, which sorts below it: a tweet can never take an id over from a marker an older release
wrote, and that marker expires within ``seen_id_ttl_s`` (docs/guarantees.md)."""


def _content(description: str, country: str, weather: str) -> bytes:
    """What makes two tweets with one id the same tweet (not when it was accepted: a retry
    after a 503 is accepted again, later)."""
    return "\x1f".join((description, country, weather)).encode("utf-8")


def fingerprint(key: bytes, description: str, country: str, weather: str) -> str:
    """The content's HMAC-SHA-256 under the consumers' ``fingerprint_key``: the smaller one
    wins an id conflict, and only who holds the key can compute it, so a client cannot
    choose content that wins (it wins by chance, one time in two)."""
    digest = hmac.new(key, _content(description, country, weather), hashlib.sha256)
    return KEYED_MARK + digest.hexdigest()[: FINGERPRINT_CHARS - len(KEYED_MARK)]


def legacy_fingerprint(description: str, country: str, weather: str) -> str:
    """The unkeyed fingerprint older releases wrote into markers (they live 48 h): sent
    along so a redelivery of a tweet they counted stays a duplicate, never a conflict."""
    return hashlib.blake2b(_content(description, country, weather), digest_size=8).hexdigest()


class CountedTweet(NamedTuple):
    """What the store needs of a tweet: id, keyed content fingerprint, the two dimensions,
    its JSON for 'latest', and the unkeyed fingerprint older releases used. A tuple, because
    it is also the row the store script takes (one JSON array per tweet): a consumer builds
    one per tweet it counts."""

    id: str
    fingerprint: str
    country: str
    weather: str
    body: str
    legacy: str = ""

    @classmethod
    def of(cls, tweet: Tweet, key: bytes) -> CountedTweet:
        content = (tweet.description, tweet.country, tweet.weather)
        return cls(
            tweet.id,
            fingerprint(key, *content),
            tweet.country,
            tweet.weather,
            tweet.to_json().decode(),
            legacy_fingerprint(*content),
        )


def marker(tweet: CountedTweet) -> str:
    """The value of ``tweets:seen:<id>``: the counted content's fingerprint and its two
    dimensions, so a later tweet that wins the id can move the counts (``fp:CC:weather``)."""
    return f"{tweet.fingerprint}:{tweet.country}:{tweet.weather}"


def wins(fingerprint: str, counted: str) -> bool:
    """The deterministic winner of two tweets with one id: the smaller fingerprint, so every
    store keeps the same one whatever order it sees them in. A keyed fingerprint never beats
    an unkeyed one (:data:`KEYED_MARK`): a marker an older release wrote keeps its id."""
    return fingerprint < counted


@dataclass(frozen=True)
class Displaced:
    """A tweet counted in an earlier batch that a tweet of this batch (``by``: its index)
    beat for the same id: its counts moved to the winner, and it is the conflict."""

    by: int
    id: str
    fingerprint: str
    country: str
    weather: str

    @classmethod
    def of(cls, by: int, id_: str, seen: str) -> Displaced:
        """From the marker the store held (``fp:CC:weather``)."""
        return cls(by, id_, seen[:FINGERPRINT_CHARS], seen[17:19], seen[20:])


@dataclass(frozen=True)
class RecordResult:
    """What one batch did: new tweets counted, duplicates ignored, and the losers of id
    conflicts: ``refused`` (indexes into the batch, never counted) and ``displaced``
    (counted before, beaten by a tweet of this batch)."""

    new: int = 0
    duplicates: int = 0
    refused: tuple[int, ...] = ()
    displaced: tuple[Displaced, ...] = ()

    @property
    def conflicts(self) -> int:
        return len(self.refused) + len(self.displaced)


MAX_TWEETS_PER_SCRIPT = 1000
"""The most tweets one store script counts. A consumer's batch (100 messages of up to 1,000
tweets each) is written as several scripts, because a store runs a script alone: one of
100,000 tweets held Valkey for over 5 s, refusing every read meanwhile (``BUSY``)."""


def merge_results(
    parts: Sequence[tuple[int, RecordResult]], tweets: Sequence[CountedTweet]
) -> RecordResult:
    """One batch's result from its scripts' results (``(first index, result)``, in order),
    as if it had been one script: the same counts and losers, indexes into the whole batch.
    A loser displaced by a later part whose content an earlier part carried is reported
    ``refused`` at that index, so it is dead-lettered as it came (with its description),
    as one script does for a loser it counted itself."""
    earlier: dict[tuple[str, str], int] = {}  # (id, fingerprint) -> first index, as needed
    new = duplicates = known = 0
    refused: list[int] = []
    displaced: list[Displaced] = []
    for start, part in parts:
        new += part.new
        duplicates += part.duplicates
        refused.extend(start + i for i in part.refused)
        for old in part.displaced:
            for index in range(known, start):
                earlier.setdefault((tweets[index].id, tweets[index].fingerprint), index)
            known = max(known, start)
            counted_here = earlier.get((old.id, old.fingerprint))
            if counted_here is None:
                displaced.append(replace(old, by=start + old.by))
            else:
                refused.append(counted_here)
    return RecordResult(new, duplicates, tuple(refused), tuple(displaced))


# --- the dead-letter outbox ------------------------------------------------------------------
# A dead letter is written into the store by the same script that decides it (an id
# conflict's loser) or before its message is acked (poison), under a deterministic letter id
# whose marker (``conflict_prefix`` / ``poison_prefix`` + id, kept ``seen_id_ttl_s``) makes a
# retried or redelivered batch write it at most once. A consumer publishes the oldest entries
# and removes them only after the broker confirmed them. Entries are JSON: an envelope (poison,
# and letters parked by older releases), or what the record script writes for a conflict's
# loser: ``{"o": origin, "id": tweet id, "body": its JSON}`` (refused, as it came) or
# ``{"o": origin, "id": ..., "seen": its marker, "by": the winner's fingerprint}`` (displaced,
# as the store knew it); ``o`` is the envelope (empty body) of the message it came with.


@dataclass(frozen=True)
class LetterOrigins:
    """Where each tweet of a batch came from, for the letters the record script may write:
    ``templates`` (one envelope JSON per message, empty body) and ``of_tweet`` (for each
    tweet, the index of its message's template)."""

    templates: tuple[str, ...] = ()
    of_tweet: tuple[int, ...] = ()


@dataclass(frozen=True)
class OutboxLetter:
    """One letter waiting in the outbox: its id and its entry."""

    id: str
    entry: str


@dataclass(frozen=True)
class PoisonLetter:
    """A poison letter to put in the outbox once: written if ``marker`` (after
    ``poison_prefix``) is new, or ``always`` (its marker then set), for the first delivery of
    a message whose broker gives no identity a redelivery keeps: identical messages are
    then separate letters, and a redelivery of one finds its marker."""

    marker: str
    id: str
    entry: str
    always: bool = False


def conflict_letter_id(tweet_id: str, fingerprint: str) -> str:
    """The letter of the loser ``fingerprint`` of ``tweet_id``: one per (id, content)."""
    return f"{tweet_id}:{fingerprint}"
