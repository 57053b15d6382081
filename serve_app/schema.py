"""The tweet schema: one pydantic model validates every path (REST, gRPC, consumers).

The gRPC messages in proto/weather/v1/weather.proto carry the same fields; this module
converts between the two so the rules below are the only rules.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated, Any

import pycountry
from pydantic import (
    BaseModel,
    ConfigDict,
    StringConstraints,
    TypeAdapter,
    ValidationError,
    field_validator,
)

from serve_app.settings import settings

COUNTRY_CODES: frozenset[str] = frozenset(c.alpha_2 for c in pycountry.countries)
_WEATHER_BY_FOLDED: dict[str, str] = {w.casefold(): w for w in settings.weathers}

TweetId = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=r"^[\x21-\x7e]+$")]


class TweetIn(BaseModel):
    """A tweet as a client sends it. Unknown fields are rejected so typos do not vanish."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False)

    id: TweetId | None = None
    description: Annotated[str, StringConstraints(min_length=1, max_length=280)]
    country: str
    weather: str

    @field_validator("country")
    @classmethod
    def _known_country(cls, value: str) -> str:
        code = value.upper()
        if code not in COUNTRY_CODES:
            raise ValueError(f"'{value}' is not an ISO 3166-1 alpha-2 country code")
        return code

    @field_validator("weather")
    @classmethod
    def _configured_weather(cls, value: str) -> str:
        canonical = _WEATHER_BY_FOLDED.get(value.casefold())
        if canonical is None:
            raise ValueError(f"'{value}' is not one of {', '.join(settings.weathers)}")
        return canonical


class Tweet(TweetIn):
    """A tweet the pipeline has taken in: it always has an id and an acceptance time."""

    id: TweetId
    accepted_at: datetime

    def to_json(self) -> bytes:
        """The broker payload; UTF-8 JSON with the description byte-exact."""
        return self.model_dump_json().encode()


_TWEET_LIST = TypeAdapter(list[TweetIn])


class TweetValidationError(ValueError):
    """Bad input, with one entry per problem naming where it is (index and field)."""

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        self.errors = errors
        super().__init__("; ".join(f"{e['loc']}: {e['msg']}" for e in errors))


def validate_tweets(items: list[Any], *, index_errors: bool = True) -> list[TweetIn]:
    """Validate every item before any is used; one bad item rejects them all."""
    try:
        return _TWEET_LIST.validate_python(items)
    except ValidationError as exc:
        raise TweetValidationError(_describe(exc, index_errors)) from None


def _describe(exc: ValidationError, index_errors: bool) -> list[dict[str, Any]]:
    described = []
    for err in exc.errors(include_url=False, include_input=False):
        loc = list(err["loc"]) if index_errors else list(err["loc"])[1:]
        msg = err["msg"].removeprefix("Value error, ")
        described.append({"loc": loc, "msg": msg, "type": err["type"]})
    return described


def count_tweets(batches: list[list[Tweet]]) -> int:
    """Batch size for ``serve.batch``: tweets, not calls (one call may carry 1,000)."""
    return sum(len(b) for b in batches)


def new_tweet_id() -> str:
    return str(uuid.uuid4())


def accept(tweets: list[TweetIn], now: datetime | None = None) -> list[Tweet]:
    """Give every tweet an id (the client's, or a fresh UUID) and the acceptance time.

    The tweets are already validated, so they are built without validating again.
    """
    accepted_at = now or datetime.now(UTC)
    return [
        Tweet.model_construct(
            id=t.id or new_tweet_id(),
            description=t.description,
            country=t.country,
            weather=t.weather,
            accepted_at=accepted_at,
        )
        for t in tweets
    ]


def parse_broker_payload(body: bytes) -> Tweet:
    """Decode a message read back from a broker; raises ValueError on a poison message."""
    try:
        return Tweet.model_validate_json(body)
    except ValidationError as exc:
        raise TweetValidationError(_describe(exc, index_errors=False)) from None
