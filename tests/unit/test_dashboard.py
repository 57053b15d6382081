"""Offline tests of the dashboard core, its Starlette app, the monitor's arithmetic and
error entries, the Serve replica-count adapter and the Swagger UI routes (no server, no Ray
cluster: fakes stand in for the stores, the monitor and ``serve.status``)."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import threading
from datetime import UTC, datetime
from typing import Any

import pytest
import redis.asyncio as aioredis
from aiokafka.structs import OffsetAndMetadata
from starlette.applications import Starlette
from starlette.routing import Mount
from starlette.testclient import TestClient

from serve_app.brokers.kafka import partition_lag as _partition_lag
from serve_app.dashboard.core import (
    DashboardCore,
    build_dashboard_app,
    freshness_s,
    ingest_rate,
)
from serve_app.dashboard.sources import Monitor
from serve_app.ingest.docs import docs_routes
from serve_app.settings import Settings
from serve_app.store.client import StoreProbe
from tests.support.dashboard_fakes import FakeClock, FakeMonitor, FakeStore, fake_replicas

STORES = ["redis", "valkey"]


def tweet(n: int, country: str = "AQ", weather: str = "Soleado", at: float = 0.0) -> dict:
    return {
        "id": f"t-{n}",
        "description": f"tweet {n} <b>not bold</b>",
        "country": country,
        "weather": weather,
        "accepted_at": datetime.fromtimestamp(at, UTC).isoformat(),
    }


def make_core(**kwargs: Any) -> tuple[DashboardCore, dict[str, FakeStore], FakeClock]:
    stores = {name: FakeStore() for name in STORES}
    clock = FakeClock()
    core = DashboardCore(
        stores,
        FakeMonitor(STORES),
        fake_replicas,
        weathers=("Lluvioso", "Nubloso", "Soleado"),
        clock=clock,
        **kwargs,
    )
    return core, stores, clock


# --- arithmetic -----------------------------------------------------------------------------


def test_ingest_rate_is_growth_over_elapsed_time() -> None:
    assert ingest_rate(100, 130, 10.0, 12.0) == 15.0
    assert ingest_rate(100, 100, 10.0, 11.0) == 0.0


@pytest.mark.parametrize(
    ("before", "after", "t0", "t1"),
    [(None, 5, 0.0, 1.0), (5, None, 0.0, 1.0), (5, 9, 1.0, 1.0), (50, 3, 0.0, 1.0)],
    ids=["no-previous", "store-down", "no-time-passed", "store-reset"],
)
def test_ingest_rate_unknown(before: int | None, after: int | None, t0: float, t1: float) -> None:
    assert ingest_rate(before, after, t0, t1) is None


def test_freshness_only_when_the_total_grew() -> None:
    latest = [tweet(2, at=95.5), tweet(1, at=90.0)]
    assert freshness_s(100.0, True, latest) == 4.5
    assert freshness_s(100.0, False, latest) is None
    assert freshness_s(100.0, True, []) is None
    assert freshness_s(100.0, True, [{"accepted_at": "yesterday"}]) is None
    assert freshness_s(100.0, True, [tweet(3, at=101.0)]) == 0.0  # clock skew never negative


@pytest.mark.parametrize(
    ("end", "start", "committed", "lag"),
    [
        (10, 0, None, 10),
        (10, 0, OffsetAndMetadata(4, ""), 6),
        (10, 0, OffsetAndMetadata(-1, ""), 10),
        (10, 6, OffsetAndMetadata(2, ""), 4),
        (10, 0, OffsetAndMetadata(12, ""), 0),
    ],
    ids=["never-committed", "committed", "no-offset", "below-retention", "ahead-never-negative"],
)
def test_partition_lag(end: int, start: int, committed: Any, lag: int) -> None:
    assert _partition_lag(end, start, committed) == lag


# --- core -----------------------------------------------------------------------------------


async def test_snapshot_has_both_stores_side_by_side() -> None:
    core, stores, clock = make_core()
    stores["redis"].record([tweet(1, "AQ", "Soleado"), tweet(2, "BV", "Lluvioso")])
    stores["valkey"].record([tweet(1, "AQ", "Soleado")])
    snap = await core.sample()
    redis, valkey = snap["stores"]["redis"], snap["stores"]["valkey"]
    assert (redis["via"], valkey["via"]) == ("Kafka", "RabbitMQ")
    assert redis["total"] == 2 and valkey["total"] == 1
    assert redis["by_country"] == {"AQ": 1, "BV": 1}
    assert redis["by_weather"] == {"Lluvioso": 1, "Soleado": 1}
    assert redis["by_country_weather"] == {"AQ:Soleado": 1, "BV:Lluvioso": 1}
    assert [t["id"] for t in redis["latest"]] == ["t-2", "t-1"]
    assert redis["health"] == {"ok": True, "detail": "ok"}
    assert (redis["used_memory"], redis["ops_per_sec"]) == (1_048_576, 42)
    assert snap["brokers"]["kafka"]["lag"] == 3
    assert snap["brokers"]["rabbitmq"] == {
        "health": {"ok": True, "detail": "ok"},
        "depth": 2,
        "dead_letters": 0,
    }
    assert set(snap["health"]) == {"kafka", "rabbitmq", "redis", "valkey"}
    assert snap["replicas"]["deployments"]["ingress"] == {"Ingress": 2}
    assert snap["generated_at"] == clock.now
    json.dumps(snap)  # the snapshot goes over the wire as JSON


async def test_latest_is_capped_at_ten() -> None:
    core, stores, _ = make_core()
    stores["redis"].record([tweet(i) for i in range(25)])
    snap = await core.sample()
    assert [t["id"] for t in snap["stores"]["redis"]["latest"]] == [
        f"t-{i}" for i in range(24, 14, -1)
    ]


async def test_rate_and_freshness_over_the_history() -> None:
    core, stores, clock = make_core()
    await core.sample()  # empty stores at t0
    clock.now += 2.0
    stores["redis"].record([tweet(i, at=clock.now - 0.25) for i in range(10)])
    stores["valkey"].record([tweet(i, at=clock.now - 0.5) for i in range(4)])
    await core.sample()
    clock.now += 1.0  # nothing new: rate 0, no freshness point
    snap = await core.sample()
    history = snap["history"]
    assert history["at"] == [clock.now - 3.0, clock.now - 1.0, clock.now]
    assert history["rate"] == {"redis": [None, 5.0, 0.0], "valkey": [None, 2.0, 0.0]}
    assert history["freshness"] == {"redis": [None, 0.25, None], "valkey": [None, 0.5, None]}


async def test_history_keeps_only_the_last_window() -> None:
    core, stores, clock = make_core(interval_s=1.0, history_s=5.0)
    for i in range(12):
        stores["redis"].record([tweet(i)])
        clock.now += 1.0
        await core.sample()
    history = core.snapshot()["history"]
    assert len(history["at"]) == 5
    assert history["at"][-1] == clock.now
    assert history["rate"]["redis"] == [1.0] * 5


async def test_failing_and_hanging_sources_become_error_entries() -> None:
    core, stores, _ = make_core(timeout_s=0.05)
    stores["redis"].error = ConnectionError("Connection refused")
    stores["valkey"].blocked = True
    core.monitor.kafka_down = True  # type: ignore[attr-defined]

    async def replicas_fail() -> dict[str, dict[str, int]]:
        raise RuntimeError("Serve controller unreachable")

    core.replicas = replicas_fail
    snap = await core.sample()
    assert snap["stores"]["redis"]["total"] is None
    assert "Connection refused" in snap["stores"]["redis"]["error"]
    assert "no answer within" in snap["stores"]["valkey"]["error"]
    assert snap["health"]["kafka"]["ok"] is False
    assert snap["brokers"]["kafka"]["lag"] is None
    assert snap["replicas"] == {
        "deployments": {},
        "error": "RuntimeError: Serve controller unreachable",
    }
    assert snap["history"]["rate"]["redis"] == [None]


async def test_next_snapshot_waits_for_a_newer_sample() -> None:
    core, _, _ = make_core()
    with pytest.raises(TimeoutError):
        await core.next_snapshot(0, timeout_s=0.01)
    await core.sample()
    sequence, snap = await core.next_snapshot(0, timeout_s=1.0)
    assert sequence == 1 and snap is core.snapshot()


# --- monitor error entries ----------------------------------------------------------------


def closed_port() -> int:
    """A local port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def test_monitor_reports_down_brokers_and_store_without_raising() -> None:
    port = closed_port()
    settings = Settings(
        kafka_bootstrap_servers=f"127.0.0.1:{port}", rabbitmq_port=port, redis_port=port
    )
    client = aioredis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=1)
    monitor = Monitor(settings, {"redis": client}, timeout_s=5.0)
    try:
        reading = await monitor.read()
    finally:
        await monitor.close()
    assert reading["kafka"]["health"]["ok"] is False and reading["kafka"]["lag"] is None
    assert reading["rabbitmq"]["health"]["ok"] is False and reading["rabbitmq"]["depth"] is None
    store = reading["stores"]["redis"]
    assert store["health"]["ok"] is False and store["used_memory"] is None
    assert all(r["health"]["detail"] for r in (reading["kafka"], reading["rabbitmq"], store))


async def test_store_probe_reads_memory_and_ops() -> None:
    class FakeRedis:
        async def ping(self) -> bool:
            return True

        async def info(self, section: str) -> dict[str, Any]:
            return {"memory": {"used_memory": 2048}, "stats": {"instantaneous_ops_per_sec": 7}}[
                section
            ]

    reading = await StoreProbe(FakeRedis()).read()  # type: ignore[arg-type]
    assert reading == {
        "health": {"ok": True, "detail": "ok"},
        "used_memory": 2048,
        "ops_per_sec": 7,
    }


# --- Starlette app -----------------------------------------------------------------------


def page_urls(html: str) -> list[str]:
    return re.findall(r'(?:src|href)="([^"]+)"', html)


def test_page_uses_only_relative_urls_that_resolve_under_a_prefix() -> None:
    core, _, _ = make_core()
    app = Starlette(
        routes=[Mount("/dashboard", build_dashboard_app(core, sample_in_background=False))]
    )
    with TestClient(app) as client:
        redirect = client.get("/dashboard", follow_redirects=False)
        assert redirect.status_code in (301, 307, 308)
        assert redirect.headers["location"].endswith("/dashboard/")
        page = client.get("/dashboard/")
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]
        urls = page_urls(page.text)
        assert {
            "static/dashboard.css",
            "static/dashboard.js",
            "vendor/plotly/plotly.min.js",
        } <= set(urls)
        for url in urls:
            assert not url.startswith(("/", "http:", "https:", "//")), url
            assert client.get(f"/dashboard/{url}").status_code == 200, url
        script = client.get("/dashboard/static/dashboard.js").text
        for used in re.findall(r'(?:fetch|EventSource)\("([^"]+)"', script):
            assert not used.startswith("/"), used


def test_snapshot_route_and_starlette_errors() -> None:
    core, stores, _ = make_core()
    stores["valkey"].record([tweet(1)])
    with TestClient(build_dashboard_app(core, sample_in_background=False)) as client:
        snap = client.get("/api/snapshot").json()
        assert snap["stores"]["valkey"]["total"] == 1
        assert client.post("/api/snapshot").status_code == 405
        assert client.get("/api/nothing").status_code == 404
        assert client.get("/static/missing.js").status_code == 404


def test_events_stream_snapshots_and_ends_by_itself() -> None:
    core, stores, _ = make_core(interval_s=0.01)
    stores["redis"].record([tweet(1), tweet(2)])
    app = build_dashboard_app(core, events_per_stream=3)
    with TestClient(app) as client, client.stream("GET", "/api/events") as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [
            json.loads(line[5:]) for line in response.iter_lines() if line.startswith("data:")
        ]
    assert len(events) == 3
    assert [e["stores"]["redis"]["total"] for e in events] == [2, 2, 2]
    sequences = [e["sequence"] for e in events]
    assert sequences == sorted(set(sequences))
    assert core.monitor.closed  # type: ignore[attr-defined]


# --- Serve adapter --------------------------------------------------------------------------


async def test_replica_counts_from_serve_status(monkeypatch: pytest.MonkeyPatch) -> None:
    from ray.serve.schema import (
        ApplicationStatusOverview,
        DeploymentStatusOverview,
        ServeStatus,
    )

    from serve_app.dashboard import deployment as dashboard_deployment

    def deployment(states: dict[str, int]) -> DeploymentStatusOverview:
        return DeploymentStatusOverview(
            status="HEALTHY",
            status_trigger="CONFIG_UPDATE_COMPLETED",
            replica_states=states,
            message="",
        )

    status = ServeStatus(
        applications={
            "ingress": ApplicationStatusOverview(
                status="RUNNING",
                message="",
                last_deployed_time_s=0.0,
                deployments={"Ingress": deployment({"RUNNING": 2, "STARTING": 1})},
            ),
            "dashboard": ApplicationStatusOverview(
                status="DEPLOYING",
                message="",
                last_deployed_time_s=0.0,
                deployments={"Dashboard": deployment({"STARTING": 1})},
            ),
        }
    )
    monkeypatch.setattr(dashboard_deployment.serve, "status", lambda: status)
    assert await dashboard_deployment.ServeReplicaCounts()() == {
        "ingress": {"Ingress": 2},
        "dashboard": {"Dashboard": 0},
    }


# --- Swagger UI -----------------------------------------------------------------------------


@pytest.mark.parametrize("prefix", ["", "/api"])
def test_docs_page_and_its_bundled_assets(prefix: str) -> None:
    inner = Starlette(routes=docs_routes("/openapi.json"))
    app = Starlette(routes=[Mount(prefix, inner)]) if prefix else inner
    with TestClient(app) as client:
        page = client.get(f"{prefix}/docs")
        assert page.status_code == 200
        assert '"/openapi.json"' in page.text and "validatorUrl: null" in page.text
        urls = page_urls(page.text)
        assert len(urls) == 2
        for url in urls:
            assert url.startswith(f"{prefix}/docs/assets/"), url
            assert client.get(url).status_code == 200
        bundle = client.get(f"{prefix}/docs/assets/swagger-ui-bundle.js").text
        assert "OpenAPI31" in bundle  # Swagger UI 5: renders our OpenAPI 3.1 document
        assert client.post(f"{prefix}/docs").status_code == 405


async def test_a_slow_serve_status_is_never_called_twice_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from ray.serve.schema import ServeStatus

    from serve_app.dashboard import deployment as dashboard_deployment

    release = threading.Event()
    calls: list[int] = []

    def slow_status() -> ServeStatus:
        calls.append(1)
        release.wait(timeout=30)
        return ServeStatus()

    monkeypatch.setattr(dashboard_deployment.serve, "status", slow_status)
    counts = dashboard_deployment.ServeReplicaCounts()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(counts(), timeout=0.05)  # the sample gives up; the call goes on
    pending = asyncio.ensure_future(counts())
    release.set()
    assert await pending == {}
    assert len(calls) == 1


async def test_replica_counts_are_read_again_only_when_older_than_their_max_age(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from ray.serve.schema import ServeStatus

    from serve_app.dashboard import deployment as dashboard_deployment

    calls: list[int] = []

    def status() -> ServeStatus:
        calls.append(1)
        return ServeStatus()

    now = [100.0]
    monkeypatch.setattr(dashboard_deployment.serve, "status", status)
    counts = dashboard_deployment.ServeReplicaCounts(max_age_s=5.0, clock=lambda: now[0])
    assert await counts() == {}
    now[0] += 4.9
    await counts()
    assert len(calls) == 1
    now[0] += 0.1
    await counts()
    assert len(calls) == 2
