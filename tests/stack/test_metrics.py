"""Application metrics (serve_app/model/metrics.py) reach the Ray node's Prometheus endpoint
of the running stack. tests/unit/test_metrics.py checks what the cores count."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Mapping

import aio_pika
import httpx
from aiokafka import AIOKafkaProducer
from prometheus_client.parser import text_string_to_metric_families

from devstack import ray_access
from devstack.config import app_settings, stack_config
from serve_app.brokers.kafka import ensure_kafka_topics
from serve_app.brokers.rabbitmq import declare_rabbit_topology
from serve_app.model.metrics import (
    ACCEPTED,
    BACKLOG,
    CHUNKS_PUBLISHED,
    CONSUMER_TWEETS,
    FRESHNESS,
    PUBLISH_LATENCY,
    REJECTED,
    Metric,
)

settings = app_settings()

SEED = {"description": "Nublado en Tarawa", "country": "KI", "weather": "Nubloso"}
# Countries no other test sends, so this test's tweets are its own.
COUNTRIES = ("KI", "TV")
SCRAPE_WAIT_S = 120.0
"""Ray reports a worker's metrics to the node's exporter every few seconds (10 s default)."""
RAY_SERVE_TAGS = {"application", "deployment", "replica", "route"}
FRESH_S = 60.0
"""The stores' freshness right after this test's tweets were counted: well under a minute
(the gauge is set every second, and Ray exports it every few seconds)."""


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
    """Sum over every process (replica, actor) exporting the series with these tags (a
    histogram: its samples' count)."""
    name = f"{m.prometheus}_count" if m.kind == "histogram" else m.prometheus
    series = samples.get(name, [])
    return sum(v for labels, v in series if all(labels.get(k) == t for k, t in tags.items()))


def freshest(samples: Mapping[str, list[tuple[dict[str, str], float]]], store: str):
    """The smallest age any consumer of ``store`` exports (None: none exports one)."""
    ages = [v for labels, v in samples.get(FRESHNESS.prometheus, []) if labels["store"] == store]
    return min(ages, default=None)


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
        (PUBLISH_LATENCY, (("outcome", "confirmed"),)): 1,  # one per write, not per request
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
        for store in ("redis", "valkey"):
            age = freshest(now, store)
            if age is None or age > FRESH_S:
                short.append(
                    f"{FRESHNESS.prometheus}{{store={store}}}: {age}, expected <= {FRESH_S:g}"
                )
        return short

    deadline = time.monotonic() + SCRAPE_WAIT_S
    while (short := missing(scrape(endpoint))) and time.monotonic() < deadline:
        await asyncio.sleep(1)
    assert not short, f"{endpoint} after {SCRAPE_WAIT_S:g} s:\n" + "\n".join(short)
