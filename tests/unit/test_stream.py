"""The WebSocket face ``/input/stream`` with Starlette's TestClient over fake writers: the same
answers as ``POST /input`` per frame, acknowledged in order, and back-pressure (no servers)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import threading
import time
from typing import Any

import pytest
from starlette.testclient import TestClient

from serve_app.ingest.core import Ingest
from serve_app.ingest.rest import build_rest_app
from serve_app.model.metrics import ACCEPTED, REJECTED
from serve_app.model.schema import Tweet
from tests.support.fakes import LIMITS, RULES, FakeWriter, RecordingMetrics, make_ingest

SEED = {"description": "Está lloviendo", "country": "GT", "weather": "Lluvioso"}


async def _stats(latest: int) -> tuple[dict[str, Any], bool]:
    return {}, True


@pytest.fixture
def api():
    metrics = RecordingMetrics()
    ingest, kafka, rabbit = make_ingest(metrics=metrics)
    return TestClient(build_rest_app(ingest, ingest.publish, _stats)), kafka, rabbit, metrics


def test_each_frame_is_acknowledged_in_order_with_its_ids_after_both_brokers(api) -> None:
    client, kafka, rabbit, metrics = api
    with client.websocket_connect("/input/stream") as ws:
        ws.send_text(json.dumps(SEED))
        ws.send_text(json.dumps([SEED, {**SEED, "id": "mine"}]))
        one, many = ws.receive_json(), ws.receive_json()
    assert (one["frame"], one["status"], one["accepted"]) == (0, 202, 1)
    assert (many["frame"], many["status"], many["ids"][1]) == (1, 202, "mine")
    published = {one["id"], *many["ids"]}
    assert {t.id for t in kafka.tweets()} == {t.id for t in rabbit.tweets()} == published
    assert metrics.count(ACCEPTED, face="stream") == 3


@pytest.mark.parametrize(
    ("frame", "status", "fragment"),
    [
        ("{not json", 400, "malformed JSON"),
        ('{"country": "GT", "country": "SV"}', 400, "duplicate key 'country'"),
        ("[" * 20 + "]" * 20, 400, "nested deeper than 8"),
        ("x" * (LIMITS.max_body_bytes + 1), 413, "limit of"),
        ("[]", 422, "1 to"),
        (json.dumps([SEED, {**SEED, "weather": "Nevado"}]), 422, "tweets[1].weather"),
        (
            json.dumps([{**SEED, "id": "a"}, SEED, {**SEED, "id": "a", "country": "SV"}]),
            422,
            "tweets[2].id: id 'a' is also the id of tweets[0]",
        ),
    ],
)
def test_bad_frames_get_the_post_answer_and_publish_nothing(
    api, frame: str, status: int, fragment: str
) -> None:
    client, kafka, rabbit, metrics = api
    with client.websocket_connect("/input/stream") as ws:
        ws.send_text(frame)
        answer = ws.receive_json()
        ws.send_text(json.dumps(SEED))  # the connection stays usable
        assert ws.receive_json()["status"] == 202
    assert answer["status"] == status and answer["frame"] == 0
    assert fragment in json.dumps(answer, ensure_ascii=False)
    assert len(kafka.tweets()) == len(rabbit.tweets()) == 1
    assert metrics.count(REJECTED, face="stream", code=str(status)) == 1


def test_binary_frames_are_refused_with_415(api) -> None:
    client, kafka, _, _ = api
    with client.websocket_connect("/input/stream") as ws:
        ws.send_bytes(json.dumps(SEED).encode())
        answer = ws.receive_json()
    assert answer["status"] == 415 and "text frame" in answer["error"]
    assert kafka.chunks == []


def test_a_broker_failure_is_503_with_the_ids_and_retry_after(api) -> None:
    client, _, rabbit, _ = api
    rabbit.fail = "connection refused"
    with client.websocket_connect("/input/stream") as ws:
        ws.send_text(json.dumps([SEED, {**SEED, "id": "keep-me"}]))
        answer = ws.receive_json()
    assert answer["status"] == 503 and answer["retry_after"] == LIMITS.retry_after_s
    assert answer["ids"][1] == "keep-me" and answer["brokers"] == {"rabbitmq": "connection refused"}


class GatedPublish:
    """A publish that holds every call until the test opens the gate (bounded wait)."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.started = 0
        self.published: list[list[Tweet]] = []

    async def __call__(self, tweets: list[Tweet]) -> None:
        self.started += 1
        for _ in range(1000):
            if self.gate.is_set():
                break
            await asyncio.sleep(0.01)
        self.published.append(tweets)


def wait_for(condition: Any, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)


def test_back_pressure_stops_reading_beyond_the_frames_in_flight() -> None:
    limits = dataclasses.replace(LIMITS, stream_max_in_flight=3)
    writers = [FakeWriter("kafka", by_country=True), FakeWriter("rabbitmq", by_country=False)]
    ingest = Ingest(writers, RULES, limits, max_chunk_bytes=8192, publish_timeout_s=1.0)
    publish = GatedPublish()
    client = TestClient(build_rest_app(ingest, publish, _stats))
    with client.websocket_connect("/input/stream") as ws:
        for i in range(7):
            ws.send_text(json.dumps({**SEED, "id": f"t-{i}"}))
        wait_for(lambda: publish.started == 3)
        time.sleep(0.3)
        assert publish.started == 3  # frames 3-6 wait unread in the socket
        publish.gate.set()
        answers = [ws.receive_json() for _ in range(7)]
    assert [a["frame"] for a in answers] == list(range(7))
    assert [a["id"] for a in answers] == [f"t-{i}" for i in range(7)]
    assert {a["status"] for a in answers} == {202}
