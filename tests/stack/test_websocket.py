"""``/input/stream`` through Serve's real proxy (HAProxy in front of the Gateway replica):
frames in, one acknowledgement per frame out, every acknowledged tweet counted exactly once
in Redis and Valkey."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
from websockets.asyncio.client import connect

from devstack.config import stack_config
from tests.stack.test_end_to_end import (
    BASE,
    as_request,
    stats,
    wait_for_counts,
    wait_until_admitting,
)
from tests.support.counting import expected_delta, make_tweets

pytestmark = pytest.mark.usefixtures("devstack_serve")

STREAM_URL = BASE.replace("http://", "ws://", 1) + "/input/stream"


async def test_stream_frames_are_acknowledged_and_counted_once_through_the_proxy() -> None:
    tweets = make_tweets(300, "ws")
    singles, rest = tweets[:100], tweets[100:]
    frames = [json.dumps(as_request(t)) for t in singles]
    frames += [json.dumps([as_request(t) for t in rest[i : i + 50]]) for i in range(0, 200, 50)]
    repeated = as_request(tweets[0])
    frames.append(json.dumps([repeated, repeated]))  # the same tweet again: counted once
    conflict = [
        {**repeated, "id": "ws-conflict"},
        {**repeated, "id": "ws-conflict", "description": "other"},
    ]
    frames.append(json.dumps(conflict))  # refused 422: one id, two contents
    async with httpx.AsyncClient(base_url=stack_config.serve_http_url, timeout=60) as client:
        await wait_until_admitting(client)
        before = await stats(client)
        async with asyncio.timeout(120), connect(STREAM_URL, max_size=2**22) as ws:
            for frame in frames:  # all at once: the server reads at most 8 ahead
                await ws.send(frame)
            acks = [json.loads(await ws.recv()) for _ in frames]
        assert [a["frame"] for a in acks] == list(range(len(frames)))
        refused = next((a for a in acks[:-1] if a["status"] != 202), acks[-1])
        assert [a["status"] for a in acks] == [202] * (len(frames) - 1) + [422], refused
        acked = [a["id"] for a in acks[:100]] + [i for a in acks[100:104] for i in a["ids"]]
        assert acked == [t.id for t in tweets]
        assert acks[104]["accepted"] == 1 and acks[104]["ids"] == [tweets[0].id] * 2
        await wait_for_counts(client, before, expected_delta(tweets))
        health = (await client.get("/health")).json()
        assert {b: a["admitting"] for b, a in health["admission"].items()} == {
            "kafka": True,
            "rabbitmq": True,
            "redis": True,
            "valkey": True,
        }
