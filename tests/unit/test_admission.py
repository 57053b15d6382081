"""Admission control from what the brokers and stores measure and the limits they apply: the
Ray-free decision, the readers' pure parts, the 503 it makes on every face, ``/health`` and
the gauge (no servers, no Ray)."""

from __future__ import annotations

from types import SimpleNamespace

import grpc
import httpx
import pytest
from aiokafka import TopicPartition
from starlette.testclient import TestClient
from weather_client.verify import backlog

from serve_app.brokers.kafka import (
    config_values,
    log_sizes_of,
    partition_backlog,
    retention_limits,
    unconsumed_bytes,
)
from serve_app.brokers.rabbitmq import RabbitProbe, management_urls, queue_backlog, queue_limits
from serve_app.errors import PublishFailed
from serve_app.ingest.core import (
    Admission,
    AdmissionPolicy,
    BacklogLimit,
    Ingest,
    backlog_refusal,
    store_refusal,
)
from serve_app.ingest.grpc import PublisherService
from serve_app.ingest.rest import build_rest_app
from serve_app.model.backlog import BacklogReading, BrokerLimits, PartBacklog, StoreMemory
from serve_app.model.metrics import ADMISSION_REFUSING
from serve_app.pb.weather.v1 import weather_pb2
from serve_app.settings import Settings
from tests.support.fakes import LIMITS, RULES, FakeGrpcContext, FakeWriter, RecordingMetrics

SEED = {"description": "Está lloviendo", "country": "GT", "weather": "Lluvioso"}
MIB = 1 << 20
GIB = 1 << 30
DAY_S = 86_400.0
KAFKA_LIMITS = BrokerLimits(part_bytes=GIB - 128 * MIB, age_s=DAY_S)
"""What the local Kafka applies to the tweet topic: 1 GiB less a 128 MiB segment, 24 h."""


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def policy(**overrides: float) -> AdmissionPolicy:
    return AdmissionPolicy(
        limits={"kafka": BacklogLimit(384 * MIB), "rabbitmq": BacklogLimit(384 * MIB)},
        stores={"redis": "kafka", "valkey": "rabbitmq"},
        **overrides,
    )


def admission(clock: Clock | None = None, **overrides: float) -> Admission:
    return Admission(policy(**overrides), ("kafka", "rabbitmq"), clock or Clock())


def kafka_reading(*parts: PartBacklog, limits: BrokerLimits = KAFKA_LIMITS) -> BacklogReading:
    return BacklogReading(parts, limits)


def part(messages: int, size: int, age_s: float | None = 1.0, name: str = "t/0") -> PartBacklog:
    return PartBacklog(name, messages, size, age_s if messages else None)


def queue(messages: int, size: int) -> BacklogReading:
    return BacklogReading((part(messages, size, None, "weather-tweets"),), BrokerLimits())


def record(offset: int, value_bytes: int, timestamp_s: float) -> SimpleNamespace:
    """What the probe reads of a Kafka record (aiokafka's ConsumerRecord fields)."""
    return SimpleNamespace(
        offset=offset,
        timestamp=int(timestamp_s * 1000),
        serialized_key_size=2,
        serialized_value_size=value_bytes,
    )


# --- the decision -----------------------------------------------------------------------------


def test_a_partition_refuses_at_the_share_of_the_retention_bytes_the_broker_applies() -> None:
    half = KAFKA_LIMITS.part_bytes // 2
    assert backlog_refusal(kafka_reading(part(10, half - 1)), BacklogLimit(GIB), 0.5) == ""
    why = backlog_refusal(kafka_reading(part(10, half)), BacklogLimit(GIB), 0.5)
    assert f"t/0 holds {half} unconsumed bytes, 50% or more of the {KAFKA_LIMITS.part_bytes}" in why


def test_the_topic_refuses_at_its_volume_budget_whatever_the_partitions_hold() -> None:
    parts = [part(10, 100 * MIB, name=f"t/{i}") for i in range(4)]
    assert backlog_refusal(kafka_reading(*parts), BacklogLimit(401 * MIB), 0.5) == ""
    why = backlog_refusal(kafka_reading(*parts), BacklogLimit(400 * MIB), 0.5)
    assert "reach the volume budget" in why


def test_the_oldest_unconsumed_record_refuses_at_the_share_of_the_retention_age() -> None:
    young, old = part(5, 1000, age_s=DAY_S / 2 - 1), part(5, 1000, age_s=DAY_S / 2)
    assert backlog_refusal(kafka_reading(young), BacklogLimit(GIB), 0.5) == ""
    why = backlog_refusal(kafka_reading(old), BacklogLimit(GIB), 0.5)
    assert "oldest unconsumed record of t/0 is 43200 s old" in why
    assert backlog_refusal(kafka_reading(part(0, 0)), BacklogLimit(GIB), 0.5) == ""


def test_a_thousand_tweet_array_burst_after_a_day_of_single_tweets_is_refused() -> None:
    """A day of single tweets (300-byte records) and then 2,000 records of 1,000 tweets of one
    country (250 KB each, one partition) that the consumer has not read: 500 MB unconsumed.
    The mean message size a replica published (what admission used to multiply the lag by)
    reads about 1.8 MB; the broker's log and the records at both ends of the unread range
    read what is there."""
    singles, arrays, single_bytes, array_bytes = 864_000, 2_000, 300, 250_000
    log_bytes = singles * single_bytes + arrays * array_bytes
    replica_mean = log_bytes / (singles + arrays)
    assert arrays * replica_mean < 2 * 10**6  # the old estimate: far below any limit
    start, end = 0, singles + arrays
    now = 1_000_000.0
    oldest, newest = record(singles, array_bytes, now - 600), record(end - 1, array_bytes, now)
    reading = partition_backlog(
        TopicPartition("t", 0), (log_bytes, start, end, singles), oldest, newest, now
    )
    assert reading.messages == arrays
    assert reading.unconsumed_bytes >= arrays * array_bytes
    why = backlog_refusal(kafka_reading(reading), BacklogLimit(GIB), 0.5)
    assert "t/0 holds" in why and "unconsumed bytes" in why


def test_unconsumed_bytes_never_exceed_the_log_and_count_at_least_the_log_mean() -> None:
    assert unconsumed_bytes(1000, 0, 10, 10, []) == 0
    assert unconsumed_bytes(1000, 0, 10, 5, [20]) == 500  # the log's mean (100) wins
    assert unconsumed_bytes(1000, 0, 10, 5, [400]) == 1000  # capped at the whole log
    assert unconsumed_bytes(1000, 0, 10, 8, [300]) == 600


def test_a_gateway_replica_replaced_while_refusing_refuses_at_once() -> None:
    """A stalled consumer: the oldest unconsumed record is 13 h old (retention 24 h). The
    replica that saw it happen refuses, and so does the one that replaces it (autoscaling, a
    redeploy, a lost node), from its first reading: nothing it decides on is its own memory."""
    stalled = kafka_reading(part(40, 4 * MIB, age_s=13 * 3600))
    old_replica = admission()
    old_replica.record("kafka", stalled)
    assert "kafka" in old_replica.refusals()
    new_replica = admission()
    new_replica.record("kafka", stalled)
    assert new_replica.refusals() == old_replica.refusals()


def test_retention_lowered_on_the_broker_is_obeyed_from_the_next_reading() -> None:
    """An operator lowers the topic's retention.ms to 60 s: a 40 s old unread record was far
    from the 24 h the settings once assumed, and is now near deletion."""
    control = admission()
    backlog = part(12, 5000, age_s=40)
    control.record("kafka", kafka_reading(backlog))
    assert control.refusals() == {}
    lowered = retention_limits({"retention.ms": "60000", "retention.bytes": "-1"})
    control.record("kafka", kafka_reading(backlog, limits=lowered))
    assert "40 s old, 50% or more of the 60 s the broker keeps it" in control.refusals()["kafka"]


def test_retention_limits_are_read_from_the_topic_configuration() -> None:
    configs = {"retention.ms": "86400000", "retention.bytes": str(GIB)}
    configs |= {"segment.bytes": str(128 * MIB), "cleanup.policy": "delete"}
    assert retention_limits(configs) == KAFKA_LIMITS
    assert retention_limits({"retention.ms": "-1", "retention.bytes": "-1"}) == BrokerLimits()
    assert retention_limits({**configs, "cleanup.policy": "compact"}) == BrokerLimits()
    small = {"retention.bytes": str(64 * MIB), "segment.bytes": str(128 * MIB)}
    assert retention_limits(small).part_bytes == 0  # anything unread may go


def test_describe_configs_and_log_dirs_answers_are_parsed() -> None:
    entry = ("retention.ms", "60000", False, 1, False, [])
    described = SimpleNamespace(resources=[(0, None, 2, "t", [entry, ("x", None, 0, 5, 0, [])])])
    assert config_values(described) == {"retention.ms": "60000"}
    leader = SimpleNamespace(results=[(0, "/d1", [("t", [(0, 500, 0, False), (1, 70, 0, False)])])])
    follower = SimpleNamespace(results=[(0, "/d", [("t", [(0, 480, 0, False), (0, 9, 0, True)])])])
    other = SimpleNamespace(results=[(0, "/d", [("u", [(0, 10**9, 0, False)])])])
    assert log_sizes_of([leader, follower, other], "t") == {0: 500, 1: 70}


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
    control.record("kafka", kafka_reading(part(0, 0)))
    control.record("rabbitmq", queue(0, 0))
    assert control.refusals() == {}


# --- RabbitMQ ---------------------------------------------------------------------------------


QUORUM = {
    "name": "weather-tweets",
    "type": "quorum",
    "messages": 120,
    "message_bytes": 3 * MIB,
    "arguments": {"x-queue-type": "quorum", "x-max-length-bytes": 8 * MIB},
    "effective_policy_definition": {"max-length-bytes": 4 * MIB, "max-length": 1000},
}


def test_a_queue_reading_takes_the_smaller_of_its_arguments_and_its_policy() -> None:
    reading = queue_backlog(QUORUM, 0.0)
    assert reading.messages == 120 and reading.unconsumed_bytes == 3 * MIB
    assert reading.limits == BrokerLimits(
        part_bytes=4 * MIB, part_messages=1000, ages_measured=False
    )
    why = backlog_refusal(reading, BacklogLimit(GIB), 0.5)
    assert f"weather-tweets holds {3 * MIB} unconsumed bytes" in why
    assert backlog_refusal(queue_backlog(QUORUM, 0.0), BacklogLimit(GIB), 0.8) == ""


def test_a_quorum_queue_with_a_message_ttl_is_refused_since_its_head_age_is_unknown() -> None:
    ttl = {**QUORUM, "arguments": {"x-message-ttl": 60_000}, "effective_policy_definition": {}}
    why = backlog_refusal(queue_backlog(ttl, 0.0), BacklogLimit(GIB), 0.5)
    assert "deletes messages older than 60 s and cannot tell how old its oldest one is" in why
    assert backlog_refusal(queue_backlog({**ttl, "messages": 0}, 0.0), BacklogLimit(GIB), 0.5) == ""


def test_a_classic_queue_tells_its_head_message_age() -> None:
    classic = {"name": "q", "messages": 3, "message_bytes": 300, "head_message_timestamp": 100}
    classic |= {"arguments": {"x-message-ttl": 60_000}}
    reading = queue_backlog(classic, 140.0)
    assert reading.oldest_age_s == 40.0 and queue_limits(classic).ages_measured
    assert "40 s old" in backlog_refusal(reading, BacklogLimit(GIB), 0.5)


def test_the_management_api_is_on_the_rabbitmq_host_unless_set() -> None:
    """On Kubernetes RABBITMQ_HOST is the Service: its management port needs no setting."""
    assert management_urls(Settings(rabbitmq_host="rabbitmq")) == ["http://rabbitmq:15672"]
    cluster = Settings(rabbitmq_management_url="http://a:15672/, http://b:15682")
    assert management_urls(cluster) == ["http://a:15672", "http://b:15682"]


async def test_the_queue_is_read_from_the_first_node_that_answers() -> None:
    def node(request: httpx.Request) -> httpx.Response:
        if request.url.host == "a":
            raise httpx.ConnectError("refused", request=request)
        assert request.url.raw_path == b"/api/queues/%2F/weather-tweets"
        return httpx.Response(200, json=QUORUM)

    cluster = Settings(rabbitmq_management_url="http://a:15672,http://b:15682")
    async with RabbitProbe(cluster) as probe:
        probe._management = httpx.AsyncClient(transport=httpx.MockTransport(node))
        assert (await probe.backlog()).messages == 120
    async with RabbitProbe(
        cluster.model_copy(update={"rabbitmq_management_url": "http://a:1"})
    ) as probe:
        probe._management = httpx.AsyncClient(transport=httpx.MockTransport(node))
        with pytest.raises(ConnectionError, match="no management API answered .http://a:1: "):
            await probe.backlog()


# --- store memory -----------------------------------------------------------------------------


def test_a_store_near_its_maxmemory_refuses_counting_what_its_broker_still_holds() -> None:
    control = admission()
    control.record("kafka", kafka_reading(part(0, 0)))
    control.record_memory("redis", StoreMemory(used_bytes=790, max_bytes=1000))
    assert control.refusals() == {}
    control.record_memory("redis", StoreMemory(used_bytes=800, max_bytes=1000))
    assert "80% or more of its maxmemory of 1000 bytes" in control.refusals()["redis"]
    control.record_memory("redis", StoreMemory(used_bytes=700, max_bytes=1000))
    control.record("kafka", kafka_reading(part(3, 100)))  # still to be written to Redis
    assert "with 150 more to come" in control.refusals()["redis"]  # 1.5 store bytes each
    assert "valkey" not in control.refusals()


def test_a_store_without_maxmemory_and_an_unreadable_store_keep_their_last_reading() -> None:
    assert store_refusal(StoreMemory(10**12, 0), 10**9, 0.8) == ""
    control = admission()
    control.record_memory("valkey", StoreMemory(used_bytes=900, max_bytes=1000))
    control.failed("valkey", ConnectionError("refused"))
    assert "valkey" in control.refusals()  # nothing can fill it while down, nothing empties it
    assert control.report()["valkey"]["read_error"] == "ConnectionError: refused"


def test_check_raises_the_503_naming_each_refusing_broker_or_store() -> None:
    control = admission()
    control.record("kafka", kafka_reading(part(10, GIB)))
    control.record_memory("valkey", StoreMemory(1000, 1000))
    with pytest.raises(PublishFailed) as caught:
        control.check()
    assert set(caught.value.reasons) == {"kafka", "valkey"}


async def test_poll_reads_every_broker_and_store_and_exports_the_gauge() -> None:
    control = admission()
    metrics = RecordingMetrics()

    async def backlog() -> BacklogReading:
        return kafka_reading(part(10, GIB))

    async def unreachable() -> BacklogReading:
        raise TimeoutError

    async def memory() -> StoreMemory:
        return StoreMemory(999, 1000)

    readers = {"kafka": backlog, "rabbitmq": unreachable, "redis": memory, "valkey": memory}
    await control.poll(readers, metrics)
    assert metrics.gauge(ADMISSION_REFUSING, broker="kafka") == 1.0
    assert metrics.gauge(ADMISSION_REFUSING, broker="rabbitmq") == 0.0
    assert metrics.gauge(ADMISSION_REFUSING, broker="redis") == 1.0
    assert control.backlogs["rabbitmq"].error == "timed out"


# --- the faces --------------------------------------------------------------------------------


def refusing_ingest() -> tuple[Ingest, FakeWriter, FakeWriter]:
    kafka, rabbit = FakeWriter("kafka", by_country=True), FakeWriter("rabbitmq", by_country=False)
    control = admission()
    control.record_memory("redis", StoreMemory(used_bytes=95, max_bytes=100))
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
    assert "maxmemory" in response.json()["brokers"]["redis"]
    assert kafka.chunks == rabbit.chunks == []
    assert client.post("/input", json={**SEED, "country": "ZZ"}).status_code == 422  # still 4xx


def test_health_is_degraded_but_200_while_refusing_and_says_why() -> None:
    ingest, _, _ = refusing_ingest()
    ingest.admission.record("kafka", kafka_reading(part(7, 2048, age_s=12.5)))
    health = TestClient(build_rest_app(ingest, ingest.publish, _stats)).get("/health")
    assert health.status_code == 200  # a readiness probe: the pod must keep answering 503s
    body = health.json()
    assert body["status"] == "degraded"
    assert body["admission"]["redis"]["admitting"] is False
    assert body["admission"]["redis"]["used_memory"] == 95
    assert body["admission"]["redis"]["pending_bytes"] == 2048
    kafka = body["admission"]["kafka"]
    assert kafka["admitting"] is True and kafka["unconsumed_bytes"] == 2048
    assert kafka["oldest_unconsumed_age_s"] == 12.5
    assert kafka["limits"]["age_s"] == DAY_S


async def test_grpc_answers_unavailable_with_the_id_prefix() -> None:
    ingest, kafka, _ = refusing_ingest()
    context = FakeGrpcContext()
    tweet = weather_pb2.Tweet(description="x", country="GT", weather="Soleado")
    await PublisherService(ingest, ingest.publish).Publish(tweet, context)
    assert context.code == grpc.StatusCode.UNAVAILABLE and "maxmemory" in context.details
    assert context.trailing and kafka.chunks == []


def test_the_app_runs_the_background_poller_for_its_lifetime() -> None:
    ingest, _, _ = refusing_ingest()
    runs: list[str] = []

    async def poller() -> None:
        runs.append("started")

    with TestClient(build_rest_app(ingest, ingest.publish, _stats, background=poller)):
        pass
    assert runs == ["started"]


def test_weather_verify_reads_the_brokers_backlogs_and_not_the_stores() -> None:
    """``weather verify`` waits for every backlog to drain: a store has none to wait for."""
    ingest, _, _ = refusing_ingest()
    ingest.admission.record("kafka", kafka_reading(part(7, 2048)))
    health = TestClient(build_rest_app(ingest, ingest.publish, _stats)).get("/health").json()
    assert backlog(health) == {"kafka": 7, "rabbitmq": None}
