"""Stage 3, Serve side: application ``consumers`` (route ``/consumers``).

:class:`ConsumerSupervisor` creates the detached, named consumer actors
(:mod:`serve_app.consume.actors`), keeps them running, and reports their health
(``GET /consumers`` only reads). It adopts the actors when it starts; a replaced supervisor
never kills actors a newer one adopted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from typing import Any

import ray
from ray import serve
from starlette.requests import Request
from starlette.responses import JSONResponse

from serve_app.consume.actors import (
    ACTOR_OPTIONS,
    NAMESPACE,
    actor_specs,
    remote_class,
    surplus_actor_names,
    validate_consumer_counts,
)
from serve_app.consume.core import REASON_LIMIT
from serve_app.errors import describe
from serve_app.settings import Settings

logger = logging.getLogger(__name__)


@serve.deployment(num_replicas=1, ray_actor_options={"num_cpus": 0.05})
class ConsumerSupervisor:
    """Creates and adopts the detached consumer actors, keeps them running, reports them.

    ``GET /consumers`` only reads (200, or 503 when an actor is not running). Every
    ``CHECK_INTERVAL_S`` the supervisor starts any stopped loop and recreates any dead actor.
    When it goes away it kills the actors only if no newer supervisor adopted them since: a
    redeploy, health-check restart or node drain never stops consumption; deleting the
    application does.
    """

    CHECK_INTERVAL_S = 5.0
    CALL_TIMEOUT_S = 10.0

    async def __init__(self, settings: Settings) -> None:  # type: ignore[misc]
        self.settings = settings
        self.id = uuid.uuid4().hex
        self.generation = time.time_ns()  # a newer supervisor outranks this one
        validate_consumer_counts(self.settings)
        self._specs = actor_specs(self.settings)
        self._actors: dict[str, Any] = {}
        for name in surplus_actor_names({name for name, _ in self._specs}):
            with contextlib.suppress(Exception):
                ray.kill(ray.get_actor(name, namespace=NAMESPACE), no_restart=True)
        for name, cls in self._specs:
            self._actors[name] = self._create(name, cls)
        await self.ensure_running()
        self._monitor = asyncio.get_running_loop().create_task(self._watch())

    def _create(self, name: str, cls: type) -> Any:
        return remote_class(cls).options(name=name, **ACTOR_OPTIONS).remote(name, self.settings)

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.CHECK_INTERVAL_S)
            try:
                await self.ensure_running()
            except Exception:
                logger.exception("consumer check failed")

    async def _call(self, name: str, method: str) -> dict[str, Any]:
        try:
            return await asyncio.wait_for(
                getattr(self._actors[name], method).remote(), timeout=self.CALL_TIMEOUT_S
            )
        except TimeoutError:
            return {"name": name, "running": False, "last_error": f"{method} timed out"}
        except Exception as exc:
            return {
                "name": name,
                "running": False,
                "last_error": describe(exc, REASON_LIMIT),
                "dead": True,
            }

    async def ensure_running(self) -> None:
        """(Re)start stopped loops; recreate actors that died for good (or stale handles);
        adopt them all again (an actor Ray restarted has forgotten its owner)."""
        for (name, cls), status in zip(
            self._specs,
            await asyncio.gather(*(self._call(name, "start") for name, _ in self._specs)),
            strict=True,
        ):
            if status.get("dead"):
                self._actors[name] = self._create(name, cls)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(
                asyncio.gather(
                    *(a.adopt.remote(self.id, self.generation) for a in self._actors.values())
                ),
                self.CALL_TIMEOUT_S,
            )

    async def health(self) -> dict[str, Any]:
        """Every actor's status (running, batches, last error...); changes nothing."""
        statuses = await asyncio.gather(*(self._call(name, "status") for name, _ in self._specs))
        return {
            "healthy": all(s.get("running") for s in statuses),
            "kafka_consumers": self.settings.kafka_consumers,
            "rabbit_consumers": self.settings.rabbit_consumers,
            "actors": {s["name"]: s for s in statuses},
        }

    def actor_names(self) -> list[str]:
        return [name for name, _ in self._specs]

    async def __call__(self, request: Request) -> JSONResponse:
        report = await self.health()
        return JSONResponse(report, status_code=200 if report["healthy"] else 503)

    async def __del__(self) -> None:
        """Kill the actors this supervisor still owns (uncommitted work is redelivered)."""
        monitor = getattr(self, "_monitor", None)
        if monitor is not None:
            monitor.cancel()
        for name, actor in getattr(self, "_actors", {}).items():
            with contextlib.suppress(Exception):
                owner = await asyncio.wait_for(actor.owned_by.remote(), self.CALL_TIMEOUT_S)
                if owner == self.id:
                    ray.kill(actor, no_restart=True)
                    logger.info("stopped consumer %s", name)
