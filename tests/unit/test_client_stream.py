"""The WebSocket send mode (weather_client.stream) over a fake connection (no server):
frames acknowledged in order, a 503 acknowledgement retried, and a lost connection answered
by a new one carrying the same ids."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
from weather_client import AsyncClient, RetryPolicy
from weather_client.stream import StreamTransport

from tests.support.fakes import FakeTime

BASE = "http://pipeline.test"
TWEET = {"description": "Está lloviendo", "country": "GT", "weather": "Lluvioso"}


class FakeSocket:
    """One connection: every frame sent is answered as the script says (an ack status, or
    ``"drop"`` to end the connection without acknowledging)."""

    def __init__(self, pipeline: FakePipeline) -> None:
        self.pipeline = pipeline
        self.acks: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self.frame = 0
        self.closed = False

    async def send(self, text: str) -> None:
        tweets = json.loads(text)
        self.pipeline.frames.append(tweets)
        answer = self.pipeline.script.pop(0) if self.pipeline.script else 202
        if answer == "drop":
            self.acks.put_nowait(None)
            return
        ack: dict[str, Any] = {"frame": self.frame, "status": answer}
        ids = [t["id"] for t in tweets]
        if answer == 202:
            ack |= {"accepted": len(ids), "ids": ids}
        else:
            ack |= {"error": "kafka: timed out; retry with the same ids", "ids": ids}
            ack["retry_after"] = 2
        self.frame += 1
        self.acks.put_nowait(ack)

    def __aiter__(self) -> FakeSocket:
        return self

    async def __anext__(self) -> str:
        ack = await self.acks.get()
        if ack is None:
            raise StopAsyncIteration
        return json.dumps(ack)

    async def close(self) -> None:
        self.closed = True
        self.acks.put_nowait(None)


class FakePipeline:
    def __init__(self, *script: int | str) -> None:
        self.script = list(script)
        self.frames: list[list[dict[str, Any]]] = []
        self.sockets: list[FakeSocket] = []

    async def connect(self, url: str, **options: Any) -> FakeSocket:
        assert url == "ws://pipeline.test/input/stream"
        socket = FakeSocket(self)
        self.sockets.append(socket)
        return socket


def client_for(pipeline: FakePipeline, time: FakeTime, **options: Any) -> AsyncClient:
    transport = StreamTransport(BASE, connector=pipeline.connect)  # type: ignore[arg-type]
    policy = RetryPolicy(base_s=0.5, cap_s=4.0, deadline_s=60.0)
    no_openapi = httpx.MockTransport(lambda request: httpx.Response(404, json={}))
    http = httpx.AsyncClient(base_url=BASE, transport=no_openapi)  # the default limit
    return AsyncClient(
        BASE, via="ws", transport=transport, http=http, policy=policy, clock=time,
        sleep=time.sleep, uniform=lambda: 0.0, **options,
    )  # fmt: skip


def tweets(n: int) -> list[dict[str, str]]:
    return [{**TWEET, "description": f"tweet {i}"} for i in range(n)]


async def test_frames_are_acknowledged_on_one_connection() -> None:
    pipeline, time = FakePipeline(), FakeTime()
    client = client_for(pipeline, time, batch=2)
    async with client:
        result = await client.send(tweets(5))
    assert [len(f) for f in pipeline.frames] == [2, 2, 1]
    assert len(pipeline.sockets) == 1 and pipeline.sockets[0].closed
    assert sorted(result.accepted) == sorted(t["id"] for f in pipeline.frames for t in f)
    assert result.ok and result.retries == 0


async def test_a_503_acknowledgement_is_retried_with_the_same_ids_after_retry_after() -> None:
    pipeline, time = FakePipeline(503, 202), FakeTime()
    client = client_for(pipeline, time)
    async with client:
        result = await client.send(tweets(3))
    assert pipeline.frames[0] == pipeline.frames[1]
    assert time.waits == [2.0] and result.retries == 1 and result.unavailable == 1
    assert len(pipeline.sockets) == 1


async def test_a_lost_connection_is_reopened_and_the_frame_sent_again_with_the_same_ids() -> None:
    pipeline, time = FakePipeline("drop", 202), FakeTime()
    client = client_for(pipeline, time)
    async with client:
        result = await client.send(tweets(3))
    assert len(pipeline.sockets) == 2  # a new connection for the retry
    assert pipeline.frames[0] == pipeline.frames[1]
    assert result.ok and result.retries == 1
    assert result.retried_because == {"ConnectionClosed": 1}
    assert sorted(result.accepted) == sorted(t["id"] for t in pipeline.frames[0])
