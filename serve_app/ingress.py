"""Stage 1: the REST ingress (``POST /input``, ``GET /health``, ``GET /stats``, ``/openapi.json``).

Runs behind Serve's HTTP proxy on port 8000. Every request is validated whole before
anything is published; concurrent requests are coalesced (``serve.batch``) into one call
to the Publisher, and a request is answered 202 only after both brokers confirmed it.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Awaitable, Callable
from typing import Any

from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from serve_app import store
from serve_app.openapi import openapi_document
from serve_app.schema import (
    Tweet,
    TweetValidationError,
    accept,
    count_tweets,
    validate_tweets,
)
from serve_app.settings import Settings, settings
from serve_app.writers import BrokerUnavailable

Handler = Callable[[Request], Awaitable[Response]]


class HTTPError(Exception):
    """An error answer: status code, a message naming what is wrong, optional details."""

    def __init__(self, status: int, message: str, **details: Any) -> None:
        self.status = status
        self.message = message
        self.details = details
        super().__init__(message)

    def response(self, headers: dict[str, str] | None = None) -> JSONResponse:
        return JSONResponse(
            {"error": self.message, **self.details}, status_code=self.status, headers=headers
        )


def _is_json(content_type: str | None) -> bool:
    media_type = (content_type or "").split(";", 1)[0].strip().lower()
    return media_type == "application/json" or (
        media_type.startswith("application/") and media_type.endswith("+json")
    )


async def read_body(request: Request, limit: int) -> bytes:
    """The raw body, refused with 413 as soon as it exceeds ``limit`` (before any parsing)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise HTTPError(413, f"body is {declared} bytes; the limit is {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HTTPError(413, f"body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def parse_tweets(body: bytes, idempotency_key: str | None, config: Settings) -> tuple[list, bool]:
    """Decode and validate a body holding one tweet or an array of them.

    Returns the validated tweets and whether the body was a batch.
    """
    try:
        document = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise HTTPError(400, f"malformed JSON: {exc}") from None
    if isinstance(document, dict):
        if idempotency_key is not None:
            if "id" in document and document["id"] != idempotency_key:
                raise HTTPError(422, "the Idempotency-Key header and the id field differ")
            document = {**document, "id": idempotency_key}
        items, is_batch = [document], False
    elif isinstance(document, list):
        if idempotency_key is not None:
            raise HTTPError(422, "Idempotency-Key applies to a single tweet; give each item an id")
        if not 1 <= len(document) <= config.max_batch_tweets:
            raise HTTPError(
                422,
                f"a batch holds 1 to {config.max_batch_tweets} tweets, got {len(document)}",
            )
        items, is_batch = document, True
    else:
        raise HTTPError(422, "expected a tweet object or an array of tweets")
    try:
        return validate_tweets(items, index_errors=is_batch), is_batch
    except TweetValidationError as exc:
        raise HTTPError(422, "invalid tweet", details=exc.errors) from None


@serve.deployment
class Ingress:
    """The HTTP face of the pipeline; holds a handle to the publisher application."""

    def __init__(self, config: Settings = settings) -> None:
        self.settings = config
        self._publisher: DeploymentHandle = serve.get_deployment_handle(
            "Publisher", app_name="publisher"
        )
        self._stores = {
            "redis": store.TweetStore(store.connect_redis(config), config),
            "valkey": store.TweetStore(store.connect_valkey(config), config),
        }
        self._routes: dict[tuple[str, str], Handler] = {
            ("POST", "/input"): self.post_input,
            ("GET", "/health"): self.get_health,
            ("GET", "/stats"): self.get_stats,
            ("GET", "/openapi.json"): self.get_openapi,
        }

    async def __call__(self, request: Request) -> Response:
        path = request.url.path.rstrip("/") or "/"
        handler = self._routes.get((request.method, path))
        if handler is None:
            allowed = sorted(m for m, p in self._routes if p == path)
            if allowed:
                error = HTTPError(405, f"{request.method} is not allowed on {path}")
                return error.response({"Allow": ", ".join(allowed)})
            return HTTPError(404, f"no route {path}").response()
        try:
            return await handler(request)
        except HTTPError as exc:
            return exc.response()

    async def post_input(self, request: Request) -> Response:
        if not _is_json(request.headers.get("content-type")):
            raise HTTPError(415, "Content-Type must be application/json")
        body = await read_body(request, self.settings.max_body_bytes)
        tweets, is_batch = parse_tweets(body, request.headers.get("idempotency-key"), self.settings)
        accepted = accept(tweets)
        ids = [t.id for t in accepted]
        try:
            async with asyncio.timeout(self.settings.publish_timeout_s * 2 + 1):
                await self._publish_coalesced(accepted)
        except (BrokerUnavailable, TimeoutError) as exc:
            message = exc.summary if isinstance(exc, BrokerUnavailable) else "brokers timed out"
            error = HTTPError(503, f"{message}; retry with the same ids", ids=ids)
            return error.response({"Retry-After": str(self.settings.retry_after_s)})
        if is_batch:
            return JSONResponse({"accepted": len(ids), "ids": ids}, status_code=202)
        return JSONResponse({"accepted": 1, "id": ids[0]}, status_code=202)

    @serve.batch(
        max_batch_size=1000,
        batch_wait_timeout_s=0.002,
        max_concurrent_batches=16,
        batch_size_fn=count_tweets,
    )
    async def _publish_coalesced(self, batches: list[list[Tweet]]) -> list[None]:
        """One handle call for many concurrent requests (a hop costs ~0.7 ms of CPU)."""
        await self._publisher.publish.remote(list(itertools.chain.from_iterable(batches)))
        return [None] * len(batches)

    async def get_health(self, request: Request) -> Response:
        try:
            async with asyncio.timeout(self.settings.publish_timeout_s + 1):
                brokers = await self._publisher.health.remote()
        except Exception as exc:  # the publisher itself is unreachable
            brokers = {"publisher": {"ok": False, "detail": f"{type(exc).__name__}: {exc}"}}
        healthy = all(b["ok"] for b in brokers.values())
        body = {"status": "ok" if healthy else "unavailable", "app": {"ok": True}, **brokers}
        return JSONResponse(body, status_code=200 if healthy else 503)

    async def get_stats(self, request: Request) -> Response:
        raw_latest = request.query_params.get("latest", "0")
        if not raw_latest.isdigit():
            raise HTTPError(400, f"latest must be a whole number, got '{raw_latest}'")
        latest = min(int(raw_latest), 1000)

        async def read(tweet_store: store.TweetStore) -> dict[str, Any]:
            try:
                return await tweet_store.read_stats(latest=latest)
            except Exception as exc:  # report the store that is down, keep the other
                return {"error": f"{type(exc).__name__}: {exc}"}

        names = list(self._stores)
        results = await asyncio.gather(*(read(self._stores[n]) for n in names))
        stats = dict(zip(names, results, strict=True))
        status = 503 if any("error" in s for s in results) else 200
        return JSONResponse(stats, status_code=status)

    async def get_openapi(self, request: Request) -> Response:
        return JSONResponse(openapi_document())
