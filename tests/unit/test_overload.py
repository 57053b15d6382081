"""POST /input under the replica's concurrency limit (Starlette's TestClient, fake writers):
at the limit a request is refused at once, before its body is read (a 503 with
Retry-After, the ids the client named, counted); under it everything is as before, and
every request gives its slot back whatever its answer."""

from __future__ import annotations

from typing import Any

import pytest
from starlette.testclient import TestClient

from serve_app.ingest.limiter import GradientConfig, GradientLimiter
from serve_app.ingest.rest import build_rest_app
from serve_app.model.metrics import OVERLOAD_REFUSED, REJECTED
from serve_app.model.schema import Tweet
from tests.support.fakes import LIMITS, RecordingMetrics, make_ingest

SEED = {"description": "Está lloviendo", "country": "GT", "weather": "Lluvioso"}


async def _stats(latest: int) -> tuple[dict[str, Any], bool]:
    return {}, True


@pytest.fixture
def setup() -> tuple[TestClient, GradientLimiter, RecordingMetrics, list[list[Tweet]]]:
    sink = RecordingMetrics()
    ingest, _, _ = make_ingest(metrics=sink)
    limiter = GradientLimiter(GradientConfig(initial=2, floor=1, ceiling=2))
    published: list[list[Tweet]] = []

    async def publish(tweets: list[Tweet]) -> None:
        published.append(tweets)
        await ingest.publish(tweets)

    app = build_rest_app(ingest, publish, _stats, concurrency=limiter)
    return TestClient(app), limiter, sink, published


def test_at_the_limit_a_request_is_refused_before_its_body_is_read(setup) -> None:
    client, limiter, sink, published = setup
    assert limiter.try_acquire() and limiter.try_acquire()  # two requests in flight
    response = client.post("/input", content=b"{not even json", headers={"X": "y"})
    assert response.status_code == 503  # not 400 or 415: nothing of the request was read
    assert response.headers["retry-after"] == str(LIMITS.retry_after_s)
    body = response.json()
    assert body["ids"] == [] and "overloaded" in body["error"]
    assert "retry with the same ids" in body["error"]
    assert published == []
    assert sink.count(OVERLOAD_REFUSED, face="rest") == 1
    assert sink.count(REJECTED, face="rest", code="415") == 0
    assert limiter.in_flight == 2 and limiter.refused == 1


def test_a_refused_request_names_the_id_its_client_sent(setup) -> None:
    client, limiter, _, _ = setup
    limiter.try_acquire(), limiter.try_acquire()
    response = client.post("/input", json=SEED, headers={"Idempotency-Key": "k-7"})
    assert response.status_code == 503 and response.json()["ids"] == ["k-7"]


def test_under_the_limit_every_answer_gives_its_slot_back(setup) -> None:
    client, limiter, sink, published = setup
    assert client.post("/input", json=SEED).status_code == 202
    assert client.post("/input", content=b"{", headers={"content-type": "application/json"}
                       ).status_code == 400  # fmt: skip
    assert client.post("/input", json=SEED, headers={"content-type": "text/plain"}
                       ).status_code == 415  # fmt: skip
    assert limiter.in_flight == 0 and limiter.refused == 0
    assert len(published) == 1 and sink.count(OVERLOAD_REFUSED, face="rest") == 0


def test_health_shows_the_limit(setup) -> None:
    client, limiter, _, _ = setup
    limiter.try_acquire()
    report = client.get("/health").json()["concurrency"]
    assert report == {"limit": 2, "in_flight": 1, "refused": 0, "no_load_latency_ms": None}


def test_without_a_limit_nothing_is_refused() -> None:
    ingest, _, _ = make_ingest()
    client = TestClient(build_rest_app(ingest, ingest.publish, _stats))
    assert all(client.post("/input", json=SEED).status_code == 202 for _ in range(5))
    assert "concurrency" not in client.get("/health").json()
