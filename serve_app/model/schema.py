"""The tweet schema: the rules every path (REST, WebSocket, gRPC, consumers) validates by.

The gRPC messages in proto/weather/v1/weather.proto carry the same fields; the rules below
are the only rules. Normalisation is deliberately small and documented, so that no
look-alike can pass for a valid value:

* ``country``: exactly two ASCII letters, upper-cased, in ISO 3166-1 alpha-2 (so ``"ıo"``,
  whose Unicode upper case is ``"IO"``, is refused);
* ``weather``: one of the configured values, ignoring the case of ASCII letters only (so
  ``"nubloſo"``, whose Unicode case fold is ``"nubloso"``, is refused);
* ``description``: 1–280 code points of valid Unicode (lone surrogates are refused),
  kept byte-exact.

Tweets are msgspec structs (:class:`TweetIn`, :class:`Tweet`): decoding, checking and
encoding them costs a few µs where pydantic models cost tens. Every request is checked by
the fast rules first (:func:`checked_tweets`); anything they do not accept goes to the
pydantic models below (:class:`TweetInModel`), which name every problem: so a valid tweet
never pays for pydantic, and a refusal reads exactly as it always did. The fast rules
accept nothing the pydantic models refuse (tests/unit/test_fast_schema.py checks it).

The configured weather values reach validation as :class:`TweetRules`: settings are passed
in, not read globally. Tweets read back from a broker were validated at ingest, so they are
checked for shape only (a changed weather list never turns messages already in a broker
into poison).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Annotated, Any

import msgspec
import pycountry
from pydantic import (
    BaseModel,
    ConfigDict,
    StringConstraints,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from serve_app.errors import PipelineError

COUNTRY_CODES: frozenset[str] = frozenset(c.alpha_2 for c in pycountry.countries)
DESCRIPTION_MAX_CHARS = 280
ID_MAX_CHARS = 128
WEATHER_MAX_CHARS = 64
ID_PATTERN = r"^[\x21-\x7e]+$"

TweetId = Annotated[
    str, StringConstraints(min_length=1, max_length=ID_MAX_CHARS, pattern=ID_PATTERN)
]

_COUNTRY_OF: dict[str, str] = {
    spelling: code
    for code in COUNTRY_CODES
    for spelling in (code, code.lower(), code[0] + code[1].lower(), code[0].lower() + code[1])
}
"""Every ASCII spelling of a code (``gt``, ``Gt``, ``gT``, ``GT``) to the code itself."""
_SURROGATE = re.compile("[\ud800-\udfff]")


def _ascii_key(value: str) -> str | None:
    """The case-insensitive key of an ASCII string; None for anything else."""
    return value.lower() if value.isascii() else None


@dataclass(frozen=True)
class TweetRules:
    """What validation needs from the settings: the accepted weather values."""

    weathers: tuple[str, ...]
    _by_key: dict[str, str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        by_key = {_ascii_key(w) or w: w for w in self.weathers}
        object.__setattr__(self, "_by_key", by_key)

    def canonical_weather(self, value: str) -> str | None:
        return self._by_key.get(_ascii_key(value) or value)

    @property
    def context(self) -> dict[str, Any]:
        return {"rules": self}


class TweetIn(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A tweet as a client sends it (``id`` None: the pipeline gives it one). Decoded by
    msgspec with unknown fields refused; its values are checked by :func:`checked_tweets`."""

    id: str | None = None
    description: str
    country: str
    weather: str


class Tweet(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A tweet the pipeline has taken in: it always has an id and an acceptance time. The
    rules apply when it is decoded from a broker message (shape only: no weather check, the
    rules applied at ingest and an accepted tweet keeps its weather whatever they are now);
    built in code, its values are trusted but for the id's characters and the country."""

    id: Annotated[str, msgspec.Meta(min_length=1, max_length=ID_MAX_CHARS)]
    description: Annotated[str, msgspec.Meta(min_length=1, max_length=DESCRIPTION_MAX_CHARS)]
    country: str
    weather: Annotated[str, msgspec.Meta(min_length=1, max_length=WEATHER_MAX_CHARS)]
    accepted_at: datetime

    def __post_init__(self) -> None:
        """The id's characters and the country code, by str methods and one dict lookup
        (a ``Meta`` pattern runs Python's re per field: it tripled the consumers' decoding)."""
        if not _printable_ascii(self.id):
            raise ValueError(f"id must be printable ASCII without spaces, got {self.id!r}")
        code = _COUNTRY_OF.get(self.country)
        if code is None:
            raise ValueError(f"'{self.country}' is not an ISO 3166-1 alpha-2 country code")
        self.country = code

    def to_json(self) -> bytes:
        """The broker payload: UTF-8 JSON, the description byte-exact, fields in the order
        above (the bytes pydantic produced for the same tweet)."""
        return _ENCODER.encode(self)


def _printable_ascii(value: str) -> bool:
    """Whether ``value`` is made of ``\\x21``-``\\x7e`` only (what an id may hold)."""
    return value.isascii() and value.isprintable() and " " not in value


_ENCODER = msgspec.json.Encoder()


def valid_id(value: str | None) -> bool:
    return value is None or (0 < len(value) <= ID_MAX_CHARS and _printable_ascii(value))


def _checked(tweet: TweetIn, rules: TweetRules) -> TweetIn | None:
    """The tweet normalised (country upper-cased, weather as configured), or None if any
    rule might refuse it: then the pydantic models decide, and name the problem."""
    description, weather = tweet.description, tweet.weather
    country = _COUNTRY_OF.get(tweet.country)
    canonical = rules.canonical_weather(weather) if len(weather) <= WEATHER_MAX_CHARS else None
    if (
        country is None
        or not canonical  # "" too: pydantic refuses an empty weather whatever is configured
        or not 1 <= len(description) <= DESCRIPTION_MAX_CHARS
        or not (description.isascii() or _SURROGATE.search(description) is None)
        or not valid_id(tweet.id)
    ):
        return None
    return TweetIn(id=tweet.id, description=description, country=country, weather=canonical)


def checked_tweets(tweets: Sequence[TweetIn], rules: TweetRules) -> list[TweetIn] | None:
    """Every tweet normalised if all pass the fast rules, else None (pydantic decides)."""
    out = []
    for tweet in tweets:
        passed = _checked(tweet, rules)
        if passed is None:
            return None
        out.append(passed)
    return out


_AS_TWEETS = msgspec.json.Decoder(TweetIn | list[TweetIn])
_KEY = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"\s*(:?)')
"""A JSON string, and the colon after it if it is an object's key."""


def key_count(body: bytes) -> int:
    """How many object keys a well-formed JSON document holds (strings followed by a colon;
    every string is matched whole, so nothing inside one is mistaken for a key)."""
    found = _KEY.findall(body)
    return len(found) - found.count(b"")


def decode_tweets(body: bytes, rules: TweetRules) -> TweetIn | list[TweetIn] | None:
    """The common request in one msgspec pass: a tweet object or an array of them, valid,
    each key once; None for anything else (the careful parser decides and names it).

    msgspec keeps the last of two equal keys instead of refusing them. Each tweet decoded
    says which keys it had (``id`` None: absent, since a present ``"id": null`` counts as
    one key too many below), and a document holding one colon per such key holds each key
    once: a key is always followed by one colon, and more colons (inside strings) only
    make the exact count of keys necessary."""
    try:
        decoded = _AS_TWEETS.decode(body)
    except (msgspec.DecodeError, RecursionError):
        return None
    items = decoded if isinstance(decoded, list) else [decoded]
    keys = sum(3 if t.id is None else 4 for t in items)
    if body.count(b":") != keys and key_count(body) != keys:
        return None
    tweets = checked_tweets(items, rules)
    if tweets is None:
        return None
    return tweets if isinstance(decoded, list) else tweets[0]


class TweetInModel(BaseModel):
    """The careful rules (pydantic): every problem of a refused tweet, named with where it is.
    Unknown fields are rejected so typos do not vanish."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False, title="TweetIn")

    id: TweetId | None = None
    description: Annotated[str, StringConstraints(min_length=1, max_length=DESCRIPTION_MAX_CHARS)]
    country: Annotated[str, StringConstraints(pattern=r"^[A-Za-z]{2}$")]
    weather: Annotated[str, StringConstraints(min_length=1, max_length=WEATHER_MAX_CHARS)]

    @field_validator("country")
    @classmethod
    def _known_country(cls, value: str) -> str:
        code = value.upper()
        if code not in COUNTRY_CODES:
            raise ValueError(f"'{value}' is not an ISO 3166-1 alpha-2 country code")
        return code

    @field_validator("weather")
    @classmethod
    def _configured_weather(cls, value: str, info: ValidationInfo) -> str:
        rules: TweetRules | None = (info.context or {}).get("rules")
        if rules is None:
            return value
        canonical = rules.canonical_weather(value)
        if canonical is None:
            raise ValueError(f"'{value}' is not one of {', '.join(rules.weathers)}")
        return canonical


class TweetModel(TweetInModel):
    """The careful rules of a tweet read back from a broker: shape only (no weather check)."""

    model_config = ConfigDict(title="Tweet")

    id: TweetId
    accepted_at: datetime

    @field_validator("weather")
    @classmethod
    def _configured_weather(cls, value: str) -> str:  # type: ignore[override]
        return value

    def as_tweet(self) -> Tweet:
        return Tweet(
            id=self.id,
            description=self.description,
            country=self.country,
            weather=self.weather,
            accepted_at=self.accepted_at,
        )


_TWEET_LIST = TypeAdapter(list[TweetInModel])


def accepted_tweets(tweets: Sequence[TweetIn], ids: Sequence[str], at: datetime) -> list[Tweet]:
    """Validated tweets with their ids and acceptance time, as :class:`Tweet` objects."""
    return [
        Tweet(id=i, description=t.description, country=t.country, weather=t.weather, accepted_at=at)
        for t, i in zip(tweets, ids, strict=True)
    ]


class TweetValidationError(PipelineError, ValueError):
    """Bad input, with one entry per problem naming where it is (index and field)."""

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        self.errors = errors
        super().__init__("; ".join(f"{e['loc']}: {e['msg']}" for e in errors))


def validate_tweets(
    items: list[Any], rules: TweetRules, *, index_errors: bool = True
) -> list[TweetIn]:
    """Validate every item before any is used; one bad item rejects them all."""
    fast = fast_validate(items, rules)
    if fast is not None:
        return fast
    return validate_tweets_carefully(items, rules, index_errors=index_errors)


def fast_validate(items: list[Any], rules: TweetRules) -> list[TweetIn] | None:
    """:func:`validate_tweets` of items the fast rules accept (msgspec); else None."""
    try:
        return checked_tweets(msgspec.convert(items, list[TweetIn]), rules)
    except msgspec.ValidationError:
        return None


def validate_tweets_carefully(
    items: list[Any], rules: TweetRules, *, index_errors: bool = True
) -> list[TweetIn]:
    """:func:`validate_tweets` by the pydantic models: every problem named."""
    try:
        models = _TWEET_LIST.validate_python(items, context=rules.context)
    except ValidationError as exc:
        raise TweetValidationError(describe_errors(exc, index_errors)) from None
    return [TweetIn(**m.__dict__) for m in models]


def describe_errors(exc: ValidationError, index_errors: bool = True) -> list[dict[str, Any]]:
    """pydantic's errors as ``{loc, msg, type}``; ``loc`` without the list index if asked."""
    described = []
    for err in exc.errors(include_url=False, include_input=False):
        loc = list(err["loc"]) if index_errors else list(err["loc"])[1:]
        msg = err["msg"].removeprefix("Value error, ")
        described.append({"loc": loc, "msg": msg, "type": err["type"]})
    return described
