"""The Serve adapter of :mod:`serve_app.dashboard.core`: application ``dashboard``.

Bind it with the settings the application builder made: ``Dashboard.bind(settings)``.
``@serve.ingress()`` without an app defers the ASGI app to ``__serve_build_asgi_app__``,
which Serve calls after ``__init__`` on the replica, so the Starlette app is built around
this replica's own core. Serve runs the app's lifespan, which starts the sampling loop.
"""

from __future__ import annotations

import asyncio

from ray import serve
from ray.serve.schema import ServeStatus
from starlette.applications import Starlette

from serve_app.dashboard.core import DashboardCore, build_dashboard_app
from serve_app.dashboard.sources import build_core_from_settings
from serve_app.runtime import ray_metrics
from serve_app.settings import Settings


class ServeReplicaCounts:
    """Running replicas per application and deployment, from ``serve.status()``.

    ``serve.status()`` blocks on a controller call, so it runs in a thread; at most one call
    is in flight, so a slow controller never piles up threads (a sample that times out
    waits for the same call next second).
    """

    def __init__(self) -> None:
        self._pending: asyncio.Future[ServeStatus] | None = None

    async def __call__(self) -> dict[str, dict[str, int]]:
        if self._pending is None or self._pending.done():
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
        self.core: DashboardCore = build_core_from_settings(
            settings, ServeReplicaCounts(), ray_metrics()
        )

    def __serve_build_asgi_app__(self) -> Starlette:
        return build_dashboard_app(self.core)
