"""Locust load test of the pipeline's two faces, REST and gRPC (run by `make load`).

* :class:`RestUser` (Locust's FastHttpUser) POSTs seed-shaped tweets to ``/input`` on the
  Serve HTTP proxy: mostly single tweets, some batches of 10-100.
* :class:`GrpcUser` calls ``weather.v1.Publisher`` (Publish / PublishBatch) through
  Serve's gRPC proxy with metadata ``application: ingest``, following Locust's
  documented gRPC pattern (a User with its own client whose interceptor fires request
  events).

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
from pathlib import Path
from typing import Any

import grpc
import grpc.experimental.gevent as grpc_gevent
from locust import FastHttpUser, User, between, events, task
from locust.exception import LocustError

from devstack.config import stack_config
from loadtest.tweets import TweetFactory
from serve_app.pb.weather.v1 import weather_pb2, weather_pb2_grpc

grpc_gevent.init_gevent()  # gRPC's I/O must cooperate with Locust's gevent loop

GRPC_TARGET = stack_config.serve_grpc_target
GRPC_METADATA = (("application", "ingest"),)
ACCEPTED = {"rest": 0, "grpc": 0}
_factory = TweetFactory(f"locust-{os.getpid()}-{int(time.time())}")


def batch_size() -> int:
    return random.choice((10, 25, 50, 100))


# --- REST -------------------------------------------------------------------------------
class RestUser(FastHttpUser):
    """POST /input through the Serve HTTP proxy (port 8000)."""

    weight = 3
    wait_time = between(0.01, 0.1)

    @task(8)
    def single(self) -> None:
        self._post(_factory.one(), "POST /input (1)")

    @task(2)
    def batch(self) -> None:
        self._post(_factory.many(batch_size()), "POST /input (batch)")

    def _post(self, body: Any, name: str) -> None:
        with self.client.post("/input", json=body, name=name, catch_response=True) as resp:
            if resp.status_code != 202:
                resp.failure(f"HTTP {resp.status_code}: {(resp.text or '')[:200]}")
                return
            try:
                reply = resp.json()
            except ValueError:
                resp.failure("202 without a JSON body")
                return
            ids = reply.get("ids") or ([reply["id"]] if reply.get("id") else [])
            expected = len(body) if isinstance(body, list) else 1
            if len(ids) != expected or reply.get("accepted") != expected:
                resp.failure(f"202 for {expected} tweets named {len(ids)} ids")
            ACCEPTED["rest"] += len(ids)


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
        self.env.events.request.fire(
            request_type="grpc",
            name=client_call_details.method,
            response_time=(time.perf_counter() - started) * 1000,
            response_length=length,
            response=response,
            context=None,
            exception=exception,
        )
        return response


class GrpcUser(User):
    """A User whose client is a gRPC stub; subclasses set ``stub_class``."""

    abstract = True
    stub_class: Any = None

    def __init__(self, environment: Any) -> None:
        super().__init__(environment)
        if self.stub_class is None:
            raise LocustError("GrpcUser needs a stub_class")
        target = (self.host or "").removeprefix("grpc://") if self.host else GRPC_TARGET
        if target.startswith("http"):  # --host is the REST one: use the configured gRPC port
            target = GRPC_TARGET
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


# --- accepted count -------------------------------------------------------------------
@events.test_stop.add_listener
def _write_accepted(environment: Any, **_: Any) -> None:
    directory = os.environ.get("LOADTEST_ACCEPTED_DIR")
    total = ACCEPTED["rest"] + ACCEPTED["grpc"]
    if directory:
        path = Path(directory) / f"accepted-{os.getpid()}.json"
        path.write_text(json.dumps({**ACCEPTED, "total": total}))
    print(f"accepted tweets: {total} (REST {ACCEPTED['rest']}, gRPC {ACCEPTED['grpc']})")
