"""Application metrics (serve_app/model/metrics.py): what the cores count, over fakes.
tests/stack/test_metrics.py checks that the running stack exports them."""

from __future__ import annotations

import asyncio
import re

import grpc
import pytest
from starlette.testclient import TestClient

from devstack.config import app_settings
from serve_app.dashboard.core import DashboardCore
from serve_app.errors import PublishFailed
from serve_app.ingest.core import Coalescer, Ingest, accept
from serve_app.ingest.grpc import PublisherService
from serve_app.ingest.rest import build_rest_app
from serve_app.model import metrics
from serve_app.model.metrics import (
    ACCEPTED,
    BACKLOG,
    CHUNKS_PUBLISHED,
    DEAD_LETTERS,
    LATENCY_BUCKETS_S,
    PUBLISH_LATENCY,
    REJECTED,
    UNAVAILABLE,
    Metric,
)
from serve_app.model.schema import Tweet
from serve_app.pb.weather.v1 import weather_pb2
from tests.support.dashboard_fakes import FakeMonitor, FakeStore, fake_replicas
from tests.support.fakes import FakeGrpcContext, RecordingMetrics, make_ingest

settings = app_settings()

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


def test_metric_names_are_prometheus_names_and_unique() -> None:
    names = [m.name for m in metrics.ALL]
    assert len(names) == len(set(names))
    module_metrics = {v for v in vars(metrics).values() if isinstance(v, Metric)}
    assert module_metrics == set(metrics.ALL), "every Metric defined is in ALL"
    for metric in metrics.ALL:
        assert re.fullmatch(r"weather_[a-z_]+", metric.name), metric.name
        assert metric.description and metric.tag_keys
        assert not RAY_SERVE_TAGS & set(metric.tag_keys), "tags Ray Serve reserves"
    assert ACCEPTED.prometheus == "ray_weather_accepted_tweets_total"
    assert BACKLOG.prometheus == "ray_weather_broker_backlog_messages"
    assert PUBLISH_LATENCY.prometheus == "ray_weather_publish_latency_seconds"


UNITS = ("_tweets", "_messages", "_requests", "_seconds", "_restarts")
UNITLESS = {metrics.ADMISSION_REFUSING}
"""0/1 gauges: Prometheus gives a boolean no unit."""


def test_metric_names_end_in_their_unit() -> None:
    """Prometheus' convention: the unit last (Ray then adds ``_total`` to a counter)."""
    for metric in metrics.ALL:
        assert metric.name.endswith(UNITS) != (metric in UNITLESS), metric.name
        assert not metric.name.endswith("_total"), "Ray adds _total to counters"
        assert (metric.kind == "histogram") == bool(metric.boundaries), metric.name
    assert {m.kind for m in UNITLESS} == {"gauge"}


def test_latency_buckets_span_a_local_write_to_past_the_publish_timeout() -> None:
    """Increasing; the first below a write to brokers on this machine (a few ms), the last
    above the publish timeout, so a write that timed out still has a finite bucket; few
    enough that every Gateway replica's series stay cheap."""
    assert list(LATENCY_BUCKETS_S) == sorted(set(LATENCY_BUCKETS_S))
    assert 0 < LATENCY_BUCKETS_S[0] <= 0.001
    assert LATENCY_BUCKETS_S[-1] > settings.publish_timeout_s
    assert LATENCY_BUCKETS_S[-1] > type(settings).model_fields["publish_timeout_s"].default
    assert len(LATENCY_BUCKETS_S) <= 15
    assert PUBLISH_LATENCY.boundaries == LATENCY_BUCKETS_S


# --- what the cores count (fakes) -----------------------------------------------------------


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


def test_rest_503_without_a_named_broker_is_unknown() -> None:
    sink = RecordingMetrics()
    ingest, _, _ = make_ingest(metrics=sink)

    async def dead_writer(tweets: list[Tweet]) -> None:
        raise RuntimeError("replica died")

    client = TestClient(build_rest_app(ingest, dead_writer, _no_stats))
    assert client.post("/input", json=SEED).status_code == 503
    assert sink.count(UNAVAILABLE, face="rest", broker=metrics.UNKNOWN_BROKER) == 1


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


async def test_publish_latency_is_observed_once_per_write_with_its_outcome() -> None:
    """A write carries every request coalesced into it: one sample per write, in process;
    a refusal by admission control writes nothing and observes nothing."""
    sink = RecordingMetrics()
    ingest, _, rabbit = make_ingest(metrics=sink)
    coalescer = Coalescer(ingest.publish, max_tweets=1000, linger_s=0.01)
    tweets = [ingest.validate([{**SEED, "id": f"lat-{i}"}]) for i in range(3)]
    await asyncio.gather(*(coalescer.submit(accept(t)) for t in tweets))
    [confirmed] = sink.observed(PUBLISH_LATENCY, outcome="confirmed")
    assert 0 <= confirmed < 1
    rabbit.fail = "connection refused"
    with pytest.raises(PublishFailed):
        await ingest.publish(accept(tweets[0]))
    assert len(sink.observed(PUBLISH_LATENCY, outcome="failed")) == 1
    ingest.admission.check = _refuse  # type: ignore[method-assign]
    with pytest.raises(PublishFailed):
        await ingest.publish(accept(tweets[0]))
    assert len(sink.observed(PUBLISH_LATENCY, outcome="failed")) == 1
    assert len(sink.observed(PUBLISH_LATENCY, outcome="confirmed")) == 1


def _refuse() -> None:
    raise PublishFailed({"kafka": "backlog over its limit"})


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
