"""Stage 3, Serve side: application ``consumers`` (route ``/consumers``).

:class:`ConsumerSupervisor` creates the detached, named consumer actors
(:mod:`serve_app.consume.actors`), keeps them running, and reports their health
(``GET /consumers`` only reads). It adopts the actors when it starts; a replaced supervisor
never kills actors a newer one adopted.

Consumers run the configuration that was deployed: each actor reports a version of its
settings and of the code of the supervisor that created it
(:func:`~serve_app.consume.core.config_version`); an adopted actor whose
version differs from the supervisor's (a redeploy with other ``args:``, environment or code)
is stopped gracefully (its loop leaves the consumer group / closes its channel, so
uncommitted work is redelivered), killed, and created anew with the deployed settings. The
pause (stop → new actor connected) is logged and reported in ``GET /consumers``
(``replacements``). A supervisor that a newer one outranked changes nothing any more.
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
    CODE_VERSION,
    NAMESPACE,
    actor_specs,
    remote_class,
    surplus_actor_names,
    validate_consumer_counts,
)
from serve_app.consume.core import REASON_LIMIT, config_version, stale_actors
from serve_app.errors import describe
from serve_app.settings import Settings

logger = logging.getLogger(__name__)


def _name_free(name: str) -> bool:
    """No live actor holds ``name`` any more (a killed one releases it)."""
    try:
        ray.get_actor(name, namespace=NAMESPACE)
    except ValueError:
        return True
    return False


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
    REPLACE_TIMEOUT_S = 30.0
    KEPT_REPLACEMENTS = 20

    async def __init__(self, settings: Settings) -> None:  # type: ignore[misc]
        self.settings = settings
        self.id = uuid.uuid4().hex
        self.generation = time.time_ns()  # a newer supervisor outranks this one
        self.version = config_version(settings, CODE_VERSION)
        self.superseded = False
        self.replacements: list[dict[str, Any]] = []
        validate_consumer_counts(self.settings)
        self.settings.content_key()  # no consumer starts without the fingerprint key
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
        options = remote_class(cls).options(name=name, **ACTOR_OPTIONS)
        return options.remote(name, self.settings, CODE_VERSION)

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
            return {
                "name": name,
                "running": False,
                "last_error": f"{method} timed out",
                "unreachable": True,
            }
        except Exception as exc:
            return {
                "name": name,
                "running": False,
                "last_error": describe(exc, REASON_LIMIT),
                "dead": True,
                "unreachable": True,
            }

    async def ensure_running(self) -> None:
        """(Re)start stopped loops; recreate actors that died for good (or stale handles);
        adopt them all again (an actor Ray restarted has forgotten its owner); replace the
        ones that run other settings or code than this supervisor was deployed with."""
        if not await self._adopt_all():
            return
        statuses = dict(
            zip(
                (name for name, _ in self._specs),
                await asyncio.gather(*(self._call(name, "start") for name, _ in self._specs)),
                strict=True,
            )
        )
        for name, cls in self._specs:
            if statuses[name].get("dead"):
                self._actors[name] = self._create(name, cls)
        if not await self._adopt_all():
            return
        classes = dict(self._specs)
        await asyncio.gather(
            *(
                self._replace(name, classes[name], statuses[name].get("config_version"))
                for name in stale_actors(self.version, statuses)
            )
        )

    async def _adopt_all(self) -> bool:
        """Adopt every actor; False (and nothing changes from now on) once a newer
        supervisor owns one of them."""
        try:
            owners = await asyncio.wait_for(
                asyncio.gather(
                    *(a.adopt.remote(self.id, self.generation) for a in self._actors.values()),
                    return_exceptions=True,
                ),
                self.CALL_TIMEOUT_S,
            )
        except TimeoutError:
            return True
        if any(isinstance(o, str) and o != self.id for o in owners):
            self.superseded = True
            logger.info("a newer consumer supervisor took over; this one changes nothing")
        return not self.superseded

    async def _replace(self, name: str, cls: type, running: str | None) -> None:
        """Stop the actor gracefully (uncommitted work is redelivered), kill it, create it
        with this supervisor's settings, and measure the pause until it is connected."""
        started = time.monotonic()
        actor = self._actors[name]
        with contextlib.suppress(Exception):
            await asyncio.wait_for(actor.stop.remote(), self.CALL_TIMEOUT_S)
        with contextlib.suppress(Exception):
            ray.kill(actor, no_restart=True)
        await self._until(lambda: _name_free(name), self.CALL_TIMEOUT_S)
        self._actors[name] = self._create(name, cls)
        await self._adopt_all()
        connected = await self._until(self._connected(name), self.REPLACE_TIMEOUT_S)
        pause_s = round(time.monotonic() - started, 2)
        record = {"name": name, "from": running, "to": self.version, "pause_s": pause_s,
                  "connected": connected, "at": time.time()}  # fmt: skip
        self.replacements = [*self.replacements, record][-self.KEPT_REPLACEMENTS :]
        logger.info("replaced consumer %s (version %s -> %s): paused %.2f s", name,
                    running, self.version, pause_s)  # fmt: skip

    def _connected(self, name: str) -> Any:
        async def check() -> bool:
            return bool((await self._call(name, "status")).get("connected"))

        return check

    @staticmethod
    async def _until(check: Any, timeout_s: float) -> bool:
        """Poll ``check`` (sync or async) every 0.1 s until true or ``timeout_s`` ran out."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            result = check()
            if asyncio.iscoroutine(result):
                result = await result
            if result:
                return True
            await asyncio.sleep(0.1)
        return False

    async def health(self) -> dict[str, Any]:
        """Every actor's status (running, batches, last error...); changes nothing."""
        statuses = await asyncio.gather(*(self._call(name, "status") for name, _ in self._specs))
        return {
            "healthy": all(s.get("running") for s in statuses),
            "kafka_consumers": self.settings.kafka_consumers,
            "rabbit_consumers": self.settings.rabbit_consumers,
            "config_version": self.version,
            "replacements": self.replacements,
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
