"""Hypothesis strategies and response checks shared by the fuzz tests (``tests/test_fuzz_*.py``).

Every REST strategy builds requests whose fate is known in advance: :func:`rejected_requests`
only requests that must be refused (with the expected 4xx), :func:`valid_requests` only
requests that must be accepted. So a test never has to guess whether something may have been
published. Every description we send starts with :data:`RUN_MARK`, which finds our tweets
among anything else the brokers carried meanwhile.

Also a pytest plugin: ``pytest -p tests.support.fuzzing`` prints the requests sent, by face and
status (``make fuzz`` does). ``FUZZ_EXAMPLES`` scales every fuzz test's ``max_examples``.
"""

from __future__ import annotations

import asyncio
import json
import os
import string
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import aio_pika
import grpc
import httpx
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from devstack.config import app_settings, stack_config
from serve_app.brokers.kafka import ensure_kafka_topics
from serve_app.brokers.rabbitmq import declare_rabbit_topology
from serve_app.ingest.core import IngestLimits
from serve_app.model.codec import decode_message
from serve_app.model.schema import COUNTRY_CODES, DESCRIPTION_MAX_CHARS, ID_MAX_CHARS
from serve_app.pb.weather.v1 import weather_pb2
from tests.support.fakes import LIMITS, RULES

app_config = app_settings()

RUN_MARK = f"fuzz-{uuid.uuid4().hex[:8]}"
WAIT_S = 300  # a restart of Serve or of a broker takes 1-2 minutes: wait it out, then give up
HEALTH_URL = f"{stack_config.serve_http_url}/health"
FIELDS = ("description", "country", "weather", "id")
REQUIRED = ("description", "country", "weather")
COUNTRIES = tuple(sorted(COUNTRY_CODES))
# What a refusal's ``error`` may name: a field, the body, a limit, a header, the route.
NAMES = (*FIELDS, "tweets", "body", "limit", "JSON", "Content-Type", "charset", "batch")
NAMES += ("Idempotency-Key", "route", "not allowed", "latest")
JSON_TYPES = (
    "application/json",
    "application/json; charset=utf-8",
    "Application/JSON;charset=UTF-8",
    'application/json; charset="utf-8"',
    "application/vnd.weather+json",
)
# Characters that look like ASCII letters of a country code or a weather but are not ASCII.
CONFUSABLES = {
    "i": "ıіɪ",
    "I": "İІΙ",
    "o": "оοօ",
    "O": "ОΟ",
    "s": "ſѕ",
    "S": "Ѕ",
    "l": "ⅼӏ",
    "a": "аɑ",
    "A": "АΑ",
    "e": "е",
    "E": "ЕΕ",
    "u": "υս",
    "y": "у",
    "c": "с",
    "C": "С",
    "p": "р",
    "P": "Р",
    "K": "\u212aΚ",  # KELVIN SIGN (escaped: editors may normalise it to "K"), Greek Kappa
    "T": "ТΤ",
    "M": "МΜ",
    "B": "ВΒ",
    "H": "НΗ",
    "N": "Ν",
    "Z": "Ζ",
    "X": "Х",
}
BAD_UTF8 = (b"\xff", b"\x80", b"\xc0\xaf", b"\xed\xa0\x80", b"\xe2\x82", b"\xf8\x88\x80\x80\x80")
BAD_TYPES = (
    "text/plain",
    "text/json",
    "application/xml",
    "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=x",
    "application/jsonx",
    "application/json-seq",
    "application/ json",
    "json",
    "*/*",
    "application/*",
    "",
)
BAD_CHARSETS = ("latin-1", "iso-8859-1", "utf-16", "utf-32", "ascii", "utf8", "utf_8", "")


@dataclass(frozen=True)
class Target:
    """What the strategies must know of the app under test: its limits and weathers."""

    limits: IngestLimits
    weathers: tuple[str, ...]


@dataclass(frozen=True)
class FuzzRequest:
    """One HTTP request and the statuses it may get (``kind``: the strategy that made it)."""

    kind: str
    body: bytes
    headers: dict[str, str | bytes]
    expect: frozenset[int]
    method: str = "POST"
    path: str = "/input"
    chunked: bool = False


class Tally:
    """Requests sent, by face and status (printed by :func:`pytest_terminal_summary`)."""

    def __init__(self) -> None:
        self.counts: Counter[tuple[str, str]] = Counter()

    def add(self, face: str, status: int | str) -> None:
        self.counts[face, str(status)] += 1

    def lines(self) -> list[str]:
        faces = sorted({face for face, _ in self.counts})
        out = []
        for face in faces:
            statuses = {s: n for (f, s), n in sorted(self.counts.items()) if f == face}
            by_status = ", ".join(f"{s}: {n}" for s, n in statuses.items())
            out.append(f"{face}: {sum(statuses.values())} requests ({by_status})")
        live = sum(n for (face, _), n in self.counts.items() if face.endswith("live"))
        out.append(f"live total: {live} requests")
        return out


TALLY = Tally()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """With ``-p tests.support.fuzzing``: the requests the fuzz tests sent, by status."""
    if TALLY.counts:
        terminalreporter.section("fuzz requests")
        for line in TALLY.lines():
            terminalreporter.write_line(line)


def fuzz_settings(default_examples: int) -> settings:
    """``max_examples`` from ``FUZZ_EXAMPLES`` (``make fuzz``) or the small in-suite default;
    no deadline (nothing here is timed) and no example database (nothing left in the tree)."""
    return settings(
        max_examples=int(os.environ.get("FUZZ_EXAMPLES", default_examples)),
        deadline=None,
        database=None,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.large_base_example,
            HealthCheck.filter_too_much,
        ],
    )


OFFLINE = Target(LIMITS, RULES.weathers)  # the Starlette app and service over support/fakes.py
LIVE = Target(  # the running stack
    IngestLimits(
        max_body_bytes=app_config.max_body_bytes,
        max_batch_tweets=app_config.max_batch_tweets,
        max_json_depth=app_config.max_json_depth,
        retry_after_s=app_config.retry_after_s,
    ),
    app_config.weathers,
)


# --- checks ---------------------------------------------------------------------------------


def named_problem(text: str) -> bool:
    """Whether an error message names a field, the body, a limit, a header or the route."""
    return any(name in text for name in NAMES)


def check_rejection(request: FuzzRequest, status: int, body: bytes) -> None:
    """A refusal: the expected 4xx, a JSON body whose ``error`` names the problem."""
    context = f"{request.kind}: {request.method} {request.path} {request.body[:300]!r} -> {status}"
    assert status < 500, f"server error for {context}: {body[:500]!r}"
    assert status in request.expect, f"expected {sorted(request.expect)} for {context}: {body!r}"
    check_error_body(status, body, context)


def check_error_body(status: int, body: bytes, context: str) -> None:
    """Every 4xx is JSON ``{"error": <str naming the problem>, ...}``."""
    try:
        document = json.loads(body)
    except ValueError:
        raise AssertionError(f"{status} body is not JSON for {context}: {body[:500]!r}") from None
    assert isinstance(document, dict), f"{status} body is not an object for {context}"
    error = document.get("error")
    assert isinstance(error, str), f"no error string for {context}: {document}"
    assert named_problem(error), f"error names no field or limit for {context}: {error!r}"


def check_accepted(request: FuzzRequest, status: int, body: bytes) -> int:
    """A 202 with one id per tweet sent (the client's own ids kept); returns the tweets."""
    assert status == 202, f"{request.kind}: valid request got {status}: {body[:500]!r}"
    document = json.loads(body)
    sent = json.loads(request.body)
    items = sent if isinstance(sent, list) else [sent]
    ids = document["ids"] if isinstance(sent, list) else [document["id"]]
    assert document["accepted"] == len(items) == len(ids)
    key = request.headers.get("Idempotency-Key")
    for item, given in zip(items, ids, strict=True):
        wanted = item.get("id") or (key.decode() if isinstance(key, bytes) else key)
        assert wanted is None or given == wanted, (item, given)
    return len(items)


# --- tweets ---------------------------------------------------------------------------------


def ascii_cases(value: str) -> st.SearchStrategy[str]:
    """``value`` with the case of its ASCII letters flipped at random."""
    flips = st.lists(st.booleans(), min_size=len(value), max_size=len(value))
    return flips.map(
        lambda fs: "".join(c.swapcase() if f else c for c, f in zip(value, fs, strict=True))
    )


@st.composite
def lookalike(draw: st.DrawFn, values: Sequence[str]) -> str:
    """A value with one letter swapped for a non-ASCII look-alike (fullwidth, Cyrillic, …)."""
    value = draw(st.sampled_from(values).flatmap(ascii_cases))
    i = draw(st.integers(0, len(value) - 1))
    options = [chr(ord(value[i]) + 0xFEE0), *CONFUSABLES.get(value[i], "")]
    return value[:i] + draw(st.sampled_from(options)) + value[i + 1 :]


def descriptions() -> st.SearchStrategy[str]:
    """Any Unicode text (no lone surrogates), starting with the run mark."""
    return st.text(max_size=DESCRIPTION_MAX_CHARS - len(RUN_MARK) - 1).map(
        lambda text: f"{RUN_MARK} {text}"
    )


PRINTABLE = st.characters(min_codepoint=0x21, max_codepoint=0x7E)


def tweet_ids() -> st.SearchStrategy[str]:
    """Valid ids: 1-128 printable ASCII characters."""
    return st.text(PRINTABLE, min_size=1, max_size=ID_MAX_CHARS - len(RUN_MARK) - 1).map(
        lambda text: f"{RUN_MARK}-{text}"
    )


def own_id(tweet: dict | weather_pb2.Tweet) -> object:
    """A valid batch gives each id to one tweet (one id with two contents is a 422, the same
    tweet twice is accepted once); tweets without an id are always distinct."""
    given = tweet.get("id") if isinstance(tweet, dict) else tweet.id
    return given or id(tweet)


def good_tweets(target: Target, with_id: bool | None = None) -> st.SearchStrategy[dict]:
    """Valid tweet objects: any description, any case of a country code and a weather."""
    required = {
        "description": descriptions(),
        "country": st.sampled_from(COUNTRIES).flatmap(ascii_cases),
        "weather": st.sampled_from(target.weathers).flatmap(ascii_cases),
    }
    if with_id is None:
        return st.fixed_dictionaries(required, optional={"id": tweet_ids()})
    return st.fixed_dictionaries({**required, "id": tweet_ids()} if with_id else required)


NON_STRINGS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.lists(st.integers(), max_size=3)
    | st.dictionaries(st.text(max_size=5), st.integers(), max_size=2)
)


def _not_a_code(value: str) -> bool:
    return not (len(value) == 2 and value.isascii() and value.upper() in COUNTRY_CODES)


def bad_strings(target: Target) -> dict[str, st.SearchStrategy[str]]:
    """Per field, strings the schema must refuse (also usable in protobuf messages)."""
    weather_keys = {w.lower() for w in target.weathers}
    outside = st.characters(codec="utf-8").filter(lambda c: not "\x21" <= c <= "\x7e")
    return {
        "description": st.just("")
        | st.text(min_size=DESCRIPTION_MAX_CHARS + 1, max_size=DESCRIPTION_MAX_CHARS + 40),
        "country": lookalike(COUNTRIES)
        | st.text(string.ascii_letters, max_size=2).filter(_not_a_code)
        | st.text(string.ascii_letters, min_size=3, max_size=6)
        | st.text(max_size=4).filter(_not_a_code),
        "weather": lookalike(target.weathers)
        | st.text(max_size=70).filter(lambda s: not (s.isascii() and s.lower() in weather_keys)),
        "id": st.text(PRINTABLE, min_size=ID_MAX_CHARS + 1, max_size=ID_MAX_CHARS + 50)
        | st.tuples(tweet_ids(), outside, st.text(PRINTABLE, max_size=5)).map("".join),
    }


def bad_values(target: Target) -> dict[str, st.SearchStrategy[Any]]:
    """Per field, any JSON value the schema must refuse (``null`` is a valid ``id``)."""
    strings = bad_strings(target)
    surrogate = st.integers(0xD800, 0xDFFF).map(lambda c: f"{RUN_MARK} {chr(c)}")
    values = {name: s | NON_STRINGS.filter(lambda v: v is not None) for name, s in strings.items()}
    values["description"] |= surrogate
    values["id"] = strings["id"] | st.just("") | NON_STRINGS.filter(lambda v: v is not None)
    return values


@st.composite
def bad_tweets(draw: st.DrawFn, target: Target) -> Any:
    """A tweet-like object the schema must refuse: one bad field, an unknown or missing field."""
    tweet = draw(good_tweets(target))
    how = draw(st.sampled_from(("field", "unknown", "missing")))
    if how == "field":
        name = draw(st.sampled_from(FIELDS))
        tweet[name] = draw(bad_values(target)[name])
    elif how == "unknown":
        name = draw(st.text(max_size=12).filter(lambda k: k not in FIELDS))
        tweet[name] = draw(NON_STRINGS | st.text(max_size=10))
    else:
        del tweet[draw(st.sampled_from(REQUIRED))]
    return tweet


@st.composite
def batch_with_one_bad(draw: st.DrawFn, target: Target) -> list[Any]:
    """Good tweets with one refused item among them (a bad tweet or a non-object)."""
    good = draw(st.lists(good_tweets(target), max_size=min(5, target.limits.max_batch_tweets - 1)))
    bad = draw(bad_tweets(target) | NON_STRINGS | st.text(max_size=10))
    good.insert(draw(st.integers(0, len(good))), bad)
    return good


# --- request bodies -------------------------------------------------------------------------


def encode(document: Any, ensure_ascii: bool = False) -> bytes:
    """JSON bytes (lone surrogates, if any, become invalid UTF-8 unless escaped)."""
    return json.dumps(document, ensure_ascii=ensure_ascii).encode("utf-8", "surrogatepass")


def encode_pairs(pairs: Sequence[tuple[str, bytes]]) -> bytes:
    """An object from keys and raw JSON values (duplicates and non-JSON constants allowed)."""
    return b"{" + b",".join(json.dumps(k).encode() + b":" + v for k, v in pairs) + b"}"


def _replaced(
    pairs: Sequence[tuple[str, bytes]], name: str, value: bytes
) -> list[tuple[str, bytes]]:
    """``pairs`` with the field ``name`` (added if absent) holding the raw JSON ``value``."""
    return [*[p for p in pairs if p[0] != name], (name, value)]


def _request(kind: str, body: bytes, expect: Sequence[int], **headers: str | bytes) -> FuzzRequest:
    return FuzzRequest(
        kind, body, {"content-type": "application/json", **headers}, frozenset(expect)
    )


@st.composite
def schema_refusals(draw: st.DrawFn, target: Target) -> FuzzRequest:
    """Well-formed JSON that the schema or the batch rules refuse: 422."""
    limit = target.limits.max_batch_tweets
    ascii_ = draw(st.booleans())
    kind = draw(
        st.sampled_from(("tweet", "batch", "empty", "oversized", "scalar", "key-batch", "key-id"))
    )
    if kind == "tweet":
        return _request(kind, encode(draw(bad_tweets(target)), ascii_), [400, 422])
    if kind == "batch":
        return _request(kind, encode(draw(batch_with_one_bad(target)), ascii_), [400, 422])
    if kind == "empty":
        return _request(kind, b"[]", [422])
    if kind == "oversized":
        extra = draw(st.integers(1, 3))
        tweets = [{"description": RUN_MARK, "country": "GT", "weather": target.weathers[0]}]
        return _request(kind, encode(tweets * (limit + extra)), [413, 422])
    if kind == "scalar":
        scalar = draw(NON_STRINGS.filter(lambda v: not isinstance(v, list | dict)) | st.text())
        return _request(kind, encode(scalar, ascii_), [422])
    key = draw(tweet_ids())
    if kind == "key-batch":
        tweets = draw(st.lists(good_tweets(target), min_size=1, max_size=3))
        return _request(kind, encode(tweets), [422], **{"Idempotency-Key": key})
    tweet = draw(good_tweets(target, with_id=True).filter(lambda t: t["id"] != key))
    return _request(kind, encode(tweet), [422], **{"Idempotency-Key": key})


@st.composite
def odd_idempotency_keys(draw: st.DrawFn, target: Target) -> FuzzRequest:
    """A good tweet with an ``Idempotency-Key`` that is not a valid id: 422."""
    tweet = draw(good_tweets(target, with_id=False))
    ends = st.text(PRINTABLE, min_size=1, max_size=20)
    odd = st.sampled_from([b" ", b"\t", *(bytes([b]) for b in range(0x80, 0x100))])
    key = draw(
        st.just(b"")
        | st.text(PRINTABLE, min_size=ID_MAX_CHARS + 1, max_size=300).map(str.encode)
        | st.tuples(ends.map(str.encode), odd, ends.map(str.encode)).map(b"".join)
    )
    return _request("idempotency-key", encode(tweet), [422], **{"Idempotency-Key": key})


@st.composite
def malformed_json(draw: st.DrawFn, target: Target) -> FuzzRequest:
    """Bodies that are not RFC 8259 JSON of at most ``max_json_depth`` levels: 400."""
    depth = target.limits.max_json_depth
    tweet = draw(good_tweets(target))
    raw = encode(tweet)
    pairs = [(k, encode(v)) for k, v in tweet.items()]
    kind = draw(
        st.sampled_from(
            ("bom", "utf8", "deep-field", "deep-top", "duplicate", "constant", "cut", "trailing")
        )
    )
    if kind == "bom":
        return _request(kind, b"\xef\xbb\xbf" + raw, [400])
    if kind == "utf8":
        at = raw.index(RUN_MARK.encode()) + len(RUN_MARK)
        return _request(kind, raw[:at] + draw(st.sampled_from(BAD_UTF8)) + raw[at:], [400])
    if kind in ("deep-field", "deep-top"):
        most = min(60_000, (target.limits.max_body_bytes - len(raw)) // 8)  # within the body limit
        levels = draw(st.integers(depth, depth + 4) | st.integers(1_000, most))
        opener, closer = draw(st.sampled_from(((b"[", b"]"), (b'{"a":', b"}"))))
        if kind == "deep-top":
            return _request(kind, opener * levels + raw + closer * levels, [400])
        nested = opener * levels + b"1" + closer * levels
        name = draw(st.sampled_from(FIELDS))
        return _request(kind, encode_pairs(_replaced(pairs, name, nested)), [400])
    if kind == "duplicate":
        name, value = draw(st.sampled_from(pairs))
        again = draw(st.just(value) | st.text(max_size=5).map(encode))
        pairs.insert(draw(st.integers(0, len(pairs))), (name, again))
        return _request(kind, encode_pairs(pairs), [400])
    if kind == "constant":
        name = draw(st.sampled_from(FIELDS))
        constant = draw(st.sampled_from((b"NaN", b"Infinity", b"-Infinity", b"[NaN]")))
        return _request(kind, encode_pairs(_replaced(pairs, name, constant)), [400])
    if kind == "cut":
        return _request(kind, raw[: draw(st.integers(0, len(raw) - 1))], [400])
    garbage = draw(st.sampled_from((b"x", b"}", b"]", b",", b" {}", b"\x00", b"\xff")))
    return _request(kind, raw + garbage, [400])


@st.composite
def huge_numbers(draw: st.DrawFn, target: Target) -> FuzzRequest:
    """A field holding a huge number (too many digits for Python is a 400, else a 422)."""
    tweet = draw(good_tweets(target))
    number = draw(
        st.integers(20, 6000).map(lambda n: b"9" * n)
        | st.sampled_from(
            (b"1e999999", b"-1e999999", b"1e-999999", b"123456789012345678901234567890.5")
        )
    )
    name = draw(st.sampled_from(FIELDS))
    pairs = [*[(k, encode(v)) for k, v in tweet.items() if k != name], (name, number)]
    return _request("huge-number", encode_pairs(pairs), [400, 422])


@st.composite
def wrong_content_types(draw: st.DrawFn, target: Target) -> FuzzRequest:
    """A good tweet under a type other than JSON, or a charset other than UTF-8: 415."""
    body = encode(draw(good_tweets(target)))
    random_type = st.from_regex(r"\A[a-z]{1,12}/[a-z0-9.+-]{1,20}\Z").filter(
        lambda t: (
            not (t == "application/json" or (t.startswith("application/") and t.endswith("+json")))
        )  # fmt: skip
    )
    charset = draw(
        st.sampled_from(BAD_CHARSETS)
        | st.from_regex(r"\A[A-Za-z0-9_-]{1,12}\Z").filter(lambda c: c.lower() != "utf-8")
    )
    quote = draw(st.sampled_from(("", '"')))
    content_type = draw(
        st.sampled_from(BAD_TYPES)
        | random_type
        | st.just(f"application/json; charset={quote}{charset}{quote}")
    )
    if draw(st.booleans()) and content_type == "":
        return FuzzRequest("no-content-type", body, {}, frozenset([415]))
    return _request("content-type", body, [415], **{"content-type": content_type})


@st.composite
def oversized_bodies(draw: st.DrawFn, target: Target) -> FuzzRequest:
    """A good tweet padded with JSON whitespace past ``max_body_bytes``: 413 (also chunked)."""
    raw = encode(draw(good_tweets(target)))
    size = target.limits.max_body_bytes + draw(st.integers(1, 4096))
    body = b" " * (size - len(raw)) + raw
    chunked = draw(st.booleans())
    return replace(_request("oversized", body, [413]), chunked=chunked)


@st.composite
def wrong_routes(draw: st.DrawFn, target: Target) -> FuzzRequest:
    """Another method on ``/input`` (405) or an unknown path (404)."""
    body = encode(draw(good_tweets(target)))
    headers: dict[str, str | bytes] = {"content-type": "application/json"}
    if draw(st.booleans()):
        method = draw(st.sampled_from(("GET", "PUT", "PATCH", "DELETE", "OPTIONS")))
        return FuzzRequest("method", body, headers, frozenset([405]), method=method)
    tail = draw(st.text(string.ascii_letters + string.digits + "-_~", min_size=1, max_size=20))
    path = draw(st.sampled_from((f"/{RUN_MARK}/{tail}", f"/input/{tail}", "/health", "/stats")))
    return FuzzRequest("route", body, headers, frozenset([404, 405]), path=path)


def random_bytes(target: Target) -> st.SearchStrategy[FuzzRequest]:
    """Arbitrary bytes as a JSON body: never a tweet, so 400 or 422."""
    return st.binary(max_size=300).map(lambda body: _request("bytes", body, [400, 422]))


REFUSALS: tuple[Callable[[Target], st.SearchStrategy[FuzzRequest]], ...] = (
    schema_refusals,
    odd_idempotency_keys,
    malformed_json,
    huge_numbers,
    wrong_content_types,
    oversized_bodies,
    wrong_routes,
    random_bytes,
)


def rejected_requests(target: Target) -> st.SearchStrategy[FuzzRequest]:
    """Requests that must all be refused with a named 4xx, publishing nothing."""
    return st.one_of(*(make(target) for make in REFUSALS))


@st.composite
def valid_requests(draw: st.DrawFn, target: Target) -> FuzzRequest:
    """Requests that must be accepted: one tweet (maybe with a key) or a batch of 1-5."""
    content_type = draw(st.sampled_from(JSON_TYPES))
    ascii_ = draw(st.booleans())
    if draw(st.booleans()):
        tweets = draw(st.lists(good_tweets(target), min_size=1, max_size=5, unique_by=own_id))
        return _request(
            "valid-batch", encode(tweets, ascii_), [202], **{"content-type": content_type}
        )
    tweet = draw(good_tweets(target))
    headers: dict[str, str | bytes] = {"content-type": content_type}
    if draw(st.booleans()):
        headers["Idempotency-Key"] = tweet.get("id") or draw(tweet_ids())
    return FuzzRequest("valid-tweet", encode(tweet, ascii_), headers, frozenset([202]))


# --- gRPC -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class GrpcCall:
    """One gRPC call: ``Publish`` of a ``Tweet`` or ``PublishBatch`` of a ``TweetBatch``."""

    kind: str
    method: str
    message: Any


@st.composite
def bad_proto_tweets(draw: st.DrawFn, target: Target) -> weather_pb2.Tweet:
    """A protobuf tweet with one field the schema refuses (an empty id means "assign one")."""
    tweet = draw(good_tweets(target))
    name = draw(st.sampled_from(FIELDS))
    tweet[name] = draw(bad_strings(target)[name])
    return weather_pb2.Tweet(**tweet)


def good_proto_tweets(target: Target) -> st.SearchStrategy[weather_pb2.Tweet]:
    return good_tweets(target).map(lambda tweet: weather_pb2.Tweet(**tweet))


@st.composite
def rejected_calls(draw: st.DrawFn, target: Target) -> GrpcCall:
    """Calls that must all end in INVALID_ARGUMENT, publishing nothing."""
    limit = target.limits.max_batch_tweets
    kind = draw(st.sampled_from(("tweet", "batch", "empty", "oversized")))
    if kind == "tweet":
        return GrpcCall(kind, "Publish", draw(bad_proto_tweets(target)))
    if kind == "empty":
        return GrpcCall(kind, "PublishBatch", weather_pb2.TweetBatch())
    if kind == "oversized":
        one = weather_pb2.Tweet(description=RUN_MARK, country="GT", weather=target.weathers[0])
        tweets = [one] * (limit + draw(st.integers(1, 3)))
        return GrpcCall(kind, "PublishBatch", weather_pb2.TweetBatch(tweets=tweets))
    tweets = draw(st.lists(good_proto_tweets(target), max_size=min(5, limit - 1)))
    tweets.insert(draw(st.integers(0, len(tweets))), draw(bad_proto_tweets(target)))
    return GrpcCall(kind, "PublishBatch", weather_pb2.TweetBatch(tweets=tweets))


def valid_calls(target: Target) -> st.SearchStrategy[GrpcCall]:
    """Calls that must be accepted: one tweet, or a batch of 1-5."""
    batches = st.lists(good_proto_tweets(target), min_size=1, max_size=5, unique_by=own_id)
    return good_proto_tweets(target).map(lambda t: GrpcCall("valid-tweet", "Publish", t)) | (
        batches.map(
            lambda ts: GrpcCall("valid-batch", "PublishBatch", weather_pb2.TweetBatch(tweets=ts))
        )
    )


def check_invalid_argument(call: GrpcCall, code: grpc.StatusCode, details: str) -> None:
    """A refused call: INVALID_ARGUMENT (never INTERNAL/UNKNOWN), details naming the problem."""
    context = f"{call.kind}: {call.method}({str(call.message)[:300]!r})"
    assert code == grpc.StatusCode.INVALID_ARGUMENT, f"{code} for {context}: {details[:500]}"
    assert named_problem(details), f"details name no field or limit for {context}: {details!r}"


def check_published_ids(call: GrpcCall, ids: Sequence[str]) -> None:
    """An accepted call: one id per tweet, the client's own ids kept."""
    tweets = [call.message] if call.method == "Publish" else list(call.message.tweets)
    assert len(ids) == len(tweets) and all(ids), (call.kind, ids)
    for tweet, given in zip(tweets, ids, strict=True):
        assert not tweet.id or given == tweet.id, (tweet.id, given)


# --- the brokers ----------------------------------------------------------------------------


class BrokerLevels:
    """Kafka end offsets of the tweet topic, and a private tap queue on the RabbitMQ exchange."""

    async def start(self) -> None:
        await ensure_kafka_topics(app_config)
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=app_config.kafka_bootstrap_servers, enable_auto_commit=False
        )
        await self.consumer.start()
        admin = AIOKafkaAdminClient(bootstrap_servers=app_config.kafka_bootstrap_servers)
        await admin.start()
        try:
            [topic] = await admin.describe_topics([app_config.kafka_topic])
        finally:
            await admin.close()
        partitions = sorted(p["partition"] for p in topic["partitions"])
        self.partitions = [TopicPartition(app_config.kafka_topic, p) for p in partitions]
        assert self.partitions, f"topic {app_config.kafka_topic} has no partitions"
        self.consumer.assign(self.partitions)
        self.connection = await aio_pika.connect_robust(app_config.rabbitmq_url)
        channel = await self.connection.channel()
        exchange, _ = await declare_rabbit_topology(channel, app_config)
        self.queue = await channel.declare_queue(exclusive=True, auto_delete=True)
        await self.queue.bind(exchange)

    async def offsets(self) -> dict[TopicPartition, int]:
        return await self.consumer.end_offsets(self.partitions)

    async def depth(self) -> int:
        declared = await self.queue.declare()
        return declared.message_count or 0

    async def mark(self) -> None:
        """Remember where both brokers are now."""
        self.start_offsets, self.start_depth = await self.offsets(), await self.depth()

    async def ours_since_mark(self) -> list[str]:
        """What of this run (descriptions or poison reasons carrying :data:`RUN_MARK`) reached
        either broker since :meth:`mark`; nothing to read when neither moved. Other clients of
        the shared stack may have published meanwhile: only our mark counts."""
        ends = await self.offsets()
        if ends == self.start_offsets and await self.depth() == self.start_depth:
            return []
        bodies: list[bytes] = []
        for tp in self.partitions:
            if ends[tp] > self.start_offsets[tp]:
                self.consumer.seek(tp, self.start_offsets[tp])
        wanted = sum(ends[tp] - self.start_offsets[tp] for tp in self.partitions)
        deadline = time.monotonic() + 60
        while len(bodies) < wanted and time.monotonic() < deadline:
            batch = await self.consumer.getmany(timeout_ms=500)
            bodies += [m.value for ms in batch.values() for m in ms]
        while (message := await self.queue.get(no_ack=True, fail=False)) is not None:
            bodies.append(message.body)
        decoded = [decode_message(body) for body in bodies]
        found = [t.description for d in decoded for t in d.tweets] + [
            p.body.decode("utf-8", "replace") for d in decoded for p in d.poison
        ]
        return [text for text in found if RUN_MARK in text]

    async def close(self) -> None:
        if hasattr(self, "consumer"):
            await self.consumer.stop()
        if hasattr(self, "connection"):
            await self.connection.close()


def _started_levels(runner: asyncio.Runner) -> BrokerLevels:
    """:class:`BrokerLevels` started, waiting out a broker restart (bounded)."""
    give_up = time.monotonic() + WAIT_S
    while True:
        levels = BrokerLevels()
        try:
            runner.run(levels.start())
            return levels
        except (KafkaError, aio_pika.exceptions.AMQPError, OSError):
            runner.run(levels.close())
            if time.monotonic() > give_up:
                raise
            time.sleep(5)


@contextmanager
def watched_brokers() -> Iterator[Callable[[], list[str]]]:
    """Marks both brokers; yields a function returning what of this run reached them since
    (see :meth:`BrokerLevels.ours_since_mark`). For sync tests: runs its own event loop."""
    with asyncio.Runner() as runner:
        levels = _started_levels(runner)
        try:
            runner.run(levels.mark())
            yield lambda: runner.run(levels.ours_since_mark())
        finally:
            runner.run(levels.close())


def broker_outage() -> str | None:
    """What ``GET /health`` says is down right now, else None. A 503 / UNAVAILABLE from the
    app is allowed only while this shows a broker down (the shared stack may be restarted)."""
    try:
        response = httpx.get(HEALTH_URL, timeout=30)
    except httpx.TransportError as exc:
        return f"/health unreachable ({exc!r})"
    if response.status_code == 200:
        return None
    report = response.json()
    down = {k: v for k, v in report.items() if isinstance(v, dict) and v.get("ok") is False}
    return f"/health {response.status_code}: {down}" if down else None


def wait_until_healthy() -> None:
    """Poll ``GET /health`` until both brokers answer again (bounded by :data:`WAIT_S`)."""
    give_up = time.monotonic() + WAIT_S
    while (outage := broker_outage()) is not None:
        assert time.monotonic() < give_up, f"brokers still down after {WAIT_S} s: {outage}"
        time.sleep(5)
