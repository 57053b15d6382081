"""AsyncClient and Client over ``POST /input``, against httpx.MockTransport (no server):
ids kept across retries, Retry-After honoured, 4xx never retried, batching, the deadline."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from weather_client import AsyncClient, Client, NotAccepted, RetryPolicy, WeatherClientError

from tests.support.fakes import FakeTime

BASE = "http://pipeline.test"
TWEET = {"description": "Está lloviendo", "country": "GT", "weather": "Lluvioso"}
Handler = Callable[[httpx.Request], httpx.Response]


class Server:
    """Answers ``POST /input`` from a script of handlers (the last one repeats) and
    records every body it was sent."""

    def __init__(self, *script: Handler, batch_limit: int | None = None) -> None:
        self.script = list(script)
        self.bodies: list[list[dict[str, Any]]] = []
        self.batch_limit = batch_limit

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/openapi.json":
            return self.openapi()
        assert request.url.path == "/input" and request.method == "POST"
        assert request.headers["content-type"] == "application/json"
        self.bodies.append(json.loads(request.content))
        handler = self.script.pop(0) if len(self.script) > 1 else self.script[0]
        return handler(request)

    def openapi(self) -> httpx.Response:
        if self.batch_limit is None:
            return httpx.Response(404, json={"error": "no route /openapi.json"})
        array = {"type": "array", "maxItems": self.batch_limit}
        schema = {"oneOf": [{"$ref": "#/components/schemas/TweetIn"}, array]}
        body = {"requestBody": {"content": {"application/json": {"schema": schema}}}}
        return httpx.Response(200, json={"paths": {"/input": {"post": body}}})

    def ids(self, attempt: int) -> list[str]:
        return [t["id"] for t in self.bodies[attempt]]


def accepted(request: httpx.Request) -> httpx.Response:
    ids = [t["id"] for t in json.loads(request.content)]
    return httpx.Response(202, json={"accepted": len(ids), "ids": ids})


def unavailable(request: httpx.Request) -> httpx.Response:
    ids = [t["id"] for t in json.loads(request.content)]
    body = {"error": "kafka: timed out; retry with the same ids", "ids": ids}
    return httpx.Response(503, json=body, headers={"Retry-After": "2"})


def refuses(status: int, error: str, **extra: Any) -> Handler:
    return lambda request: httpx.Response(status, json={"error": error, **extra})


def fails(exc: type[httpx.TransportError]) -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        raise exc("simulated", request=request)

    return handler


def client_for(server: Server, time: FakeTime, **options: Any) -> AsyncClient:
    http = httpx.AsyncClient(base_url=BASE, transport=httpx.MockTransport(server))
    policy = options.pop("policy", RetryPolicy(base_s=0.5, cap_s=4.0, deadline_s=60.0))
    return AsyncClient(
        BASE, http=http, policy=policy, clock=time, sleep=time.sleep, uniform=lambda: 0.5,
        **options,
    )  # fmt: skip


def tweets(n: int) -> list[dict[str, str]]:
    return [{**TWEET, "description": f"tweet {i}"} for i in range(n)]


async def test_a_503_is_retried_with_the_same_ids_until_a_202() -> None:
    server, time = Server(unavailable, unavailable, accepted), FakeTime()
    async with client_for(server, time) as client:
        result = await client.send(tweets(3))
    assert len(server.bodies) == 3
    assert server.bodies[0] == server.bodies[1] == server.bodies[2]  # same ids, same content
    assert sorted(result.accepted) == sorted(server.ids(0))
    assert result.ok and result.retries == 2 and result.unavailable == 2


async def test_retry_after_is_honoured_with_bounded_jitter() -> None:
    server, time = Server(unavailable, unavailable, unavailable, accepted), FakeTime()
    async with client_for(server, time) as client:
        await client.send(tweets(1))
    # Retry-After 2 s plus half (uniform 0.5) of the windows 0.5, 1, 2
    assert time.waits == [2.25, 2.5, 3.0]
    policy = RetryPolicy(base_s=0.5, cap_s=4.0)
    for failures, wait in enumerate(time.waits, start=1):
        assert 2.0 <= wait <= 2.0 + policy.window(failures)


@pytest.mark.parametrize(
    "error", [httpx.ConnectError, httpx.ReadTimeout, httpx.RemoteProtocolError]
)
async def test_connection_errors_and_timeouts_are_retried_with_the_same_ids(
    error: type[httpx.TransportError],
) -> None:
    server, time = Server(fails(error), accepted), FakeTime()
    async with client_for(server, time) as client:
        result = await client.send(tweets(2))
    assert server.bodies[0] == server.bodies[1]
    assert result.ok and result.retried_because == {error.__name__: 1}
    assert time.waits == [0.25]  # no Retry-After: the jitter alone


@pytest.mark.parametrize("status", [400, 413, 415, 422])
async def test_a_4xx_is_never_retried_and_carries_the_server_s_reason(status: int) -> None:
    server, time = Server(refuses(status, f"bad input {status}")), FakeTime()
    async with client_for(server, time) as client:
        result = await client.send(tweets(2))
    assert len(server.bodies) == 1 and time.waits == []
    assert [(r.status, r.reason) for r in result.refused] == [
        (str(status), f"bad input {status}")
    ] * 2
    assert not result.accepted and not result.ok


async def test_a_422_naming_one_item_refuses_it_and_the_others_are_accepted() -> None:
    details = [{"loc": [1, "country"], "msg": "'ZZ' is not a code", "type": "value_error"}]
    server = Server(refuses(422, "invalid tweet: tweets[1].country", details=details), accepted)
    async with client_for(server, FakeTime()) as client:
        result = await client.send(tweets(3))
    first, second = server.ids(0), server.ids(1)
    assert second == [first[0], first[2]]
    assert result.accepted == second
    assert [(r.id, r.reason) for r in result.refused] == [(first[1], "country: 'ZZ' is not a code")]
    assert result.retries == 0 and result.resends == 1


async def test_input_is_split_into_batches_of_at_most_n() -> None:
    server = Server(accepted)
    async with client_for(server, FakeTime(), batch=10, concurrency=1) as client:
        result = await client.send(tweets(25))
    assert [len(b) for b in server.bodies] == [10, 10, 5]
    assert [t["description"] for b in server.bodies for t in b] == [f"tweet {i}" for i in range(25)]
    assert len(set(result.accepted)) == 25


async def test_batches_never_exceed_the_server_s_array_limit() -> None:
    server = Server(accepted, batch_limit=4)
    async with client_for(server, FakeTime(), batch=500) as client:
        assert await client.batch_size() == 4
        await client.send(tweets(9))
    assert sorted(len(b) for b in server.bodies) == [1, 4, 4]


async def test_given_ids_are_sent_as_they_are() -> None:
    server = Server(accepted)
    async with client_for(server, FakeTime()) as client:
        result = await client.send([{**TWEET, "id": "mine-1"}, TWEET])
    assert server.ids(0)[0] == "mine-1" and server.ids(0)[1] != "mine-1"
    assert result.accepted == server.ids(0)


async def test_the_deadline_raises_naming_the_ids_not_accepted() -> None:
    server, time = Server(unavailable), FakeTime()
    policy = RetryPolicy(base_s=0.5, cap_s=4.0, deadline_s=10.0)
    async with client_for(server, time, policy=policy) as client:
        with pytest.raises(NotAccepted) as caught:
            await client.send(tweets(2))
    error = caught.value
    assert sorted(error.pending_ids) == sorted(server.ids(0))
    assert all(i in str(error) for i in error.pending_ids)
    assert "10 s" in str(error) and "same ids" in str(error)
    assert time.now < 10.0  # no attempt was started past the deadline
    assert error.result.not_accepted == error.pending_ids and not error.result.accepted


async def test_the_deadline_keeps_what_other_batches_got_accepted() -> None:
    calls = iter(range(1000))

    def first_batch_only(request: httpx.Request) -> httpx.Response:
        return accepted(request) if next(calls) == 0 else unavailable(request)

    server, time = Server(first_batch_only), FakeTime()
    policy = RetryPolicy(base_s=0.5, cap_s=4.0, deadline_s=10.0)
    async with client_for(server, time, policy=policy, batch=2, concurrency=1) as client:
        with pytest.raises(NotAccepted) as caught:
            await client.send(tweets(4))
    assert caught.value.result.accepted == server.ids(0)
    assert sorted(caught.value.pending_ids) == sorted(server.ids(1))


def test_the_blocking_client_retries_the_same_way() -> None:
    server, time = Server(unavailable, accepted), FakeTime()
    http = httpx.AsyncClient(base_url=BASE, transport=httpx.MockTransport(server))
    with Client(BASE, http=http, clock=time, sleep=time.sleep, uniform=lambda: 0.0) as client:
        first = client.send(tweets(2))
        second = client.send(tweets(1))  # the same private loop serves every call
    assert server.bodies[0] == server.bodies[1]
    assert first.ok and first.retries == 1 and second.ok
    assert time.waits == [2.0]


async def test_the_blocking_client_refuses_to_run_inside_an_event_loop() -> None:
    with pytest.raises(RuntimeError, match="AsyncClient"):
        Client(BASE)


async def test_stats_returns_both_stores_even_when_one_cannot_be_read() -> None:
    body = {"redis": {"total": 3}, "valkey": {"error": "connection refused"}}

    def stats(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/stats"
        return httpx.Response(503, json=body)

    http = httpx.AsyncClient(base_url=BASE, transport=httpx.MockTransport(stats))
    async with AsyncClient(BASE, http=http) as client:
        assert await client.stats() == body


async def test_stats_names_an_answer_that_is_not_the_pipeline_s() -> None:
    http = httpx.AsyncClient(
        base_url=BASE, transport=httpx.MockTransport(lambda r: httpx.Response(404, text="nope"))
    )
    async with AsyncClient(BASE, http=http) as client:
        with pytest.raises(WeatherClientError, match="HTTP 404: nope"):
            await client.stats()


@pytest.mark.parametrize("options", [{"via": "carrier-pigeon"}, {"batch": 0}, {"concurrency": 0}])
def test_nonsense_options_are_refused(options: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        AsyncClient(BASE, **options)
