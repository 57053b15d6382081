"""The REST face with Starlette's TestClient over fake writers (no servers, no Ray)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from starlette.testclient import TestClient

from serve_app.ingest.rest import build_rest_app
from tests.support.fakes import LIMITS, make_ingest

SEED = {"description": "Está lloviendo", "country": "GT", "weather": "Lluvioso"}
JSON = {"content-type": "application/json"}


async def _stats(latest: int) -> tuple[dict[str, Any], bool]:
    tweets = [{"id": f"t-{i}", "country": "GT"} for i in range(latest)]
    return {"redis": {"total": 1, "latest": tweets}, "valkey": {"error": "down"}}, False


@pytest.fixture
def api():
    ingest, kafka, rabbit = make_ingest()
    client = TestClient(build_rest_app(ingest, ingest.publish, _stats))
    return client, kafka, rabbit


def test_single_and_batch_are_accepted_and_published(api) -> None:
    client, kafka, rabbit = api
    one = client.post("/input", json=SEED)
    assert one.status_code == 202 and one.json()["accepted"] == 1
    many = client.post("/input", json=[SEED, {**SEED, "id": "mine"}])
    assert many.status_code == 202
    assert many.json()["ids"][1] == "mine"
    published = {t.id for t in kafka.tweets()}
    assert published == {one.json()["id"], *many.json()["ids"]}
    assert {t.id for t in rabbit.tweets()} == published


def test_idempotency_key_names_a_single_tweet(api) -> None:
    client, kafka, _ = api
    response = client.post("/input", json=SEED, headers={"Idempotency-Key": "k-1"})
    assert response.json()["id"] == "k-1"
    assert client.post("/input", json=[SEED], headers={"Idempotency-Key": "k"}).status_code == 422


@pytest.mark.parametrize(
    ("body", "headers", "status", "fragment"),
    [
        (b"{not json", JSON, 400, "malformed JSON"),
        (b"\xff", JSON, 400, "not UTF-8"),
        (b"\xef\xbb\xbf" + json.dumps(SEED).encode(), JSON, 400, "byte order mark"),
        (b"[" * 30_000 + b"]" * 30_000, JSON, 400, "nested deeper than 8"),
        (b"[[[[[[[[[[1]]]]]]]]]]", JSON, 400, "nested deeper than 8"),
        # too deep inside what looks like tweets: still malformed JSON, not an invalid tweet
        (json.dumps({**SEED, "description": [[[[[[[["x"]]]]]]]]}).encode(), JSON, 400, "deeper"),
        (
            json.dumps([SEED, {**SEED, "weather": {"a": [[[[[[[1]]]]]]]}}]).encode(),
            JSON,
            400,
            "deeper",
        ),
        (json.dumps([[[[[[[[[SEED]]]]]]]]] * 2).encode(), JSON, 400, "deeper"),
        (json.dumps({**SEED, "description": [["x"]]}).encode(), JSON, 422, "invalid tweet"),
        (b'{"country": "GT", "country": "SV"}', JSON, 400, "duplicate key 'country'"),
        (b'{"description": NaN}', JSON, 400, "NaN is not JSON"),
        (json.dumps(SEED).encode(), {"content-type": "text/plain"}, 415, "application/json"),
        (
            json.dumps(SEED).encode(),
            {"content-type": "application/json; charset=latin-1"},
            415,
            "charset",
        ),  # fmt: skip
        (b"x" * (LIMITS.max_body_bytes + 1), JSON, 413, "limit"),
        (b"42", JSON, 422, "expected a tweet object"),
        (b"[]", JSON, 422, "1 to"),
        (json.dumps([SEED] * (LIMITS.max_batch_tweets + 1)).encode(), JSON, 422, "1 to"),
        (json.dumps({**SEED, "country": "ıo"}).encode(), JSON, 422, "invalid tweet"),
        (
            b'{"description": "\\ud800", "country": "GT", "weather": "Soleado"}',
            JSON,
            422,
            "invalid tweet",
        ),  # fmt: skip
    ],
)
def test_bad_requests_name_the_problem_and_publish_nothing(
    api, body: bytes, headers: dict[str, str], status: int, fragment: str
) -> None:
    client, kafka, rabbit = api
    response = client.post("/input", content=body, headers=headers)
    assert response.status_code == status, response.text
    assert fragment in json.dumps(response.json(), ensure_ascii=False)
    assert kafka.chunks == rabbit.chunks == []


def test_field_errors_carry_index_and_field(api) -> None:
    client, _, _ = api
    response = client.post("/input", json=[SEED, {**SEED, "weather": "Nevado"}])
    assert response.status_code == 422
    [detail] = response.json()["details"]
    assert detail["loc"] == [1, "weather"]
    assert response.json()["error"].startswith("invalid tweet: tweets[1].weather: 'Nevado'")


def test_broker_failure_is_503_with_retry_after_and_the_ids(api) -> None:
    client, kafka, rabbit = api
    rabbit.fail = "connection refused"
    response = client.post("/input", json=[SEED, {**SEED, "id": "keep-me"}])
    assert response.status_code == 503
    assert response.headers["retry-after"] == str(LIMITS.retry_after_s)
    body = response.json()
    assert body["ids"][1] == "keep-me" and len(body["ids"]) == 2
    assert body["brokers"] == {"rabbitmq": "connection refused"}


def test_any_failure_of_ours_is_503_never_500() -> None:
    ingest, _, _ = make_ingest()

    async def broken(tweets):
        raise RuntimeError("the writer actor died")

    client = TestClient(build_rest_app(ingest, broken, _stats), raise_server_exceptions=False)
    response = client.post("/input", json=SEED)
    assert response.status_code == 503
    assert "the writer actor died" in response.json()["error"]
    assert len(response.json()["ids"]) == 1


def test_routing_404_and_405_with_allow(api) -> None:
    client, _, _ = api
    missing = client.get("/nope")
    assert missing.status_code == 404 and "no route /nope" in missing.json()["error"]
    wrong = client.get("/input")
    assert wrong.status_code == 405 and wrong.headers["allow"] == "POST"


def test_health_stats_and_openapi(api) -> None:
    client, _, rabbit = api
    assert client.get("/health").status_code == 200
    rabbit.fail = "down"
    unhealthy = client.get("/health")
    assert unhealthy.status_code == 503 and unhealthy.json()["rabbitmq"]["ok"] is False
    stats = client.get("/stats?latest=3")
    assert stats.status_code == 503 and len(stats.json()["redis"]["latest"]) == 3
    assert client.get("/stats?latest=-1").status_code == 400
    too_many = client.get("/stats?latest=1001")
    assert too_many.json()["error"] == "latest must be a whole number 0-1000"
    spec = client.get("/openapi.json").json()
    assert "post" in spec["paths"]["/input"]


def test_health_is_degraded_while_a_store_reports_skipped_records_or_parked_letters() -> None:
    ingest, _, _ = make_ingest()

    def app_over(redis: dict[str, Any]) -> TestClient:
        async def stats(latest: int) -> tuple[dict[str, Any], bool]:
            return {"redis": redis, "valkey": {"error": "down"}}, False

        return TestClient(build_rest_app(ingest, ingest.publish, stats))

    clean = app_over({"total": 5, "skipped": {}, "parked_dead_letters": 0}).get("/health")
    assert clean.status_code == 200 and clean.json()["status"] == "ok"
    skipped = app_over({"skipped": {"weather-tweets:0": 6}, "parked_dead_letters": 0})
    answer = skipped.get("/health")
    assert answer.status_code == 200 and answer.json()["status"] == "degraded"
    assert answer.json()["stores"] == {"redis_skipped": 6, "redis_parked_dead_letters": 0}
    parked = app_over({"skipped": {}, "parked_dead_letters": 2}).get("/health")
    assert parked.json()["status"] == "degraded"


def test_one_id_with_two_contents_is_422_naming_both_indexes(api) -> None:
    client, kafka, rabbit = api
    body = [{**SEED, "id": "x"}, {**SEED, "id": "x", "description": "otro"}]
    response = client.post("/input", json=body)
    assert response.status_code == 422
    assert response.json()["error"] == (
        "invalid tweet: tweets[1].id: id 'x' is also the id of tweets[0], whose content differs"
    )
    assert response.json()["details"][0]["loc"] == [1, "id"]
    assert kafka.chunks == rabbit.chunks == []


def test_the_same_tweet_twice_is_published_and_counted_once(api) -> None:
    client, kafka, rabbit = api
    response = client.post("/input", json=[{**SEED, "id": "x"}, {**SEED, "id": "x"}, SEED])
    assert response.status_code == 202
    body = response.json()
    assert body["accepted"] == 2 and body["ids"][:2] == ["x", "x"] and len(body["ids"]) == 3
    assert [t.id for t in kafka.tweets()].count("x") == 1
    assert [t.id for t in rabbit.tweets()].count("x") == 1
