"""Locust load test of the pipeline's three faces, REST, gRPC and the WebSocket stream
(run by `make load`).

* :class:`RestUser` (Locust's FastHttpUser) POSTs seed-shaped tweets to ``/input`` on the
  Serve HTTP proxy: mostly single tweets, some batches of 10-100.
* :class:`GrpcUser` calls ``weather.v1.Publisher`` (Publish / PublishBatch) through
  Serve's gRPC proxy (``--host``'s host at the gRPC port, 9000; or ``--host
  grpc://HOST:PORT``) with metadata ``application: ingest``, following Locust's
  documented gRPC pattern (a User with its own client whose interceptor fires request
  events).
* :class:`StreamUser` keeps one WebSocket to ``/input/stream`` open through the same HTTP
  proxy and sends one frame (a tweet or a batch) at a time, firing a request event per
  acknowledgement (a frame is a success only when its acknowledgement says 202).

Every tweet carries a unique id. The ids in each 202 / gRPC reply are summed and, when
the test stops, written to ``$LOADTEST_ACCEPTED_DIR/accepted-<pid>.json`` (one file per
Locust process), which `make load` compares with the Redis and Valkey counters.

    .venv/bin/locust -f loadtest/locustfile.py --host http://127.0.0.1:8000   # web UI
"""

from __future__ import annotations

import json
import os
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import grpc
import grpc.experimental.gevent as grpc_gevent
from locust import FastHttpUser, User, between, events, task
from locust.exception import LocustError
from websockets.sync.client import ClientConnection, connect

from devstack.config import stack_config
from loadtest.targets import grpc_target
from loadtest.tweets import TweetFactory
from serve_app.pb.weather.v1 import weather_pb2, weather_pb2_grpc

grpc_gevent.init_gevent()  # gRPC's I/O must cooperate with Locust's gevent loop

GRPC_TARGET = stack_config.serve_grpc_target
GRPC_METADATA = (("application", "ingest"),)
ACCEPTED = {"rest": 0, "grpc": 0, "stream": 0}
STREAM_PATH = "/input/stream"
_factory = TweetFactory(f"locust-{os.getpid()}-{int(time.time())}")


def batch_size() -> int:
    return random.choice((10, 25, 50, 100))


class RefusedReply(Exception):
    """A reply that is not a 202 for every tweet sent (it says why)."""


def accepted_ids(reply: dict[str, Any], body: Any) -> int:
    """How many tweets a 202 (REST) or 202 acknowledgement (stream) accepted; anything
    else, or a 202 that does not name one id per tweet sent, raises :class:`RefusedReply`.
    Every tweet Locust sends has its own id, so ``accepted`` must equal the tweets sent."""
    if reply.get("status") != 202:
        raise RefusedReply(f"{reply.get('status')}: {str(reply.get('error'))[:200]}")
    ids = reply.get("ids") or ([reply["id"]] if reply.get("id") else [])
    expected = len(body) if isinstance(body, list) else 1
    if len(ids) != expected or reply.get("accepted") != expected:
        raise RefusedReply(f"202 for {expected} tweets named {len(ids)} ids")
    return len(ids)


def tweet_mix(label: str) -> dict[Callable[[Any], None], int]:
    """Locust tasks of a face that takes JSON bodies: 80 % single tweets, 20 % batches, sent
    with the user's ``send(body, name)``."""

    def single(user: Any) -> None:
        user.send(_factory.one(), f"{label} (1)")

    def batch(user: Any) -> None:
        user.send(_factory.many(batch_size()), f"{label} (batch)")

    return {single: 8, batch: 2}


# --- REST -------------------------------------------------------------------------------
class RestUser(FastHttpUser):
    """POST /input through the Serve HTTP proxy (port 8000)."""

    weight = 3
    wait_time = between(0.01, 0.1)

    tasks = tweet_mix("POST /input")

    def send(self, body: Any, name: str) -> None:
        with self.client.post("/input", json=body, name=name, catch_response=True) as resp:
            try:
                reply = {**resp.json(), "status": resp.status_code}
            except ValueError:  # Serve's own 503 is plain text
                reply = {"status": resp.status_code, "error": resp.text or "no JSON body"}
            try:
                ACCEPTED["rest"] += accepted_ids(reply, body)
            except RefusedReply as exc:
                resp.failure(str(exc))


def fire(
    environment: Any, kind: str, name: str, started: float, length: int, exception: Any
) -> None:
    """One Locust request event for a call that is not Locust's own HTTP (gRPC, WebSocket)."""
    environment.events.request.fire(
        request_type=kind,
        name=name,
        response_time=(time.perf_counter() - started) * 1000,
        response_length=length,
        response=None,
        context={},
        exception=exception,
    )


# --- gRPC (Locust's documented pattern: interceptor firing request events) -------------
class LocustInterceptor(grpc.UnaryUnaryClientInterceptor):
    def __init__(self, environment: Any) -> None:
        self.env = environment

    def intercept_unary_unary(self, continuation: Any, client_call_details: Any, request: Any):
        response = None
        exception = None
        length = 0
        started = time.perf_counter()
        try:
            response = continuation(client_call_details, request)
            length = response.result().ByteSize()
        except grpc.RpcError as exc:
            exception = exc
        fire(self.env, "grpc", client_call_details.method, started, length, exception)
        return response


class GrpcUser(User):
    """A User whose client is a gRPC stub; subclasses set ``stub_class``."""

    abstract = True
    stub_class: Any = None

    def __init__(self, environment: Any) -> None:
        super().__init__(environment)
        if self.stub_class is None:
            raise LocustError("GrpcUser needs a stub_class")
        target = grpc_target(self.host, stack_config.serve_grpc_port, GRPC_TARGET)
        self._channel = grpc.insecure_channel(target)
        intercepted = grpc.intercept_channel(self._channel, LocustInterceptor(environment))
        self.stub = self.stub_class(intercepted)

    def on_stop(self) -> None:
        self._channel.close()


class PublisherUser(GrpcUser):
    """weather.v1.Publisher through the Serve gRPC proxy (port 9000)."""

    weight = 1
    wait_time = between(0.01, 0.1)
    stub_class = weather_pb2_grpc.PublisherStub

    @task(8)
    def publish(self) -> None:
        reply = self._call(self.stub.Publish, weather_pb2.Tweet(**_factory.one()))
        if reply is not None and reply.id:
            ACCEPTED["grpc"] += 1

    @task(2)
    def publish_batch(self) -> None:
        tweets = [weather_pb2.Tweet(**t) for t in _factory.many(batch_size())]
        reply = self._call(self.stub.PublishBatch, weather_pb2.TweetBatch(tweets=tweets))
        if reply is not None:
            ACCEPTED["grpc"] += len(reply.ids)

    @staticmethod
    def _call(method: Any, request: Any) -> Any:
        try:
            return method(request, metadata=GRPC_METADATA, timeout=10)
        except grpc.RpcError:
            return None  # already reported as a failure by the interceptor


# --- WebSocket stream -------------------------------------------------------------------
def stream_url(host: str | None) -> str:
    """``ws://host:port/input/stream`` from the REST ``--host`` (the same Serve HTTP proxy)."""
    parts = urlsplit(host or stack_config.serve_http_url)
    scheme = "wss" if parts.scheme == "https" else "ws"
    return f"{scheme}://{parts.netloc}{STREAM_PATH}"


class StreamUser(User):
    """One WebSocket per user to ``/input/stream``; one frame in flight at a time."""

    weight = 1
    wait_time = between(0.01, 0.1)

    def __init__(self, environment: Any) -> None:
        super().__init__(environment)
        self._ws: ClientConnection | None = None

    def on_stop(self) -> None:
        if self._ws is not None:
            self._ws.close()

    tasks = tweet_mix("WS /input/stream")

    def send(self, body: Any, name: str) -> None:
        started = time.perf_counter()
        length, exception = 0, None
        try:
            if self._ws is None:
                self._ws = connect(stream_url(self.host), open_timeout=10, max_size=2**22)
            self._ws.send(json.dumps(body))
            reply = self._ws.recv(timeout=10)
            length = len(reply)
            ACCEPTED["stream"] += accepted_ids(json.loads(reply), body)
        except Exception as exc:  # a refused frame, a dropped connection: reconnect next time
            exception = exc
            if not isinstance(exc, RefusedReply) and self._ws is not None:
                self._ws.close()
                self._ws = None
        fire(self.environment, "WS", name, started, length, exception)


# --- accepted count -------------------------------------------------------------------
@events.test_stop.add_listener
def _write_accepted(environment: Any, **_: Any) -> None:
    directory = os.environ.get("LOADTEST_ACCEPTED_DIR")
    total = sum(ACCEPTED.values())
    if directory:
        path = Path(directory) / f"accepted-{os.getpid()}.json"
        path.write_text(json.dumps({**ACCEPTED, "total": total}))
    print(
        f"accepted tweets: {total} (REST {ACCEPTED['rest']}, gRPC {ACCEPTED['grpc']}, "
        f"stream {ACCEPTED['stream']})"
    )
