"""Property-based fuzzing of the gRPC face (issue #11): generated ``Tweet`` / ``TweetBatch``
messages, offline (``PublisherService`` over fake writers) and against the live port.

Refused calls end in INVALID_ARGUMENT naming the field or limit (never INTERNAL or UNKNOWN)
and publish nothing; valid calls are accepted. ``FUZZ_EXAMPLES`` scales ``max_examples``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import grpc
import pytest
from hypothesis import given

from devstack.config import stack_config
from serve_app.ingest.grpc import ID_PREFIX_METADATA, PublisherService
from serve_app.pb.weather.v1 import weather_pb2_grpc
from tests.support.fakes import FakeGrpcContext, make_ingest
from tests.support.fuzzing import (
    LIVE,
    OFFLINE,
    TALLY,
    WAIT_S,
    GrpcCall,
    broker_outage,
    check_invalid_argument,
    check_published_ids,
    fuzz_settings,
    rejected_calls,
    valid_calls,
    wait_until_healthy,
    watched_brokers,
)

pytestmark = [pytest.mark.fuzz, pytest.mark.timeout(1800)]

METADATA = (("application", "ingest"),)


def _ids(call: GrpcCall, response: object) -> list[str]:
    return [response.id] if call.method == "Publish" else list(response.ids)  # type: ignore[attr-defined]


# --- offline --------------------------------------------------------------------------------


@pytest.mark.offline
def test_offline_refused_calls_are_named_and_publish_nothing() -> None:
    ingest, kafka, rabbit = make_ingest()
    service = PublisherService(ingest, ingest.publish)

    @fuzz_settings(300)
    @given(call=rejected_calls(OFFLINE))
    def run(call: GrpcCall) -> None:
        context = FakeGrpcContext()
        response = asyncio.run(getattr(service, call.method)(call.message, context))
        TALLY.add("grpc-offline", context.code.name)
        check_invalid_argument(call, context.code, context.details)
        assert _ids(call, response) in ([], [""])
        assert kafka.chunks == rabbit.chunks == [], f"{call.kind} published something"

    run()


@pytest.mark.offline
def test_offline_valid_calls_are_accepted_and_published() -> None:
    ingest, kafka, rabbit = make_ingest()
    service = PublisherService(ingest, ingest.publish)

    @fuzz_settings(150)
    @given(call=valid_calls(OFFLINE))
    def run(call: GrpcCall) -> None:
        rabbit.chunks.clear()
        context = FakeGrpcContext()
        response = asyncio.run(getattr(service, call.method)(call.message, context))
        TALLY.add("grpc-offline", context.code.name)
        assert context.code == grpc.StatusCode.OK, context.details
        check_published_ids(call, _ids(call, response))
        assert [t.id for t in rabbit.tweets()] == _ids(call, response)

    run()


# --- live -----------------------------------------------------------------------------------


@pytest.fixture
def live_stub(devstack_serve) -> Iterator[weather_pb2_grpc.PublisherStub]:
    with grpc.insecure_channel(stack_config.serve_grpc_target) as channel:
        yield weather_pb2_grpc.PublisherStub(channel)


def call_live(
    stub: weather_pb2_grpc.PublisherStub, call: GrpcCall
) -> tuple[grpc.StatusCode, str, list[str]]:
    """Status code, details and ids of one call, waiting out a restart: of Serve (the
    transport's UNAVAILABLE) or of a broker (the app's, with the id prefix, while ``/health``
    shows a broker down; counted apart)."""
    give_up = time.monotonic() + WAIT_S
    while True:
        try:
            response = getattr(stub, call.method)(call.message, metadata=METADATA, timeout=60)
            return grpc.StatusCode.OK, "", _ids(call, response)
        except grpc.RpcError as exc:
            code, details = exc.code(), exc.details() or ""
            trailing = dict(exc.trailing_metadata() or ())
            ours = ID_PREFIX_METADATA in trailing  # else the transport's: Serve restarting
            if ours and code == grpc.StatusCode.UNAVAILABLE and broker_outage():
                TALLY.add("grpc-live", "UNAVAILABLE while a broker was down (retried)")
                wait_until_healthy()
            elif code != grpc.StatusCode.UNAVAILABLE or ours:
                return code, details, []
        assert time.monotonic() < give_up, f"Serve gRPC did not answer for {WAIT_S} s"
        time.sleep(5)


def test_live_refused_calls_are_named_and_publish_nothing(live_stub) -> None:
    with watched_brokers() as reached_brokers:

        @fuzz_settings(100)
        @given(call=rejected_calls(LIVE))
        def run(call: GrpcCall) -> None:
            code, details, ids = call_live(live_stub, call)
            TALLY.add("grpc-live", code.name)
            check_invalid_argument(call, code, details)
            assert ids in ([], [""])

        run()
        ours = reached_brokers()
    assert ours == [], f"refused calls reached a broker: {ours[:5]}"


def test_live_valid_calls_are_accepted(live_stub) -> None:
    @fuzz_settings(40)
    @given(call=valid_calls(LIVE))
    def run(call: GrpcCall) -> None:
        code, details, ids = call_live(live_stub, call)
        TALLY.add("grpc-live", code.name)
        assert code == grpc.StatusCode.OK, f"{call.kind}: {code} {details}"
        check_published_ids(call, ids)

    run()
