"""Stage 1, REST face: ``POST /input``, ``/input/stream`` (WebSocket), ``GET /health``,
``GET /stats``, ``GET /openapi.json``.

A Starlette application over :class:`serve_app.ingest.core.Ingest` (no Ray in here: the
``Gateway`` deployment serves it, the unit tests call it with Starlette's TestClient).
Starlette's own routing answers unknown paths with 404 and wrong methods with 405 + ``Allow``.

Every request a client can send gets a 2xx or a 4xx that names what is wrong; a failure on
our side is a 503 with ``Retry-After`` and the ids to retry with, never a 500. Bodies are
JSON per RFC 8259: UTF-8 without a byte order mark, no NaN/Infinity, no duplicate keys, at
most ``max_json_depth`` levels deep.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from serve_app.errors import PipelineError, PublishFailed, describe
from serve_app.ingest.core import (
    FaceMetrics,
    Ingest,
    IngestLimits,
    accept,
    distinct,
    id_conflicts,
)
from serve_app.ingest.limiter import GradientLimiter
from serve_app.ingest.openapi import openapi_document
from serve_app.ingest.streams import StreamBudget
from serve_app.model.exposure import TokenCheck, may_see_ids, without_ids
from serve_app.model.metrics import OVERLOAD_REFUSED
from serve_app.model.schema import (
    Tweet,
    TweetIn,
    TweetValidationError,
    decode_tweets,
    valid_id,
)

log = logging.getLogger("ray.serve")

Publish = Callable[[list[Tweet]], Awaitable[None]]
ReadStats = Callable[[int], Awaitable[tuple[dict[str, Any], bool]]]
Background = Callable[[], Awaitable[None]]
MAX_LATEST = 1000
HEALTH_STORES_TIMEOUT_S = 1.0
"""How long /health waits for the stores' loss counters before it answers without them."""
Answer = tuple[int, dict[str, Any]]
"""A publish request's outcome on any transport: HTTP status and JSON body."""


class HTTPError(PipelineError):
    """An error answer: status code, a message naming what is wrong, optional details."""

    def __init__(self, status: int, message: str, **details: Any) -> None:
        self.status = status
        self.message = message
        self.details = details
        super().__init__(message)

    def response(self, headers: dict[str, str] | None = None) -> JSONResponse:
        body = {"error": self.message, **self.details}
        return JSONResponse(body, status_code=self.status, headers=headers)


def check_content_type(content_type: str | None) -> None:
    """``application/json`` (or ``+json``), and if a charset is given it must be UTF-8."""
    media_type, _, params = (content_type or "").partition(";")
    media_type = media_type.strip().lower()
    if not (
        media_type == "application/json"
        or (media_type.startswith("application/") and media_type.endswith("+json"))
    ):
        raise HTTPError(415, "Content-Type must be application/json")
    for param in params.split(";"):
        name, _, value = param.partition("=")
        if name.strip().lower() == "charset" and value.strip().strip('"').lower() != "utf-8":
            raise HTTPError(415, f"charset must be utf-8, got {value.strip()!r}")


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


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON (RFC 8259)")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    document = dict(pairs)
    if len(document) != len(pairs):
        seen: set[str] = set()
        twice = next(k for k, _ in pairs if k in seen or seen.add(k))
        raise ValueError(f"duplicate key {twice!r}")
    return document


def _depth_exceeds(document: Any, limit: int) -> bool:
    """Whether arrays/objects nest deeper than ``limit`` (breadth first, no recursion)."""
    level, depth = [document], 0
    while level:
        containers = [x for x in level if isinstance(x, list | dict)]
        if not containers:
            return False
        depth += 1
        if depth > limit:
            return True
        level = [v for c in containers for v in (c.values() if isinstance(c, dict) else c)]
    return False


def _too_deep(max_depth: int) -> HTTPError:
    return HTTPError(400, f"malformed JSON: nested deeper than {max_depth} levels")


def check_depth(document: Any, max_depth: int) -> None:
    """A 400 if arrays/objects nest deeper than ``max_depth``."""
    if _depth_exceeds(document, max_depth):
        raise _too_deep(max_depth)


def parse_json(body: bytes, max_depth: int) -> Any:
    """Strict RFC 8259 JSON; every refusal is a 400 naming the problem. Nesting beyond
    ``max_depth`` is refused only where the parser itself would recurse too far: the
    caller checks the depth (:func:`check_depth`) of what it does not accept anyway."""
    if body.startswith(b"\xef\xbb\xbf"):
        raise HTTPError(400, "malformed JSON: a byte order mark is not allowed (RFC 8259)")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise HTTPError(400, f"malformed JSON: not UTF-8 at byte {exc.start}") from None
    try:
        return json.loads(text, parse_constant=_reject_constant, object_pairs_hook=_unique_keys)
    except RecursionError:
        raise _too_deep(max_depth) from None
    except ValueError as exc:  # JSONDecodeError is a ValueError
        raise HTTPError(400, f"malformed JSON: {exc}") from None


def parse_tweets(
    body: bytes, idempotency_key: str | None, ingest: Ingest
) -> tuple[list[TweetIn], bool]:
    """Decode and validate a body holding one tweet or an array of them.

    Returns the validated tweets and whether the body was a batch. A body nested deeper
    than ``max_json_depth`` is a 400 whatever else is wrong with it; one that validates is
    a tweet object or an array of them, whose fields are strings (depth <= 2 <=
    ``max_json_depth``), so only a body refused anyway needs the depth walk (it cost a
    third of the parsing of an array of 100).
    """
    fast = fast_tweets(body, idempotency_key, ingest)
    if fast is not None:
        return fast
    return parse_tweets_carefully(body, idempotency_key, ingest)


def parse_tweets_carefully(
    body: bytes, idempotency_key: str | None, ingest: Ingest
) -> tuple[list[TweetIn], bool]:
    """:func:`parse_tweets` without its fast path: every rule, and every refusal named."""
    max_depth = ingest.limits.max_json_depth
    document = parse_json(body, max_depth)
    try:
        return _tweets_of(document, idempotency_key, ingest)
    except HTTPError:
        check_depth(document, max_depth)
        raise


def fast_tweets(
    body: bytes, idempotency_key: str | None, ingest: Ingest
) -> tuple[list[TweetIn], bool] | None:
    """:func:`parse_tweets` of a request it accepts, in one msgspec pass (a few µs a tweet);
    None for any request it might refuse, which the careful path then decides and names."""
    decoded = decode_tweets(body, ingest.rules)
    if decoded is None:
        return None
    if isinstance(decoded, TweetIn):
        if idempotency_key is not None:
            if decoded.id not in (None, idempotency_key) or not valid_id(idempotency_key):
                return None
            decoded.id = idempotency_key
        return [decoded], False
    if idempotency_key is not None or not 1 <= len(decoded) <= ingest.limits.max_batch_tweets:
        return None
    if id_conflicts(decoded):
        return None
    return decoded, True


def _tweets_of(
    document: Any, idempotency_key: str | None, ingest: Ingest
) -> tuple[list[TweetIn], bool]:
    limits = ingest.limits
    if isinstance(document, dict):
        if idempotency_key is not None:
            if "id" in document and document["id"] != idempotency_key:
                raise HTTPError(422, "the Idempotency-Key header and the id field differ")
            document = {**document, "id": idempotency_key}
        items, is_batch = [document], False
    elif isinstance(document, list):
        if idempotency_key is not None:
            raise HTTPError(422, "Idempotency-Key applies to a single tweet; give each item an id")
        if not 1 <= len(document) <= limits.max_batch_tweets:
            raise HTTPError(
                422, f"a batch holds 1 to {limits.max_batch_tweets} tweets, got {len(document)}"
            )
        items, is_batch = document, True
    else:
        kind = type(document).__name__ if document is not None else "null"
        raise HTTPError(
            422, f"expected a tweet object or an array of tweets as the JSON body, got {kind}"
        )
    try:
        return ingest.validate(items, index_errors=is_batch), is_batch
    except TweetValidationError as exc:
        raise HTTPError(422, summarize(exc.errors), details=exc.errors) from None


def summarize(errors: Sequence[dict[str, Any]], shown: int = 3) -> str:
    """The ``error`` of a 422: where the first problems are (field, and index in a batch)."""
    parts = [f"{_where(e['loc'])}: {e['msg']}" for e in errors[:shown]]
    more = f" (and {len(errors) - shown} more, see details)" if len(errors) > shown else ""
    return f"invalid tweet: {'; '.join(parts)}{more}"


def _where(loc: Sequence[Any]) -> str:
    """``weather``, ``tweets[1].weather``, or ``tweets[1]`` when the item itself is wrong."""
    index = [f"tweets[{part}]" for part in loc if isinstance(part, int)]
    fields = [str(part) for part in loc if not isinstance(part, int)]
    return ".".join(index + fields) or "tweet"


def unavailable(message: str, ids: Sequence[str], **details: Any) -> Answer:
    """503 + the ids: the one answer for any failure on our side (Retry-After is added by
    the transport: a header on HTTP, a field of the acknowledgement on a WebSocket)."""
    return 503, {"error": f"{message}; retry with the same ids", "ids": list(ids), **details}


async def submit(
    body: bytes, idempotency_key: str | None, ingest: Ingest, publish: Publish, counted: FaceMetrics
) -> Answer:
    """One publish request, whichever transport carried it: parse, validate, give ids,
    publish once per distinct tweet. Bad input raises :class:`HTTPError` (4xx); every
    failure of ours is a 503 answer naming the ids to retry with."""
    tweets, is_batch = parse_tweets(body, idempotency_key, ingest)
    accepted = accept(tweets)
    ids = [t.id for t in accepted]
    unique = distinct(accepted)
    try:
        await publish(unique)
    except PublishFailed as exc:
        counted.unavailable("503", exc)
        return unavailable(str(exc), ids, brokers=exc.reasons)
    except Exception as exc:  # a dead writer, a bug: still ours, still retryable
        log.warning("publish failed: %s", describe(exc), exc_info=exc)
        counted.unavailable("503", exc)
        return unavailable(f"publish failed ({describe(exc)})", ids)
    counted.accepted(len(unique))
    if is_batch:
        return 202, {"accepted": len(unique), "ids": ids}
    return 202, {"accepted": 1, "id": ids[0]}


def overloaded(limit: int, idempotency_key: str | None) -> Answer:
    """The answer to a request refused at the concurrency limit, before its body was read:
    the only id it can name is the one the client sent in ``Idempotency-Key`` (none given
    means none was assigned: nothing was accepted, the same body may simply be sent again)."""
    ids = [idempotency_key] if idempotency_key else []
    return unavailable(f"overloaded: this replica has {limit} requests in flight", ids)


def http_answer(answer: Answer, limits: IngestLimits) -> JSONResponse:
    status, body = answer
    headers = {"Retry-After": str(limits.retry_after_s)} if status == 503 else None
    return JSONResponse(body, status_code=status, headers=headers)


Take = Callable[[dict[str, Any]], Awaitable[Answer]]
"""Publishes one WebSocket message (the ASGI ``websocket.receive`` event)."""


def frame_body(message: dict[str, Any], limits: IngestLimits) -> bytes:
    """A text frame is a ``POST /input`` body, under the same size limit."""
    text = message.get("text")
    if text is None:
        raise HTTPError(415, "send each tweet or array of tweets as a JSON text frame")
    body = text.encode()
    if len(body) > limits.max_body_bytes:
        raise HTTPError(413, f"frame exceeds the limit of {limits.max_body_bytes} bytes")
    return body


async def frame_answer(
    frame: int, message: dict[str, Any], limits: IngestLimits, take: Take
) -> dict[str, Any]:
    """The acknowledgement of one frame: ``status`` and body are what ``POST /input`` would
    have answered, plus the frame's number (from 0) and ``retry_after`` on a 503."""
    try:
        status, answer = await take(message)
    except HTTPError as exc:
        status, answer = exc.status, {"error": exc.message, **exc.details}
    retry = {"retry_after": limits.retry_after_s} if status == 503 else {}
    return {"frame": frame, "status": status, **answer, **retry}


IDLE_CLOSE_CODE = 1000  # normal closure: the client may simply open a new stream
BUSY_CLOSE_CODE = 1013  # "try again later": the replica serves as many streams as it may


def frame_size(message: dict[str, Any]) -> int:
    """Bytes a received frame holds (text or binary; a disconnect holds none)."""
    return len(message.get("text") or "") + len(message.get("bytes") or b"")


async def stream_frames(
    websocket: WebSocket, limits: IngestLimits, take: Take, budget: StreamBudget
) -> None:
    """Read frames and publish up to ``stream_max_in_flight`` of them at once, acknowledging
    each in the order it came. At the bound, or while the replica's frames in flight are at
    ``budget``'s bytes, the reader stops reading until the oldest frame is acknowledged, so a
    client that sends faster than both brokers confirm fills its TCP window instead of our
    memory. A stream that sends nothing for ``stream_idle_timeout_s`` is answered what it
    sent and then closed. A client that leaves gets no more acknowledgements; the frames
    already being published finish (and are answered to nobody)."""
    slots = asyncio.Semaphore(limits.stream_max_in_flight)
    pending: asyncio.Queue[tuple[asyncio.Task[dict[str, Any]], int] | None] = asyncio.Queue()
    held = [0]  # frame bytes this stream holds in the replica's budget
    idle = [False]

    async def read() -> None:
        for frame in itertools.count():
            await slots.acquire()
            try:
                async with asyncio.timeout(limits.stream_idle_timeout_s):
                    message = await websocket.receive()
            except TimeoutError:
                idle[0] = True
                break
            if message["type"] == "websocket.disconnect":
                break
            size = frame_size(message)
            await budget.take(size)
            held[0] += size
            task = asyncio.create_task(frame_answer(frame, message, limits, take))
            pending.put_nowait((task, size))
        pending.put_nowait(None)

    async def acknowledge() -> None:
        while (item := await pending.get()) is not None:
            task, size = item
            await websocket.send_json(await task)
            held[0] -= size
            await budget.give_back(size)
            slots.release()

    reader, sender = asyncio.create_task(read()), asyncio.create_task(acknowledge())
    try:
        await asyncio.wait((reader, sender), return_when=asyncio.FIRST_EXCEPTION)
        if idle[0] and sender.done() and sender.exception() is None:
            reason = f"no frame for {limits.stream_idle_timeout_s:g} s"
            await websocket.close(code=IDLE_CLOSE_CODE, reason=reason)
    finally:
        for task in (reader, sender):
            task.cancel()
            with contextlib.suppress(
                asyncio.CancelledError, WebSocketDisconnect, RuntimeError, OSError
            ):
                await task
        await budget.give_back(held[0])


async def serve_stream(
    websocket: WebSocket, limits: IngestLimits, take: Take, budget: StreamBudget
) -> None:
    """One ``/input/stream`` connection, within the replica's stream budget."""
    await websocket.accept()
    if not budget.try_open():
        reason = f"this replica serves {budget.max_open} streams already: retry later"
        await websocket.close(code=BUSY_CLOSE_CODE, reason=reason)
        return
    try:
        await stream_frames(websocket, limits, take, budget)
    finally:
        budget.closed()


def after_ingest(stats: dict[str, Any]) -> dict[str, int]:
    """What the stores report went wrong after ingest, per store: records a broker deleted
    before they were counted (``skipped``) and dead letters waiting in the store because
    their broker could not take them (``parked_dead_letters``). Any of them makes /health
    "degraded" (still 200: a readiness probe must not take the replica that answers 503s
    away); a store that cannot be read is left out (its broker's health says more)."""
    losses: dict[str, int] = {}
    for name, store in stats.items():
        if isinstance(store, dict) and "error" not in store:
            losses[f"{name}_skipped"] = sum(store.get("skipped", {}).values())
            losses[f"{name}_parked_dead_letters"] = int(store.get("parked_dead_letters", 0))
    return losses


def build_rest_app(
    ingest: Ingest,
    publish: Publish,
    read_stats: ReadStats,
    extra_routes: Sequence[BaseRoute] = (),
    background: Background | None = None,
    ids_check: TokenCheck | None = None,
    concurrency: GradientLimiter | None = None,
) -> Starlette:
    """The REST face. ``publish`` owns the deadline (the Gateway's coalesced write);
    ``read_stats(latest)`` returns both stores' counts and whether all answered;
    ``background`` runs for the app's lifetime (the Gateway's backlog poller);
    ``concurrency`` bounds the ``POST /input`` requests in flight (503 beyond it)."""
    limits = ingest.limits
    counted = ingest.face_metrics("rest")
    streamed = ingest.face_metrics("stream")
    streams = StreamBudget(limits.stream_max_open, limits.stream_max_bytes_in_flight)

    async def post_input(request: Request) -> Response:
        if concurrency is not None and not concurrency.try_acquire():
            ingest.metrics.inc(OVERLOAD_REFUSED, face="rest")
            key = request.headers.get("idempotency-key")
            return http_answer(overloaded(concurrency.limit, key), limits)
        try:
            check_content_type(request.headers.get("content-type"))
            body = await read_body(request, limits.max_body_bytes)
            key = request.headers.get("idempotency-key")
            return http_answer(await submit(body, key, ingest, publish, counted), limits)
        except HTTPError as exc:
            counted.rejected(str(exc.status))
            raise
        finally:
            if concurrency is not None:
                concurrency.release()

    async def take_frame(message: dict[str, Any]) -> Answer:
        try:
            return await submit(frame_body(message, limits), None, ingest, publish, streamed)
        except HTTPError as exc:
            streamed.rejected(str(exc.status))
            raise

    async def input_stream(websocket: WebSocket) -> None:
        await serve_stream(websocket, limits, take_frame, streams)

    async def get_health(request: Request) -> Response:
        brokers = await ingest.health()
        healthy = all(b["ok"] for b in brokers.values())
        admission = ingest.admission.report()
        admitting = all(a["admitting"] for a in admission.values())
        try:  # bounded: /health is the readiness probe, a slow store must not fail it
            async with asyncio.timeout(HEALTH_STORES_TIMEOUT_S):
                losses = after_ingest((await read_stats(0))[0])
        except TimeoutError:
            losses = {}
        poller = ingest.admission.poller
        polling = background is None or poller.running
        fine = admitting and polling and not any(losses.values())
        status = "unavailable" if not healthy else "ok" if fine else "degraded"
        body = {"status": status, "app": {"ok": True}, **brokers, "admission": admission}
        if background is not None:
            body["admission_poller"] = poller.report()
        body["streams"] = streams.report()
        if concurrency is not None:
            body["concurrency"] = concurrency.report()
        body["stores"] = losses
        return JSONResponse(body, status_code=200 if healthy else 503)

    async def get_stats(request: Request) -> Response:
        raw_latest = request.query_params.get("latest", "0")
        digits = raw_latest.isascii() and raw_latest.isdigit() and len(raw_latest) <= 6
        if not (digits and int(raw_latest) <= MAX_LATEST):
            raise HTTPError(400, f"latest must be a whole number 0-{MAX_LATEST}")
        stats, complete = await read_stats(int(raw_latest))
        client = request.client.host if request.client else None
        if not may_see_ids(client, request.headers, ids_check):
            stats = without_ids(stats)  # an id is what a takeover needs (model/exposure.py)
        return JSONResponse(stats, status_code=200 if complete else 503)

    async def get_openapi(request: Request) -> Response:
        return JSONResponse(openapi_document(limits))

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPError)
        return exc.response()

    async def starlette_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        message = {404: f"no route {request.url.path}", 405: f"{request.method} not allowed"}
        body = {"error": message.get(exc.status_code, exc.detail)}
        return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        """Run ``background`` while the app serves; cancel it when the replica stops."""
        if background is None:
            yield
            return
        task = asyncio.create_task(background())
        try:
            yield
        finally:
            task.cancel()
            await asyncio.wait([task])

    routes: list[BaseRoute] = [
        Route("/input", post_input, methods=["POST"]),
        WebSocketRoute("/input/stream", input_stream),
        Route("/health", get_health, methods=["GET"]),
        Route("/stats", get_stats, methods=["GET"]),
        Route("/openapi.json", get_openapi, methods=["GET"]),
        *extra_routes,
    ]
    return Starlette(
        routes=routes,
        exception_handlers={HTTPError: http_error, HTTPException: starlette_error},
        lifespan=lifespan,
    )
