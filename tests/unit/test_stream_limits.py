"""Streams bounded at the server: how many a replica serves, how long one may idle, and the
frame bytes all of a replica's streams hold while publishing (Starlette TestClient, fakes)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from pathlib import Path

import pytest
import yaml
from starlette.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from serve_app.ingest.core import Ingest
from serve_app.ingest.rest import BUSY_CLOSE_CODE, IDLE_CLOSE_CODE, build_rest_app
from serve_app.ingest.streams import StreamBudget
from serve_app.settings import Settings
from tests.support.fakes import LIMITS, RULES, FakeWriter
from tests.unit.test_stream import SEED, GatedPublish, _stats, wait_for

ROOT = Path(__file__).resolve().parents[2]


def app_with(publish=None, **limits: float) -> TestClient:
    """Use it as a context manager: every stream then runs on the one event loop of the app,
    as under uvicorn (without it each connection gets a loop of its own)."""
    writers = [FakeWriter("kafka", by_country=True), FakeWriter("rabbitmq", by_country=False)]
    bounded = dataclasses.replace(LIMITS, **limits)
    ingest = Ingest(writers, RULES, bounded, max_chunk_bytes=8192, publish_timeout_s=1.0)
    return TestClient(build_rest_app(ingest, publish or ingest.publish, _stats))


def test_a_stream_beyond_the_replicas_limit_is_closed_with_try_again_later() -> None:
    with app_with(stream_max_open=2) as client:
        with (
            client.websocket_connect("/input/stream"),
            client.websocket_connect("/input/stream"),
            client.websocket_connect("/input/stream") as third,
            pytest.raises(WebSocketDisconnect) as closed,
        ):
            third.receive_json()
        assert closed.value.code == BUSY_CLOSE_CODE
        assert "serves 2 streams" in closed.value.reason
        with client.websocket_connect("/input/stream") as again:  # slots freed by the closes
            again.send_text(json.dumps(SEED))
            assert again.receive_json()["status"] == 202
            assert client.get("/health").json()["streams"]["open"] == 1


def test_an_idle_stream_gets_its_answers_and_is_then_closed() -> None:
    with app_with(stream_idle_timeout_s=0.3) as client:
        with client.websocket_connect("/input/stream") as ws:
            ws.send_text(json.dumps({**SEED, "id": "before-idle"}))
            assert ws.receive_json()["id"] == "before-idle"
            with pytest.raises(WebSocketDisconnect) as closed:
                ws.receive_json()
        assert closed.value.code == IDLE_CLOSE_CODE
        assert "no frame for 0.3 s" in closed.value.reason
        wait_for(lambda: client.get("/health").json()["streams"]["open"] == 0)
        assert client.get("/health").json()["streams"]["open"] == 0


def test_frames_of_all_streams_wait_beyond_the_replicas_byte_budget() -> None:
    frame = json.dumps(SEED)
    publish = GatedPublish()
    with app_with(publish, stream_max_bytes_in_flight=2 * len(frame)) as client:
        with (
            client.websocket_connect("/input/stream") as a,
            client.websocket_connect("/input/stream") as b,
        ):
            for ws in (a, b, a, b):
                ws.send_text(frame)
            wait_for(lambda: publish.started == 2)
            wait_for(lambda: publish.started > 2, timeout_s=0.3)
            assert publish.started == 2  # two frames fill the budget; two wait unpublished
            assert client.get("/health").json()["streams"]["bytes_in_flight"] == 2 * len(frame)
            publish.gate.set()
            answers = [a.receive_json(), a.receive_json(), b.receive_json(), b.receive_json()]
        assert {x["status"] for x in answers} == {202}
        assert client.get("/health").json()["streams"]["bytes_in_flight"] == 0


async def test_the_budget_lets_a_frame_larger_than_itself_go_alone() -> None:
    budget = StreamBudget(max_open=1, max_bytes=10)
    await budget.take(4)
    waiting = asyncio.create_task(budget.take(50))
    await asyncio.sleep(0.05)
    assert not waiting.done()
    await budget.give_back(4)
    await asyncio.wait_for(waiting, 1)
    assert budget.bytes_in_flight == 50


def test_streams_leave_most_of_the_gateways_request_slots_to_other_requests() -> None:
    """Each open stream holds one of Serve's max_ongoing_requests for its lifetime."""
    config = yaml.safe_load((ROOT / "serve_config.yaml").read_text(encoding="utf-8"))
    ingest = next(a for a in config["applications"] if a["name"] == "ingest")
    gateway = next(d for d in ingest["deployments"] if d["name"] == "Gateway")
    settings = Settings()
    assert settings.stream_max_open <= gateway["max_ongoing_requests"] // 2
    assert settings.stream_max_in_flight * settings.max_body_bytes <= (
        settings.stream_max_bytes_in_flight
    )
