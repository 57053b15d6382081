"""Application metrics (serve_app/metrics.py): what the cores count, offline over fakes, and
that the running stack exports it on the Ray node's Prometheus endpoint."""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import Mapping

import aio_pika
import grpc
import httpx
import pytest
from aiokafka import AIOKafkaProducer
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

from devstack import ray_access
from devstack.config import stack_config
from serve_app import metrics
from serve_app.dashboard import DashboardCore
from serve_app.grpc_api import PublisherService
from serve_app.ingest import Ingest
from serve_app.metrics import (
    ACCEPTED,
    BACKLOG,
    CHUNKS_PUBLISHED,
    CONSUMER_TWEETS,
    DEAD_LETTERS,
    REJECTED,
    UNAVAILABLE,
    Metric,
)
from serve_app.pb.weather.v1 import weather_pb2
from serve_app.rest import build_rest_app
from serve_app.schema import Tweet
from serve_app.settings import settings
from serve_app.topology import declare_rabbit_topology, ensure_kafka_topics
from tests.dashboard_fakes import FakeMonitor, FakeStore, fake_replicas
from tests.fakes import FakeGrpcContext, RecordingMetrics, make_ingest

SEED = {"description": "Nublado en Tarawa", "country": "KI", "weather": "Nubloso"}
# Countries no other test sends, so this test's tweets are its own.
COUNTRIES = ("KI", "TV")
SCRAPE_WAIT_S = 120.0
"""Ray reports a worker's metrics to the node's exporter every few seconds (10 s default)."""
RAY_SERVE_TAGS = {"application", "deployment", "replica", "route"}


async def _no_stats(latest: int) -> tuple[dict, bool]:
    return {}, True


def _rest(ingest: Ingest) -> TestClient:
    return TestClient(build_rest_app(ingest, ingest.publish, _no_stats))


# --- the definitions ------------------------------------------------------------------------


@pytest.mark.offline
def test_metric_names_are_prometheus_names_and_unique() -> None:
    names = [m.name for m in metrics.ALL]
    assert len(names) == len(set(names))
    module_metrics = {v for v in vars(metrics).values() if isinstance(v, Metric)}
    assert module_metrics == set(metrics.ALL), "every Metric defined is in ALL"
    for metric in metrics.ALL:
        assert re.fullmatch(r"weather_[a-z_]+", metric.name), metric.name
        assert metric.description and metric.tag_keys
        assert not RAY_SERVE_TAGS & set(metric.tag_keys), "tags Ray Serve reserves"
    assert ACCEPTED.prometheus == "ray_weather_tweets_accepted_total"
    assert BACKLOG.prometheus == "ray_weather_broker_backlog"


# --- what the cores count (fakes) -----------------------------------------------------------


@pytest.mark.offline
def test_rest_counts_accepted_rejected_and_published_chunks() -> None:
    sink = RecordingMetrics()
    ingest, kafka, rabbit = make_ingest(metrics=sink)
    client = _rest(ingest)
    assert client.post("/input", json=SEED).status_code == 202
    batch = [SEED, {**SEED, "country": "TV"}, {**SEED, "id": "mine"}]
    assert client.post("/input", json=batch).status_code == 202
    refused = [
        client.post("/input", json={**SEED, "weather": "Granizo"}),
        client.post("/input", content=b"{", headers={"content-type": "application/json"}),
        client.post("/input", content=b"{}", headers={"content-type": "text/plain"}),
    ]
    assert [r.status_code for r in refused] == [422, 400, 415]
    assert client.get("/stats?latest=x").status_code == 400  # not a publish request

    assert sink.by_tag(ACCEPTED, "face") == {"rest": 4}
    assert sink.by_tag(REJECTED, "code") == {"422": 1, "400": 1, "415": 1}
    assert sink.by_tag(CHUNKS_PUBLISHED, "broker") == {
        "kafka": len(kafka.chunks),
        "rabbitmq": len(rabbit.chunks),
    }
    assert len(kafka.chunks) == 3  # KI; then KI and TV: one chunk per country
    assert not sink.by_tag(UNAVAILABLE, "broker")


@pytest.mark.offline
def test_rest_503_names_the_broker_that_did_not_confirm() -> None:
    sink = RecordingMetrics()
    ingest, _, rabbit = make_ingest(metrics=sink)
    rabbit.fail = "connection refused"
    assert _rest(ingest).post("/input", json=SEED).status_code == 503
    assert sink.count(UNAVAILABLE, face="rest", broker="rabbitmq") == 1
    assert sink.by_tag(UNAVAILABLE, "broker") == {"rabbitmq": 1}
    assert sink.by_tag(REJECTED, "code") == {"503": 1}
    assert sink.by_tag(CHUNKS_PUBLISHED, "broker") == {"kafka": 1}
    assert not sink.by_tag(ACCEPTED, "face")


@pytest.mark.offline
def test_rest_503_without_a_named_broker_is_unknown() -> None:
    sink = RecordingMetrics()
    ingest, _, _ = make_ingest(metrics=sink)

    async def dead_writer(tweets: list[Tweet]) -> None:
        raise RuntimeError("replica died")

    client = TestClient(build_rest_app(ingest, dead_writer, _no_stats))
    assert client.post("/input", json=SEED).status_code == 503
    assert sink.count(UNAVAILABLE, face="rest", broker=metrics.UNKNOWN_BROKER) == 1


@pytest.mark.offline
async def test_grpc_counts_by_face_and_code() -> None:
    sink = RecordingMetrics()
    ingest, kafka, _ = make_ingest(metrics=sink)
    api = PublisherService(ingest, ingest.publish)
    tweet = weather_pb2.Tweet(description="sol", country="TV", weather="Soleado")
    await api.Publish(tweet, FakeGrpcContext())
    await api.PublishBatch(weather_pb2.TweetBatch(tweets=[tweet, tweet]), FakeGrpcContext())
    await api.PublishBatch(weather_pb2.TweetBatch(), FakeGrpcContext())
    bad = FakeGrpcContext()
    await api.Publish(weather_pb2.Tweet(description="x", country="ZZ", weather="Soleado"), bad)
    assert bad.code == grpc.StatusCode.INVALID_ARGUMENT
    kafka.fail = "broker down"
    down = FakeGrpcContext()
    await api.Publish(tweet, down)
    assert down.code == grpc.StatusCode.UNAVAILABLE

    assert sink.by_tag(ACCEPTED, "face") == {"grpc": 3}
    assert sink.by_tag(REJECTED, "code") == {"INVALID_ARGUMENT": 2, "UNAVAILABLE": 1}
    assert sink.count(UNAVAILABLE, face="grpc", broker="kafka") == 1
    assert sink.by_tag(UNAVAILABLE, "face") == {"grpc": 1}


@pytest.mark.offline
async def test_dashboard_sample_exports_backlog_gauges_and_keeps_the_last_known() -> None:
    sink = RecordingMetrics()
    monitor = FakeMonitor(["redis", "valkey"])
    stores = {"redis": FakeStore(), "valkey": FakeStore()}
    core = DashboardCore(stores, monitor, fake_replicas, metrics=sink)
    await core.sample()
    assert sink.gauge(BACKLOG, broker="kafka") == monitor.lag
    assert sink.gauge(BACKLOG, broker="rabbitmq") == monitor.depth
    assert sink.gauge(DEAD_LETTERS, broker="kafka") == 1
    assert sink.gauge(DEAD_LETTERS, broker="rabbitmq") == 0
    monitor.kafka_down, monitor.depth = True, 7
    await core.sample()
    assert sink.gauge(BACKLOG, broker="kafka") == 3  # unknown now: the last reading stays
    assert sink.gauge(BACKLOG, broker="rabbitmq") == 7


# --- the running stack: Ray's Prometheus endpoint ---------------------------------------------


def metrics_endpoint() -> str:
    """The head node's metrics export address, as the Ray dashboard reports it."""
    summary = ray_access.dashboard_json("/nodes?view=summary", timeout=10)["data"]["summary"]
    node = summary[0]
    return f"http://{node['ip']}:{node['raylet']['metricsExportPort']}/metrics"


def scrape(endpoint: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Every sample of every ``weather_`` metric: series name -> [(labels, value)]."""
    text = httpx.get(endpoint, timeout=10).raise_for_status().text
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.startswith("ray_weather_"):
                samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


def total(samples: Mapping[str, list[tuple[dict[str, str], float]]], m: Metric, **tags: str):
    """Sum over every process (replica, actor) exporting the series with these tags."""
    series = samples.get(m.prometheus, [])
    return sum(v for labels, v in series if all(labels.get(k) == t for k, t in tags.items()))


def as_json(tweet_id: str, i: int) -> dict[str, str]:
    weather = settings.weathers[i % len(settings.weathers)]
    return {
        "id": tweet_id,
        "description": f"metrics {i}",
        "country": COUNTRIES[i % 2],
        "weather": weather,
    }


async def publish_poison(marker: bytes) -> None:
    """One undecodable message straight into each broker: the consumers dead-letter it."""
    await ensure_kafka_topics(settings)
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers, acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(settings.kafka_topic, b"not json " + marker, key=b"KI")
    finally:
        await producer.stop()
    connection = await aio_pika.connect(settings.rabbitmq_url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        exchange, _ = await declare_rabbit_topology(channel, settings)
        await exchange.publish(aio_pika.Message(b"not json " + marker), routing_key="")


async def test_counters_reach_rays_prometheus_endpoint(devstack_serve) -> None:
    endpoint = metrics_endpoint()
    before = scrape(endpoint)
    run = uuid.uuid4().hex[:12]
    tweets = [as_json(f"metrics-{run}-{i}", i) for i in range(6)]
    async with httpx.AsyncClient(base_url=stack_config.serve_http_url, timeout=30) as client:
        # One single, one batch, then all six again: the consumers see six duplicates.
        for body in (tweets[0], tweets[1:], tweets):
            response = await client.post("/input", json=body)
            assert response.status_code == 202, response.text
        refused = await client.post("/input", json={**tweets[0], "weather": "Granizo"})
        assert refused.status_code == 422, refused.text
    await publish_poison(run.encode())

    expected: dict[tuple[Metric, tuple[tuple[str, str], ...]], float] = {
        (ACCEPTED, (("face", "rest"),)): 12,
        (REJECTED, (("face", "rest"), ("code", "422"))): 1,
        (CHUNKS_PUBLISHED, (("broker", "kafka"),)): 2,  # KI and TV records at least
        (CHUNKS_PUBLISHED, (("broker", "rabbitmq"),)): 1,
    }
    for consumer in ("kafka", "rabbitmq"):
        for outcome, least in (("applied", 6), ("duplicate", 6), ("dead_lettered", 1)):
            expected[(CONSUMER_TWEETS, (("consumer", consumer), ("outcome", outcome)))] = least

    def missing(now: Mapping[str, list[tuple[dict[str, str], float]]]) -> list[str]:
        short = []
        for (metric, tags), least in expected.items():
            grown = total(now, metric, **dict(tags)) - total(before, metric, **dict(tags))
            if grown < least:
                short.append(f"{metric.prometheus}{dict(tags)}: +{grown:g}, expected >= {least}")
        for broker in ("kafka", "rabbitmq"):
            if not any(
                labels.get("broker") == broker for labels, _ in now.get(BACKLOG.prometheus, [])
            ):
                short.append(f"{BACKLOG.prometheus}{{broker={broker}}}: not exported")
        return short

    deadline = time.monotonic() + SCRAPE_WAIT_S
    while (short := missing(scrape(endpoint))) and time.monotonic() < deadline:
        await asyncio.sleep(1)
    assert not short, f"{endpoint} after {SCRAPE_WAIT_S:g} s:\n" + "\n".join(short)
