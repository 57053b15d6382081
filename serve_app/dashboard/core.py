"""The live dashboard: Redis (via Kafka) and Valkey (via RabbitMQ) side by side.

:class:`DashboardCore` samples its sources once per second into a bounded history and
builds one JSON snapshot; :func:`build_dashboard_app` serves the page, its assets, the
snapshot and a server-sent-event stream of snapshots. Ray-free: the sources are passed in
(``serve_app.dashboard.deployment`` wires them to settings and ``serve.status()``), so
tests drive the core with fakes and a fake clock.

Every URL the page uses is relative, so the app works mounted under any prefix
(Serve application ``dashboard`` on ``/dashboard``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from importlib.resources import files
from typing import Any, Protocol

from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from serve_app.model.exposure import TokenCheck, may_see_ids, without_ids
from serve_app.model.health import failed
from serve_app.model.metrics import BACKLOG, DEAD_LETTERS, NO_METRICS, MetricsSink

logger = logging.getLogger(__name__)

STORE_FEEDS: dict[str, str] = {"redis": "Kafka", "valkey": "RabbitMQ"}
"""Each store and the broker that feeds it, in the order the page shows them."""
LATEST_TWEETS = 10
SAMPLE_INTERVAL_S = 1.0
HISTORY_S = 600.0
READ_TIMEOUT_S = 2.0
EVENTS_PER_STREAM = 300
"""A stream ends after this many snapshots (~5 minutes); the browser's EventSource then
reconnects by itself, so no connection lives forever."""
STREAM_RETRY_MS = 1000

STATIC_DIR = files("serve_app.dashboard") / "static"


class StatsSource(Protocol):
    """What the dashboard needs of a store: ``TweetStore.read_stats``."""

    async def read_stats(self, latest: int = 0) -> dict[str, Any]: ...


class MonitorSource(Protocol):
    """What the dashboard needs of :class:`serve_app.dashboard.sources.Monitor`."""

    async def read(self) -> dict[str, Any]: ...

    async def close(self) -> None: ...


ReplicaCounts = Callable[[], Awaitable[dict[str, dict[str, int]]]]
"""Running replicas per Serve application and deployment: ``{app: {deployment: n}}``."""


@dataclass(frozen=True)
class Point:
    """One sample of the history: each store's total, ingest rate and freshness."""

    at: float
    totals: dict[str, int | None]
    rates: dict[str, float | None]
    freshness: dict[str, float | None]


def ingest_rate(
    previous_total: int | None, total: int | None, previous_at: float, at: float
) -> float | None:
    """Tweets/s counted between two samples; None when unknown or the store was reset."""
    if previous_total is None or total is None or at <= previous_at or total < previous_total:
        return None
    return (total - previous_total) / (at - previous_at)


def accepted_epoch(tweet: Mapping[str, Any]) -> float | None:
    """The tweet's ``accepted_at`` as a Unix time, or None when missing or unreadable."""
    raw = tweet.get("accepted_at")
    if not isinstance(raw, str):
        return None
    try:
        return datetime.fromisoformat(raw).timestamp()
    except ValueError:
        return None


def freshness_s(at: float, grew: bool, latest: Sequence[Mapping[str, Any]]) -> float | None:
    """Sample time minus acceptance of the newest counted tweet, only when the total grew:
    an idle pipeline would otherwise look ever staler."""
    if not grew or not latest:
        return None
    accepted = accepted_epoch(latest[0])
    return None if accepted is None else max(0.0, at - accepted)


def _rounded(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


async def _bounded(read: Awaitable[Any], timeout_s: float) -> tuple[Any, str | None]:
    """``(result, None)`` or ``(None, error)``: one slow or failing source never stops a sample."""
    try:
        async with asyncio.timeout(timeout_s):
            return await read, None
    except Exception as exc:
        return None, failed(exc)["detail"]


class DashboardCore:
    """Samples the stores, the monitor and the replica counts; keeps 10 minutes of history."""

    def __init__(
        self,
        stores: Mapping[str, StatsSource],
        monitor: MonitorSource,
        replicas: ReplicaCounts,
        *,
        weathers: Sequence[str] = (),
        clock: Callable[[], float] = time.time,
        interval_s: float = SAMPLE_INTERVAL_S,
        history_s: float = HISTORY_S,
        timeout_s: float = READ_TIMEOUT_S,
        metrics: MetricsSink = NO_METRICS,
    ) -> None:
        self.stores = stores
        self.monitor = monitor
        self.replicas = replicas
        self.weathers = list(weathers)
        self.clock = clock
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.metrics = metrics
        self.history: deque[Point] = deque(maxlen=max(2, round(history_s / interval_s)))
        self.sequence = 0
        self._snapshot: dict[str, Any] = self._build(None, {}, {}, {}, None)
        self._sampled = asyncio.Condition()

    async def sample(self) -> dict[str, Any]:
        """Read every source once (in parallel, each bounded), record, and return the snapshot."""
        at = self.clock()
        names = list(self.stores)
        results = await asyncio.gather(
            *(_bounded(self.stores[n].read_stats(LATEST_TWEETS), self.timeout_s) for n in names),
            _bounded(self.monitor.read(), self.timeout_s),
            _bounded(self.replicas(), self.timeout_s),
        )
        *store_results, (monitor, monitor_error), (replicas, replicas_error) = results
        stats = dict(zip(names, store_results, strict=True))
        self.history.append(self._point(at, stats))
        if monitor is None:
            monitor = {"error": monitor_error}
        else:
            self._export_backlog(monitor)
        replica_view = {"deployments": replicas or {}, "error": replicas_error}
        self._snapshot = self._build(at, stats, monitor, replica_view, monitor_error)
        async with self._sampled:
            self.sequence += 1
            self._sampled.notify_all()
        return self._snapshot

    def _export_backlog(self, monitor: Mapping[str, Any]) -> None:
        """The brokers' backlog as gauges (this sample reads them anyway); an unknown
        reading (broker down) leaves the last value."""
        readings = {"kafka": ("lag", "dead_letters"), "rabbitmq": ("depth", "dead_letters")}
        for broker, (backlog, dead) in readings.items():
            reading = monitor.get(broker, {})
            for metric, field in ((BACKLOG, backlog), (DEAD_LETTERS, dead)):
                if reading.get(field) is not None:
                    self.metrics.set(metric, reading[field], broker=broker)

    def snapshot(self) -> dict[str, Any]:
        """The latest snapshot (a skeleton with no numbers before the first sample)."""
        return self._snapshot

    async def next_snapshot(self, after: int, timeout_s: float) -> tuple[int, dict[str, Any]]:
        """Wait for a sample newer than ``after``; raises TimeoutError if none comes."""
        async with asyncio.timeout(timeout_s), self._sampled:
            await self._sampled.wait_for(lambda: self.sequence > after)
            return self.sequence, self._snapshot

    async def run(self) -> None:
        """Sample every ``interval_s`` until cancelled; a failing sample is logged, not fatal."""
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            try:
                await self.sample()
            except Exception:
                logger.exception("dashboard sample failed")
            await asyncio.sleep(max(0.0, self.interval_s - (loop.time() - started)))

    def _point(self, at: float, stats: Mapping[str, tuple[Any, str | None]]) -> Point:
        previous = self.history[-1] if self.history else None
        totals: dict[str, int | None] = {}
        rates: dict[str, float | None] = {}
        fresh: dict[str, float | None] = {}
        for name, (store_stats, _) in stats.items():
            total = store_stats["total"] if store_stats else None
            before = previous.totals.get(name) if previous else None
            totals[name] = total
            rates[name] = ingest_rate(before, total, previous.at, at) if previous else None
            grew = before is not None and total is not None and total > before
            fresh[name] = freshness_s(at, grew, store_stats.get("latest", []) if grew else [])
        return Point(at=at, totals=totals, rates=rates, freshness=fresh)

    def _history_view(self) -> dict[str, Any]:
        """Series aligned on ``at`` (None where a value is unknown), as the charts want them;
        rounded, since the whole history goes to every open page each second."""
        points = list(self.history)
        names = list(self.stores)
        return {
            "at": [round(p.at, 3) for p in points],
            "rate": {n: [_rounded(p.rates.get(n), 2) for p in points] for n in names},
            "freshness": {n: [_rounded(p.freshness.get(n), 3) for p in points] for n in names},
        }

    def _build(
        self,
        at: float | None,
        stats: Mapping[str, tuple[Any, str | None]],
        monitor: Mapping[str, Any],
        replicas: Mapping[str, Any],
        monitor_error: str | None,
    ) -> dict[str, Any]:
        store_probes = monitor.get("stores", {})
        unknown = {"ok": False, "detail": monitor_error or "not sampled yet"}
        stores = {}
        for name in self.stores:
            store_stats, error = stats.get(name, (None, "not sampled yet"))
            probe = store_probes.get(name, {})
            stores[name] = {
                "name": name,
                "via": STORE_FEEDS.get(name, ""),
                "error": error,
                "total": store_stats["total"] if store_stats else None,
                "by_country": store_stats["by_country"] if store_stats else {},
                "by_weather": store_stats["by_weather"] if store_stats else {},
                "by_country_weather": store_stats["by_country_weather"] if store_stats else {},
                "latest": store_stats.get("latest", []) if store_stats else [],
                "parked_dead_letters": store_stats.get("parked_dead_letters")
                if store_stats
                else None,
                "skipped": store_stats.get("skipped", {}) if store_stats else {},
                "health": probe.get("health", unknown),
                "used_memory": probe.get("used_memory"),
                "ops_per_sec": probe.get("ops_per_sec"),
            }
        kafka = monitor.get("kafka", {"health": unknown, "lag": None, "dead_letters": None})
        rabbit = monitor.get("rabbitmq", {"health": unknown, "depth": None, "dead_letters": None})
        return {
            "generated_at": at,
            "sequence": self.sequence,
            "interval_s": self.interval_s,
            "weathers": self.weathers,
            "stores": stores,
            "history": self._history_view(),
            "brokers": {"kafka": kafka, "rabbitmq": rabbit},
            "health": {
                "kafka": kafka["health"],
                "rabbitmq": rabbit["health"],
                **{name: store["health"] for name, store in stores.items()},
            },
            "replicas": replicas or {"deployments": {}, "error": "not sampled yet"},
        }


# --- Starlette app -------------------------------------------------------------------------


def build_dashboard_app(
    core: DashboardCore,
    *,
    sample_in_background: bool = True,
    events_per_stream: int = EVENTS_PER_STREAM,
    ids_check: TokenCheck | None = None,
    admin_routes: Sequence[Route] = (),
) -> Starlette:
    """``GET /`` page, ``/static`` and ``/vendor/plotly`` assets, ``GET /api/snapshot``,
    ``GET /api/events``. With ``sample_in_background`` the app's lifespan runs the core's
    sampling loop (tests sample by hand instead); shutdown closes the monitor's clients.
    Snapshots show the latest tweets' ids only to whom :func:`may_see_ids` admits."""

    def shown(request: Request) -> Callable[[dict[str, Any]], dict[str, Any]]:
        """What this caller sees of a snapshot: all of it, or the latest tweets' ids hidden."""
        client = request.client.host if request.client else None
        if may_see_ids(client, request.headers, ids_check):
            return lambda snap: snap
        return lambda snap: {**snap, "stores": without_ids(snap["stores"])}

    async def page(request: Request) -> Response:
        return FileResponse(str(STATIC_DIR / "index.html"), headers={"Cache-Control": "no-cache"})

    async def snapshot(request: Request) -> Response:
        if core.sequence == 0:
            await core.sample()
        return JSONResponse(shown(request)(core.snapshot()), headers={"Cache-Control": "no-store"})

    async def events(request: Request) -> Response:
        view = shown(request)

        async def stream() -> AsyncIterator[ServerSentEvent]:
            seen = core.sequence - 1 if core.sequence else 0
            for _ in range(events_per_stream):
                try:
                    seen, snap = await core.next_snapshot(seen, timeout_s=core.interval_s * 5)
                except TimeoutError:
                    yield ServerSentEvent(comment="no new sample")
                    continue
                data = json.dumps(view(snap))
                yield ServerSentEvent(data=data, id=str(seen), retry=STREAM_RETRY_MS)

        return EventSourceResponse(stream(), ping=15, send_timeout=10)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        task = asyncio.create_task(core.run()) if sample_in_background else None
        try:
            yield
        finally:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await core.monitor.close()

    return Starlette(
        routes=[
            Route("/", page, methods=["GET"]),
            Route("/api/snapshot", snapshot, methods=["GET"]),
            Route("/api/events", events, methods=["GET"]),
            *admin_routes,  # serve_app.dashboard.admin: authenticated, the app stays Ray-free
            Mount("/static", StaticFiles(packages=[("serve_app.dashboard", "static")])),
            Mount("/vendor/plotly", StaticFiles(packages=[("plotly", "package_data")])),
        ],
        lifespan=lifespan,
    )
