"""The Serve adapter of :mod:`serve_app.dashboard.core`: application ``dashboard``.

Bind it with the settings the application builder made: ``Dashboard.bind(settings)``.
``@serve.ingress()`` without an app defers the ASGI app to ``__serve_build_asgi_app__``,
which Serve calls after ``__init__`` on the replica, so the Starlette app is built around
this replica's own core. Serve runs the app's lifespan, which starts the sampling loop.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable

from ray import serve
from ray.serve.schema import ServeStatus
from starlette.applications import Starlette

from serve_app.dashboard.admin import repair_routes
from serve_app.dashboard.core import DashboardCore, build_dashboard_app
from serve_app.dashboard.sources import build_core_from_settings
from serve_app.runtime import ray_metrics, ray_token_check
from serve_app.settings import Settings
from serve_app.store.repair import open_marker_stores

REPLICAS_MAX_AGE_S = 5.0
"""How long the dashboard shows one reading of the replica counts."""


class ServeReplicaCounts:
    """Running replicas per application and deployment, from ``serve.status()``.

    ``serve.status()`` blocks on a controller call, so it runs in a thread; at most one call
    is in flight, so a slow controller never piles up threads (a sample that times out
    waits for the same call next second). A status costs the controller and this replica
    a full description of every application (~2.5 % of a core each when read every second,
    most of the dashboard's idle CPU), and replicas change no faster than the autoscaler's
    delays of several seconds: an answer is reused for ``max_age_s``.
    """

    def __init__(
        self, max_age_s: float = REPLICAS_MAX_AGE_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._pending: asyncio.Future[ServeStatus] | None = None
        self._max_age_s = max_age_s
        self._clock = clock
        self._asked_at = -math.inf

    async def __call__(self) -> dict[str, dict[str, int]]:
        stale = self._clock() - self._asked_at >= self._max_age_s
        if stale and (self._pending is None or self._pending.done()):
            self._asked_at = self._clock()
            self._pending = asyncio.ensure_future(asyncio.to_thread(serve.status))
        return running_replicas(await asyncio.shield(self._pending))


def running_replicas(status: ServeStatus) -> dict[str, dict[str, int]]:
    return {
        app_name: {
            name: int(deployment.replica_states.get("RUNNING", 0))
            for name, deployment in app.deployments.items()
        }
        for app_name, app in status.applications.items()
    }


@serve.deployment(
    num_replicas=1,
    max_ongoing_requests=100,  # every open page holds one event stream
    ray_actor_options={"num_cpus": 0.05},
)
@serve.ingress()
class Dashboard:
    """One replica: it samples once per second and serves every open page from that sample."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.core: DashboardCore = build_core_from_settings(
            settings, ServeReplicaCounts(), ray_metrics()
        )

    def __serve_build_asgi_app__(self) -> Starlette:
        check = ray_token_check()
        admin = repair_routes(lambda: open_marker_stores(self.settings), check)
        return build_dashboard_app(self.core, admin_routes=admin, ids_check=check)
