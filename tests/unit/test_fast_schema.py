"""The msgspec fast paths accept nothing the careful (pydantic) paths refuse, and decide
what they accept exactly as the careful paths do (property tests, no servers, no Ray).

A request the fast path does not take (None) goes to the careful path, so refusals keep
their texts; these properties are what makes skipping the careful path for the rest safe:
duplicate keys, escapes, colons inside strings, look-alike values, nesting, ids."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from serve_app.ingest.core import accept
from serve_app.ingest.rest import HTTPError, fast_tweets, parse_tweets, parse_tweets_carefully
from serve_app.model import schema
from serve_app.model.codec import decode_carefully, decode_message, encode_chunks
from serve_app.model.schema import (
    TweetIn,
    TweetRules,
    TweetValidationError,
    decode_tweets,
    key_count,
)
from tests.support.fakes import RULES, make_ingest

FIELDS = ("id", "description", "country", "weather")
PROPERTY = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# values near every rule's edges: look-alikes, cases, lengths, escapes, colons, surrogates
EDGE_TEXTS = [
    *("Está lloviendo", "hora: 5 pm", 'dice "id": 1', "a\\b", "a\ud800b", "\ud83d\ude00"),
    *("\n", "", "ñ" * 280, "ñ" * 281, "a\x00"),
]
EDGE_IDS = ["t-1", "t:2", "has space", "x" * 128, "x" * 129, "", "tab\t", "ok\n", "\x7f", "é"]
EDGE_COUNTRIES = ["GT", "gt", "gT", "SV", "ZZ", "ıo", "Ｇt", "GTM", "G", "", "GT\n"]
COUNTRIES = st.sampled_from(EDGE_COUNTRIES)
EDGE_WEATHERS = [
    *("Lluvioso", "lluvioso", "NUBLOSO", "nubloſo", " Nubloso", "Nevado", "", "x" * 65),
    *("x" * 64, "Soleado\n"),
]
WEATHERS = st.sampled_from(EDGE_WEATHERS)
TEXTS = st.one_of(
    st.text(max_size=12),
    st.sampled_from(EDGE_TEXTS),
    st.integers(min_value=0, max_value=300).map(lambda n: "ñ" * n),
)
IDS = st.one_of(
    st.none(),
    st.sampled_from(EDGE_IDS),
    st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7F), max_size=6),
)
OTHER_VALUES = st.one_of(
    st.integers(), st.booleans(), st.lists(st.text(max_size=3), max_size=2), st.just({})
)
VALUES = {
    "id": st.one_of(IDS, OTHER_VALUES),
    "description": st.one_of(TEXTS, OTHER_VALUES),
    "country": st.one_of(COUNTRIES, OTHER_VALUES),
    "weather": st.one_of(WEATHERS, OTHER_VALUES),
}


@st.composite
def pairs(draw: st.DrawFn) -> list[tuple[str, Any]]:
    """A tweet object's keys and values, in order: valid, or with one thing wrong or odd (a
    value near a rule's edge, a key missing, twice or unknown), its keys at times escaped."""
    items = [(f, _good(f)) for f in FIELDS if f != "id" or draw(st.booleans())]
    how = draw(st.sampled_from(("valid", "value", "value", "missing", "twice", "unknown")))
    name = draw(st.sampled_from([f for f, _ in items]))
    if how == "value":
        items = [(f, draw(VALUES[f]) if f == name else v) for f, v in items]
    elif how == "missing":
        items = [(f, v) for f, v in items if f != name]
    elif how == "twice":
        items.append((name, draw(st.sampled_from((_good(name), draw(VALUES[name]))))))
    elif how == "unknown":
        items.append((draw(st.sampled_from(["wether", "ID", "extra", ""])), "x"))
    return draw(st.permutations(items))


def _good(field: str) -> Any:
    return {"id": "t-1", "description": "Está lloviendo", "country": "gt", "weather": "soleado"}[
        field
    ]


def _value(value: Any, ascii_only: bool) -> str:
    try:
        return json.dumps(value, ensure_ascii=ascii_only)
    except UnicodeEncodeError:  # pragma: no cover - json escapes surrogates
        return json.dumps(value)


def _key(key: str, escaped: bool) -> str:
    return '"' + "".join(f"\\u{ord(c):04x}" for c in key) + '"' if escaped else json.dumps(key)


@st.composite
def object_text(draw: st.DrawFn) -> str:
    ascii_only, spacing = draw(st.booleans()), draw(st.sampled_from(["", " ", "\n  "]))
    members = [
        f"{_key(k, draw(st.integers(0, 9)) == 0)}{spacing}:{spacing}{_value(v, ascii_only)}"
        for k, v in draw(pairs())
    ]
    return "{" + f",{spacing}".join(members) + "}"


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    """One tweet object or an array of them (sometimes an empty or too long one)."""
    if draw(st.booleans()):
        text = draw(object_text())
    else:
        text = "[" + ",".join(draw(st.lists(object_text(), max_size=4))) + "]"
    return text.encode("utf-8", "surrogatepass")


def careful(body: bytes, key: str | None) -> tuple[list[TweetIn], bool] | str:
    """What the careful path alone answers: JSON by the standard library, rules by pydantic."""
    with mock.patch.object(schema, "fast_validate", lambda items, rules: None):
        try:
            return parse_tweets_carefully(body, key, make_ingest()[0])
        except HTTPError as exc:
            return f"{exc.status} {exc.message}"


@PROPERTY
@given(body=bodies(), key=st.sampled_from([None, None, "t-1", "k-2", "bad key"]))
def test_the_fast_path_takes_only_what_the_careful_one_accepts_and_the_same_way(
    body: bytes, key: str | None
) -> None:
    ingest = make_ingest()[0]
    fast = fast_tweets(body, key, ingest)
    slow = careful(body, key)
    if fast is not None:
        assert fast == slow, body


ONE_FIELD_OFF = st.sampled_from(FIELDS).flatmap(lambda f: VALUES[f].map(lambda v: (f, v)))


@PROPERTY
@given(change=ONE_FIELD_OFF, batch=st.booleans(), ascii_only=st.booleans())
def test_every_rule_holds_on_the_fast_path(
    change: tuple[str, Any], batch: bool, ascii_only: bool
) -> None:
    """One field near a rule's edge in an otherwise valid tweet: both paths agree."""
    tweet = {f: _good(f) for f in FIELDS} | dict([change])
    text = json.dumps([tweet] if batch else tweet, ensure_ascii=ascii_only)
    body = text.encode("utf-8", "surrogatepass")
    fast = fast_tweets(body, None, make_ingest()[0])
    if fast is not None:
        assert fast == careful(body, None), body


@PROPERTY
@given(body=bodies())
def test_a_key_twice_never_takes_the_fast_path(body: bytes) -> None:
    counted: list[int] = []

    def count(members: list[tuple[str, Any]]) -> dict[str, Any]:
        counted.append(len(members) - len({k for k, _ in members}))
        return dict(members)

    json.loads(body.decode("utf-8", "surrogatepass"), object_pairs_hook=count)
    if any(counted):
        assert decode_tweets(body, RULES) is None
        assert str(careful(body, None)).startswith("400 malformed JSON")  # duplicate key or else


JSON_DOCUMENTS = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@PROPERTY
@given(document=JSON_DOCUMENTS, ascii_only=st.booleans())
def test_key_count_counts_the_keys_of_any_document(document: Any, ascii_only: bool) -> None:
    keys = [0]

    def count(members: list[tuple[str, Any]]) -> dict[str, Any]:
        keys[0] += len(members)
        return dict(members)

    body = json.dumps(document, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")
    json.loads(body, object_pairs_hook=count)
    assert key_count(body) == keys[0]


@PROPERTY
@given(change=ONE_FIELD_OFF, long_weather=st.booleans())
def test_validate_tweets_fast_and_careful_agree(
    change: tuple[str, Any], long_weather: bool
) -> None:
    """The gRPC face's path: items built from protobuf fields (Python strings, which may
    hold what JSON cannot, like a lone surrogate), under rules that may configure a value
    longer than a weather may be."""
    rules = TweetRules((*RULES.weathers, "x" * 65)) if long_weather else RULES
    items = [{f: _good(f) for f in FIELDS} | dict([change])]
    fast = schema.fast_validate(items, rules)
    try:
        slow: Any = schema.validate_tweets_carefully(items, rules)
    except TweetValidationError as exc:
        slow = exc.errors
    if fast is not None:
        assert fast == slow


EDGES = [
    *(("id", v) for v in EDGE_IDS),
    *(("description", v) for v in EDGE_TEXTS),
    *(("country", v) for v in EDGE_COUNTRIES),
    *(("weather", v) for v in EDGE_WEATHERS),
]


@pytest.mark.parametrize("change", EDGES)
@pytest.mark.parametrize("long_weather", [False, True])
def test_each_edge_value_is_decided_alike_on_every_path(
    change: tuple[str, Any], long_weather: bool
) -> None:
    """Every edge value above, deterministically, on the REST path and the gRPC one."""
    rules = TweetRules((*RULES.weathers, "x" * 65)) if long_weather else RULES
    item = {f: _good(f) for f in FIELDS} | dict([change])
    fast_items = schema.fast_validate([item], rules)
    try:
        slow_items: Any = schema.validate_tweets_carefully([item], rules)
    except TweetValidationError as exc:
        slow_items = exc.errors
    assert fast_items is None or fast_items == slow_items
    body = json.dumps(item, ensure_ascii=False).encode("utf-8", "surrogatepass")
    if not long_weather:
        fast = fast_tweets(body, None, make_ingest()[0])
        assert fast is None or fast == careful(body, None)


@pytest.mark.parametrize(
    ("body", "taken"),
    [
        (b'{"description": "hora: 5", "country": "gt", "weather": "soleado"}', True),
        (b'{"description": "a", "country": "GT", "weather": "Soleado", "id": null}', False),
        (b'{"description": "a", "country": "GT", "country": "GT", "weather": "Soleado"}', False),
        (
            b'{"description": "a", "country": "GT", "\\u0063ountry": "SV", "weather": "Soleado"}',
            False,
        ),
        (b'{"description": "a\\ud800", "country": "GT", "weather": "Soleado"}', False),
        (b'{"description": "a", "country": "GT", "weather": "Soleado"}\n', True),
        (b'[{"description": "a", "country": "GT", "weather": "Soleado"}]', True),
        (b"[]", False),
    ],
)
def test_examples_of_what_the_fast_path_takes(body: bytes, taken: bool) -> None:
    ingest = make_ingest()[0]
    assert (fast_tweets(body, None, ingest) is not None) is taken
    if taken:
        assert parse_tweets(body, None, ingest) == parse_tweets_carefully(body, None, ingest)


@PROPERTY
@given(body=bodies())
def test_the_consumers_fast_decode_agrees_with_the_careful_one(body: bytes) -> None:
    """A chunk made of these objects (accepted tweets need an id and a time)."""
    text = body.decode("utf-8", "surrogatepass")
    items = text if text.startswith("[") else f"[{text}]"
    stamped = items.replace("}", ', "accepted_at": "2026-12-07T10:00:00Z"}')
    chunk = f'{{"v": 2, "tweets": {stamped}}}'.encode("utf-8", "surrogatepass")
    fast, slow = decode_message(chunk), decode_carefully(chunk)
    assert fast.tweets == slow.tweets
    assert [(p.body, p.reason, p.id) for p in fast.poison] == [
        (p.body, p.reason, p.id) for p in slow.poison
    ]


def test_encoding_is_what_pydantic_encoded() -> None:
    body = (
        b'{"description": "Est\\u00e1 \\u2028", "country": "gt", "weather": "soleado", "id": "t-1"}'
    )
    [tweet] = parse_tweets(body, None, make_ingest()[0])[0]
    [accepted] = accept([tweet], now=datetime(2026, 12, 7, 10, 0, 0, 120, tzinfo=UTC))
    assert (
        accepted.to_json()
        == (
            '{"id":"t-1","description":"Está \u2028","country":"GT","weather":"Soleado",'
            '"accepted_at":"2026-12-07T10:00:00.000120Z"}'
        ).encode()
    )
    [chunk] = encode_chunks([accepted], 10_000)
    assert decode_message(chunk.body).tweets == [accepted]
