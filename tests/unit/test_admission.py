"""Admission control from the brokers' backlogs: the Ray-free decision, the 503 it makes on
every face, ``/health`` and the gauge (no servers, no Ray)."""

from __future__ import annotations

import grpc
import pytest
from starlette.testclient import TestClient

from serve_app.errors import PublishFailed
from serve_app.ingest.core import Admission, AdmissionPolicy, BacklogLimit, Ingest, accept
from serve_app.ingest.grpc import PublisherService
from serve_app.ingest.rest import build_rest_app
from serve_app.model.codec import Chunk
from serve_app.model.metrics import ADMISSION_REFUSING
from serve_app.pb.weather.v1 import weather_pb2
from tests.support.fakes import LIMITS, RULES, FakeGrpcContext, FakeWriter, RecordingMetrics

SEED = {"description": "Está lloviendo", "country": "GT", "weather": "Lluvioso"}
MIB = 1 << 20


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def admission(clock: Clock, **policy: float) -> Admission:
    limits = {
        "kafka": BacklogLimit(max_bytes=100 * MIB, max_stall_s=3600),
        "rabbitmq": BacklogLimit(max_bytes=100 * MIB),
    }
    return Admission(AdmissionPolicy(limits, **policy), ("kafka", "rabbitmq"), clock)


def chunk(size: int) -> Chunk:
    return Chunk("GT", ("x",), b"x" * size)


def test_refuses_at_the_byte_budget_and_resumes_only_below_the_resume_ratio() -> None:
    control = admission(Clock(), resume_ratio=0.8)
    control.published("kafka", [chunk(1024)] * 4)  # mean message: 1 KiB
    control.record("kafka", 100 * 1024 - 1)
    assert control.refusals() == {}
    control.record("kafka", 100 * 1024)  # 100 MiB estimated
    assert f"102400 messages (~{100 * MIB} bytes)" in control.refusals()["kafka"]
    control.record("kafka", 81 * 1024)  # below the budget, above 80 %: still refusing
    assert "kafka" in control.refusals()
    control.record("kafka", 79 * 1024)
    assert control.refusals() == {}


def test_bytes_are_estimated_from_the_mean_message_this_replica_published() -> None:
    control = admission(Clock())
    control.record("rabbitmq", 50_000)  # 1 KiB assumed per message before any publish
    assert control.estimated_bytes("rabbitmq") == 50_000 * 1024
    assert control.refusals() == {}
    control.published("rabbitmq", [chunk(4096)])
    control.record("rabbitmq", 50_000)  # ~195 MiB with 4 KiB messages
    assert "rabbitmq" in control.refusals()
    assert control.estimated_bytes("kafka") == 0  # each broker learns its own size


def test_a_kafka_backlog_that_does_not_drain_is_refused_before_retention_can_age_it_out() -> None:
    clock = Clock()
    control = admission(clock)
    control.record("kafka", 10)
    control.record("rabbitmq", 5)
    clock.now += 3000
    control.record("kafka", 12)  # growing: the consumer shows no sign of life
    control.record("rabbitmq", 5)
    assert control.refusals() == {}
    clock.now += 600
    control.record("kafka", 12)
    control.record("rabbitmq", 5)  # RabbitMQ keeps messages until consumed: no age limit
    assert list(control.refusals()) == ["kafka"]
    assert "not drained for 3600 s" in control.refusals()["kafka"]
    clock.now += 1
    control.record("kafka", 11)  # draining again
    assert control.refusals() == {}


def test_an_unknown_backlog_is_refused_once_stale() -> None:
    clock = Clock()
    control = admission(clock, stale_after_s=30)
    clock.now += 29
    control.failed("rabbitmq", ConnectionError("refused"))
    assert control.refusals() == {}  # the replica's start counts as a reading
    clock.now += 2
    assert control.refusals() == {
        "kafka": "backlog unknown for 31 s (no reading)",
        "rabbitmq": "backlog unknown for 31 s (ConnectionError: refused)",
    }
    control.record("kafka", 0)
    control.record("rabbitmq", 0)
    assert control.refusals() == {}


def test_check_raises_the_503_naming_each_refusing_broker() -> None:
    control = admission(Clock())
    control.record("kafka", 10**9)
    with pytest.raises(PublishFailed) as caught:
        control.check()
    assert set(caught.value.reasons) == {"kafka"}


async def test_poll_reads_every_broker_and_exports_the_gauge() -> None:
    control = admission(Clock())
    metrics = RecordingMetrics()

    async def lag() -> int:
        return 10**9

    async def depth() -> int:
        raise TimeoutError

    await control.poll({"kafka": lag, "rabbitmq": depth}, metrics)
    assert metrics.gauge(ADMISSION_REFUSING, broker="kafka") == 1.0
    assert metrics.gauge(ADMISSION_REFUSING, broker="rabbitmq") == 0.0
    assert control.backlogs["rabbitmq"].error == "timed out"


def refusing_ingest() -> tuple[Ingest, FakeWriter, FakeWriter]:
    kafka, rabbit = FakeWriter("kafka", by_country=True), FakeWriter("rabbitmq", by_country=False)
    control = admission(Clock())
    control.record("kafka", 10**9)
    ingest = Ingest([kafka, rabbit], RULES, LIMITS, 8192, 1.0, admission=control)
    return ingest, kafka, rabbit


async def _stats(latest: int):
    return {}, True


def test_rest_answers_503_with_retry_after_and_ids_and_publishes_nothing() -> None:
    ingest, kafka, rabbit = refusing_ingest()
    client = TestClient(build_rest_app(ingest, ingest.publish, _stats))
    response = client.post("/input", json=[SEED, {**SEED, "id": "mine"}])
    assert response.status_code == 503
    assert response.headers["retry-after"] == str(LIMITS.retry_after_s)
    assert response.json()["ids"][1] == "mine"
    assert "backlog" in response.json()["brokers"]["kafka"]
    assert kafka.chunks == rabbit.chunks == []
    assert client.post("/input", json={**SEED, "country": "ZZ"}).status_code == 422  # still 4xx


def test_health_is_degraded_but_200_while_refusing() -> None:
    ingest, _, _ = refusing_ingest()
    health = TestClient(build_rest_app(ingest, ingest.publish, _stats)).get("/health")
    assert health.status_code == 200  # a readiness probe: the pod must keep answering 503s
    body = health.json()
    assert body["status"] == "degraded"
    assert body["admission"]["kafka"]["admitting"] is False
    assert body["admission"]["rabbitmq"]["admitting"] is True


async def test_grpc_answers_unavailable_with_the_id_prefix() -> None:
    ingest, kafka, _ = refusing_ingest()
    context = FakeGrpcContext()
    tweet = weather_pb2.Tweet(description="x", country="GT", weather="Soleado")
    await PublisherService(ingest, ingest.publish).Publish(tweet, context)
    assert context.code == grpc.StatusCode.UNAVAILABLE and "backlog" in context.details
    assert context.trailing and kafka.chunks == []


async def test_publish_teaches_admission_the_message_size() -> None:
    kafka, rabbit = FakeWriter("kafka", by_country=True), FakeWriter("rabbitmq", by_country=False)
    control = admission(Clock())
    ingest = Ingest([kafka, rabbit], RULES, LIMITS, 8192, 1.0, admission=control)
    await ingest.publish(accept(ingest.validate([SEED])))
    assert control.message_bytes("kafka") == len(kafka.chunks[0].body)


def test_the_app_runs_the_background_poller_for_its_lifetime() -> None:
    ingest, _, _ = refusing_ingest()
    runs: list[str] = []

    async def poller() -> None:
        runs.append("started")

    with TestClient(build_rest_app(ingest, ingest.publish, _stats, background=poller)):
        pass
    assert runs == ["started"]
