"""Property-based fuzzing of the REST face (issue #11).

* offline: our strategies (``tests/support/fuzzing.py``) against the Starlette app over fake
  writers;
* live: the same strategies against ``POST /input`` on the running stack, with Kafka's end
  offsets and a private RabbitMQ tap queue checked to be unchanged by refused requests;
* live: schemathesis over the served ``/openapi.json`` (positive and negative cases).

``FUZZ_EXAMPLES`` scales ``max_examples`` (``make fuzz``); by default each test is short.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import requests
import schemathesis
from hypothesis import given
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance
from starlette.testclient import TestClient

from devstack.config import stack_config
from serve_app.ingest.rest import build_rest_app
from tests.support.fakes import make_ingest
from tests.support.fuzzing import (
    LIVE,
    OFFLINE,
    RUN_MARK,
    TALLY,
    WAIT_S,
    FuzzRequest,
    broker_outage,
    check_accepted,
    check_error_body,
    check_rejection,
    fuzz_settings,
    rejected_requests,
    valid_requests,
    wait_until_healthy,
    watched_brokers,
)

pytestmark = [pytest.mark.fuzz, pytest.mark.timeout(1800)]

BASE = stack_config.serve_http_url


async def _stats(latest: int) -> tuple[dict[str, Any], bool]:
    return {"redis": {"total": 0}, "valkey": {"total": 0}}, True


def send(client: httpx.Client | TestClient, request: FuzzRequest) -> tuple[int, bytes]:
    """Send one request (chunked, without Content-Length, if asked); status and body."""
    content: bytes | Iterator[bytes] = request.body
    if request.chunked:
        content = iter([request.body[i : i + 65_536] for i in range(0, len(request.body), 65_536)])
    response = client.request(
        request.method, request.path, content=content, headers=request.headers
    )
    return response.status_code, response.content


def _from_serve_proxy(status: int, body: bytes) -> bool:
    """A 5xx the app never sends: the proxy's own while Serve restarts (not JSON of ours)."""
    if status not in (502, 503, 504):
        return False
    try:
        document = json.loads(body)
    except ValueError:
        return True
    return not (isinstance(document, dict) and "ids" in document)


def send_live(client: httpx.Client, request: FuzzRequest) -> tuple[int, bytes]:
    """``send``, waiting out a restart: of Serve (connection refused, or the proxy's own 5xx)
    or of a broker (a 503 of ours while ``/health`` shows it down; counted apart)."""
    give_up = time.monotonic() + WAIT_S
    while True:
        try:
            status, body = send(client, request)
        except httpx.TransportError:
            status, body = 0, b""
        if status == 503 and not _from_serve_proxy(status, body) and broker_outage():
            TALLY.add("rest-live", "503 while a broker was down (retried)")
            wait_until_healthy()
        elif status and not _from_serve_proxy(status, body):
            return status, body
        if time.monotonic() > give_up:
            raise AssertionError(f"Serve did not answer for {WAIT_S} s ({status} {body!r})")
        time.sleep(5)


# --- offline --------------------------------------------------------------------------------


@pytest.fixture
def offline_api() -> Iterator[tuple[TestClient, Any, Any]]:
    ingest, kafka, rabbit = make_ingest()
    app = build_rest_app(ingest, ingest.publish, _stats)
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client, kafka, rabbit


@pytest.mark.offline
def test_offline_refusals_are_named_and_publish_nothing(offline_api) -> None:
    client, kafka, rabbit = offline_api

    @fuzz_settings(300)
    @given(request=rejected_requests(OFFLINE))
    def run(request: FuzzRequest) -> None:
        kafka.chunks.clear()
        rabbit.chunks.clear()
        status, body = send(client, request)
        TALLY.add("rest-offline", status)
        check_rejection(request, status, body)
        assert kafka.chunks == rabbit.chunks == [], f"{request.kind} published something"

    run()


@pytest.mark.offline
def test_offline_valid_requests_are_accepted_and_published(offline_api) -> None:
    client, kafka, rabbit = offline_api

    @fuzz_settings(150)
    @given(request=valid_requests(OFFLINE))
    def run(request: FuzzRequest) -> None:
        kafka.chunks.clear()
        rabbit.chunks.clear()
        status, body = send(client, request)
        TALLY.add("rest-offline", status)
        sent = check_accepted(request, status, body)
        ids = json.loads(body).get("ids") or [json.loads(body).get("id")]
        assert [t.id for t in rabbit.tweets()] == ids
        assert sorted(t.id for t in kafka.tweets()) == sorted(ids) and len(ids) == sent

    run()


# --- live: our strategies -------------------------------------------------------------------


@pytest.fixture
def live_http(devstack_serve) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=BASE, timeout=60) as client:
        yield client


def test_live_refusals_are_named_and_publish_nothing(live_http: httpx.Client) -> None:
    with watched_brokers() as reached_brokers:

        @fuzz_settings(150)
        @given(request=rejected_requests(LIVE))
        def run(request: FuzzRequest) -> None:
            status, body = send_live(live_http, request)
            TALLY.add("rest-live", status)
            check_rejection(request, status, body)

        run()
        ours = reached_brokers()
    assert ours == [], f"refused requests reached a broker: {ours[:5]}"


def test_live_broker_watch_sees_an_accepted_tweet(live_http: httpx.Client) -> None:
    """The check above can fail: one accepted tweet of this run is found in both brokers."""
    tweet = {"description": f"{RUN_MARK} seen", "country": "GT", "weather": LIVE.weathers[0]}
    with watched_brokers() as reached_brokers:
        request = FuzzRequest(
            "probe",
            json.dumps(tweet).encode(),
            {"content-type": "application/json"},
            frozenset([202]),
        )
        status, body = send_live(live_http, request)
        TALLY.add("rest-live", status)
        check_accepted(request, status, body)
        ours = reached_brokers()
    assert ours == [tweet["description"]] * 2  # Kafka and the RabbitMQ tap queue


def test_live_valid_requests_are_accepted(live_http: httpx.Client) -> None:
    @fuzz_settings(50)
    @given(request=valid_requests(LIVE))
    def run(request: FuzzRequest) -> None:
        status, body = send_live(live_http, request)
        TALLY.add("rest-live", status)
        check_accepted(request, status, body)

    run()


# --- live: schemathesis over /openapi.json ---------------------------------------------------


@pytest.fixture(scope="module")
def live_schema(devstack_serve) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_url(f"{BASE}/openapi.json", wait_for_schema=WAIT_S)


def call_live(case: schemathesis.Case) -> schemathesis.Response:
    """``case.call()``, waiting out a restart like :func:`send_live`."""
    give_up = time.monotonic() + WAIT_S
    while True:
        try:
            response = case.call(base_url=BASE, timeout=60)
        except requests.ConnectionError:
            response = None
        status, body = (response.status_code, response.content) if response else (0, b"")
        if status == 503 and not _from_serve_proxy(status, body) and broker_outage():
            TALLY.add("rest-schemathesis-live", "503 while a broker was down (retried)")
            wait_until_healthy()
        elif response is not None and not _from_serve_proxy(status, body):
            return response
        assert time.monotonic() < give_up, f"Serve did not answer for {WAIT_S} s"
        time.sleep(5)


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_live_openapi_operations(
    live_schema: schemathesis.BaseSchema, mode: GenerationMode
) -> None:
    """Cases of every operation in the served document: no 5xx, every 4xx named, responses
    as documented. (A schema-valid tweet may still be refused: an unknown country code.)"""

    @fuzz_settings(60)
    @given(case=live_schema.as_strategy(mode))
    def run(case: schemathesis.Case) -> None:
        response = call_live(case)
        TALLY.add(f"rest-schemathesis-{mode.value}-live", response.status_code)
        context = f"{case.method} {case.formatted_path} {case.body!r:.300}"
        assert response.status_code < 500, (
            f"{response.status_code} for {context}: {response.content[:500]!r}"
        )
        if 400 <= response.status_code < 500:
            check_error_body(response.status_code, response.content, context)
        case.validate_response(response, excluded_checks=[positive_data_acceptance])

    run()
