"""The admission poller is kept running: restarted whenever it ends, its state in /health."""

from __future__ import annotations

import asyncio

import pytest
from starlette.testclient import TestClient

from serve_app.ingest.core import Ingest
from serve_app.ingest.rest import build_rest_app
from serve_app.ingest.supervisor import (
    ENDED,
    MAX_RESTART_DELAY_S,
    TaskHealth,
    restart_delay_s,
    supervise,
)
from tests.support.fakes import LIMITS, RULES, FakeWriter
from tests.unit.test_admission import Clock, _stats, admission


class Stop(Exception):
    """Ends the test's supervision loop (raised by the fake sleep)."""


def test_restart_delay_grows_and_is_capped() -> None:
    delays = [restart_delay_s(n) for n in range(1, 12)]
    assert delays[0] == 0.5 and delays[1] == 1.0
    assert delays == sorted(delays) and delays[-1] == MAX_RESTART_DELAY_S


async def test_a_task_that_raises_or_returns_is_started_again() -> None:
    health = TaskHealth("poller")
    outcomes = iter([RuntimeError("kafka: no route"), None])
    starts: list[bool] = []
    slept: list[float] = []

    async def run() -> None:
        starts.append(health.running)
        outcome = next(outcomes)
        if outcome is not None:
            raise outcome

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        if len(slept) == 2:
            raise Stop

    with pytest.raises(Stop):
        await supervise(run, health, sleep=sleep)
    assert starts == [True, True]
    assert health.restarts == 2 and not health.running
    assert health.last_error == ENDED
    assert slept == [restart_delay_s(1), restart_delay_s(2)]


async def test_the_reason_of_each_end_is_reported_and_counted() -> None:
    health = TaskHealth("poller")
    seen: list[tuple[int, str]] = []

    async def run() -> None:
        raise ConnectionError("connection refused")

    async def sleep(seconds: float) -> None:
        raise Stop

    with pytest.raises(Stop):
        await supervise(
            run, health, on_restart=lambda h: seen.append((h.restarts, h.last_error)), sleep=sleep
        )
    assert seen == [(1, "ConnectionError: connection refused")]
    assert health.report() == {
        "running": False,
        "restarts": 1,
        "last_error": "ConnectionError: connection refused",
    }


async def test_cancelling_stops_supervision() -> None:
    health = TaskHealth("poller")
    started = asyncio.Event()

    async def run() -> None:
        started.set()
        await asyncio.sleep(3600)

    task = asyncio.create_task(supervise(run, health))
    await asyncio.wait_for(started.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not health.running and health.restarts == 0


def admitting_ingest() -> Ingest:
    writers = [FakeWriter("kafka", by_country=True), FakeWriter("rabbitmq", by_country=False)]
    return Ingest(writers, RULES, LIMITS, 8192, 1.0, admission=admission(Clock()))


def test_health_is_ok_while_the_poller_runs() -> None:
    ingest = admitting_ingest()

    async def running_poller() -> None:
        ingest.admission.poller.running = True

    app = build_rest_app(ingest, ingest.publish, _stats, background=running_poller)
    with TestClient(app) as client:
        body = client.get("/health").json()
    assert body["status"] == "ok"
    assert body["admission_poller"] == {"running": True, "restarts": 0, "last_error": ""}


def test_health_shows_a_poller_that_is_not_running_and_degrades() -> None:
    ingest = admitting_ingest()
    ingest.admission.poller.last_error = "KafkaConnectionError: no brokers"

    async def ended_poller() -> None:  # what an unsupervised poller looked like once it ended
        ingest.admission.poller.running = False

    app = build_rest_app(ingest, ingest.publish, _stats, background=ended_poller)
    with TestClient(app) as client:
        body = client.get("/health").json()
    assert body["status"] == "degraded"
    assert body["admission_poller"]["running"] is False
    assert body["admission_poller"]["last_error"] == "KafkaConnectionError: no brokers"
