"""The dashboard's admin endpoint: ``/api/repair`` (``weather repair`` calls it).

``GET`` is a dry run, ``POST`` applies; both stream the repair's progress as JSON lines
(one per batch, then the report; see :mod:`serve_app.store.repair`). Only a caller with the
Ray cluster's token (``Authorization: Bearer <token>``, the token the Ray dashboard asks
for) gets in; a cluster without token authentication has the endpoint closed. One repair
runs at a time. Ray-free: the token check and the stores are passed in
(:mod:`serve_app.dashboard.deployment` wires Ray's own check and the settings' stores).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

from starlette.datastructures import QueryParams
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from serve_app.errors import describe
from serve_app.model.exposure import TokenCheck
from serve_app.store.repair import (
    DEFAULT_BATCH,
    DEFAULT_MIN_TTL_S,
    STORE_NAMES,
    MarkerStore,
    RepairPlan,
    RepairReport,
    run_repair,
)

OpenStores = Callable[[], Mapping[str, MarkerStore]]
"""Both stores on fresh clients, closed by the endpoint when its repair ends."""
PARAMETERS = ("into", "prefix", "min_ttl_s", "batch", "clear_skip_report")
TRUE, FALSE = ("1", "true", "yes"), ("0", "false", "no", "")
RETRY_AFTER_S = 5


def _error(status: int, message: str, **headers: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers or None)


def refusal(authorization: str, check: TokenCheck | None) -> Response | None:
    """401 without a bearer token, 403 with a wrong one or none expected; None: let in."""
    if check is None:
        return _error(403, "the admin endpoints need token authentication on the Ray cluster "
                           "(RAY_AUTH_MODE=token), which is off")  # fmt: skip
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return _error(
            401,
            "an admin endpoint: send the Ray cluster's token as 'Authorization: Bearer <token>'",
            **{"WWW-Authenticate": "Bearer"},
        )
    if not check(f"Bearer {token.strip()}"):
        return _error(403, "the token is not the Ray cluster's token")
    return None


def plan_from_query(query: QueryParams, apply: bool) -> RepairPlan:
    """The plan a request asks for; a ValueError names what is wrong."""
    unknown = sorted(set(query) - set(PARAMETERS))
    if unknown:
        raise ValueError(f"unknown parameter {', '.join(unknown)}; known: {', '.join(PARAMETERS)}")
    into = query.get("into", "both")
    if into not in (*STORE_NAMES, "both"):
        raise ValueError(f"into: redis, valkey or both, got {into!r}")
    return RepairPlan(
        into=STORE_NAMES if into == "both" else (into,),
        prefix=query.get("prefix", ""),
        apply=apply,
        min_ttl_s=_integer(query, "min_ttl_s", DEFAULT_MIN_TTL_S),
        batch=_integer(query, "batch", DEFAULT_BATCH),
        clear_skip_report=_flag(query, "clear_skip_report"),
    )


def _integer(query: QueryParams, name: str, default: int) -> int:
    raw = query.get(name)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"{name}: a whole number, got {raw!r}") from None


def _flag(query: QueryParams, name: str) -> bool:
    raw = query.get(name, "").lower()
    if raw not in TRUE + FALSE:
        raise ValueError(f"{name}: true or false, got {raw!r}")
    return raw in TRUE


def _line(event: str, body: dict[str, Any]) -> bytes:
    return json.dumps({"event": event, **body}, ensure_ascii=False).encode() + b"\n"


async def _close(stores: Mapping[str, MarkerStore]) -> None:
    await asyncio.gather(*(s.aclose() for s in stores.values()), return_exceptions=True)


def repair_routes(open_stores: OpenStores, check: TokenCheck | None) -> list[Route]:
    """``GET /api/repair`` (dry run) and ``POST /api/repair`` (apply)."""
    running = asyncio.Lock()

    async def stream(plan: RepairPlan) -> AsyncIterator[bytes]:
        # everything is taken here, where the finally is sure to run once it started (a
        # response never sent never starts this, and then holds nothing)
        async with running:
            stores = open_stores()
            try:
                async for event in run_repair(stores, plan):
                    kind = "report" if isinstance(event, RepairReport) else "progress"
                    yield _line(kind, event.to_json())
            except Exception as exc:  # a store failed mid-way: said in the stream, then ended
                again = "run it again (what was counted stays counted)"
                yield _line("error", {"error": f"the repair stopped: {describe(exc)}; {again}"})
            finally:
                await _close(stores)

    async def reachable() -> str | None:
        """Why a store cannot be reached (a PING each, on clients of their own), or None."""
        stores = open_stores()
        try:
            await asyncio.gather(*(s.ping() for s in stores.values()))
        except Exception as exc:
            return describe(exc)
        finally:
            await _close(stores)
        return None

    async def repair(request: Request) -> Response:
        refused = refusal(request.headers.get("authorization", ""), check)
        if refused is not None:
            return refused
        try:
            plan = plan_from_query(request.query_params, apply=request.method == "POST")
        except ValueError as exc:
            return _error(400, str(exc))
        if running.locked():  # two requests racing past this run one after the other
            return _error(409, "a repair is running; try again when it has ended")
        problem = await reachable()
        if problem is not None:
            return _error(503, f"a store cannot be reached: {problem}",
                          **{"Retry-After": str(RETRY_AFTER_S)})  # fmt: skip
        return StreamingResponse(
            stream(plan), media_type="application/x-ndjson", headers={"Cache-Control": "no-store"}
        )

    return [Route("/api/repair", repair, methods=["GET", "POST"])]
