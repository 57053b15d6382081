"""The clients: :class:`AsyncClient` (asyncio) and :class:`Client` (blocking, the same
client driven on an event loop of its own).

``send`` gives every tweet an id before its first attempt, splits the input into batches
within the server's limits, and loops ``send → answer → wait`` per batch (see
:mod:`weather_client.delivery` and :mod:`weather_client.retry`): a 202 is final, a refusal
is final, anything else is sent again with the same ids until the deadline.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, Literal, Protocol, TypeVar

import httpx

from weather_client.delivery import Delivery, Outcome
from weather_client.errors import NotAccepted, WeatherClientError
from weather_client.result import SendResult
from weather_client.retry import Clock, Deadline, RetryPolicy, Uniform, system_uniform
from weather_client.tweets import DEFAULT_BATCH_TWEETS, Tweet, batches

Via = Literal["rest", "ws", "grpc"]
VIAS: tuple[Via, ...] = ("rest", "ws", "grpc")
DEFAULT_URL = "http://127.0.0.1:8000"
T = TypeVar("T")


class Transport(Protocol):
    """Sends one batch and says what the answer means for it."""

    async def send(self, tweets: list[Tweet], timeout_s: float) -> Outcome: ...

    async def aclose(self) -> None: ...


class AsyncClient:
    """Sends tweets to the pipeline and reads its stats, over REST, WebSocket or gRPC."""

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        via: Via = "rest",
        batch: int = DEFAULT_BATCH_TWEETS,
        concurrency: int = 4,
        policy: RetryPolicy | None = None,
        request_timeout_s: float = 30.0,
        grpc_target: str | None = None,
        grpc_application: str | None = None,
        transport: Transport | None = None,
        http: httpx.AsyncClient | None = None,
        clock: Clock = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        uniform: Uniform | None = None,
    ) -> None:
        if via not in VIAS:
            raise ValueError(f"via must be one of {', '.join(VIAS)}, got {via!r}")
        if batch < 1 or concurrency < 1 or request_timeout_s <= 0:
            raise ValueError("batch and concurrency must be >= 1, request_timeout_s > 0")
        self.url = url.rstrip("/")
        self.via = via
        self.batch = batch
        self.concurrency = concurrency
        self.policy = policy or RetryPolicy()
        self.request_timeout_s = request_timeout_s
        self.http = http or httpx.AsyncClient(base_url=self.url, timeout=request_timeout_s)
        self._owns_http = http is None
        self._grpc = (grpc_target, grpc_application)
        self._transport = transport
        self._clock = clock
        self._sleep = sleep
        self._uniform = uniform or system_uniform()
        self._server_limit: int | None = None

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._transport is not None:
            await self._transport.aclose()
        if self._owns_http:
            await self.http.aclose()

    def transport(self) -> Transport:
        """The sender for ``via`` (made on first use, inside the running loop)."""
        if self._transport is None:
            self._transport = self._make_transport()
        return self._transport

    def _make_transport(self) -> Transport:
        if self.via == "ws":
            from weather_client.stream import StreamTransport

            return StreamTransport(self.url)
        if self.via == "grpc":
            from weather_client.grpc import DEFAULT_APPLICATION, DEFAULT_TARGET, GrpcTransport

            target, application = self._grpc
            return GrpcTransport(target or DEFAULT_TARGET, application or DEFAULT_APPLICATION)
        from weather_client.http import RestTransport

        return RestTransport(self.url, self.http)

    async def batch_size(self) -> int:
        """``batch``, but never more than the server's array limit (read once)."""
        if self._server_limit is None:
            from weather_client.http import server_batch_limit

            self._server_limit = await server_batch_limit(self.http)
        return min(self.batch, self._server_limit)

    async def send(
        self,
        tweets: Iterable[Mapping[str, Any]],
        *,
        deadline_s: float | None = None,
        on_batch: Callable[[SendResult], None] | None = None,
    ) -> SendResult:
        """Send every tweet until accepted or refused. Raises :class:`NotAccepted` (naming
        the ids, with the partial result) when ``deadline_s`` (default: the policy's)
        passes first; refusals are in the result, never raised."""
        seconds = self.policy.deadline_s if deadline_s is None else deadline_s
        deadline = Deadline(self._clock() + seconds, self._clock)
        size = await self.batch_size()
        result = SendResult()
        slots = asyncio.Semaphore(self.concurrency)

        async def deliver(batch: list[Tweet]) -> None:
            try:
                delivered = await self.deliver(batch, deadline)
            finally:
                slots.release()
            result.add(delivered)
            if on_batch is not None:
                on_batch(delivered)

        tasks: list[asyncio.Task[None]] = []
        try:
            for batch in batches(tweets, size):
                await slots.acquire()
                tasks.append(asyncio.create_task(deliver(batch)))
        finally:  # a bad input item still lets the batches already sent finish
            await asyncio.gather(*tasks)
        if result.not_accepted:
            raise NotAccepted(result.not_accepted, result, seconds)
        return result

    async def deliver(self, batch: list[Tweet], deadline: Deadline) -> SendResult:
        """One batch (ids given) until every tweet is accepted or refused, or the deadline."""
        delivery = Delivery(batch, self.policy, deadline, self._uniform)
        transport = self.transport()
        while delivery.pending:
            if deadline.expired():
                delivery.give_up()
                break
            sending = delivery.sending()
            timeout_s = min(self.request_timeout_s, deadline.remaining())
            wait = delivery.record(await transport.send(sending, timeout_s))
            if wait is None:
                break
            if wait > 0:
                await self._sleep(wait)
        return delivery.result

    async def stats(self, latest: int = 0) -> dict[str, Any]:
        """``GET /stats``: both stores' counts (a store that cannot be read shows
        ``{"error": ...}``; the server then answers 503, and the body is still returned)."""
        return await self._get_json("/stats", {"latest": latest} if latest else None, (200, 503))

    async def health(self) -> dict[str, Any]:
        """``GET /health``: brokers, admission (each broker's backlog) and store losses."""
        return await self._get_json("/health", None, (200, 503))

    async def _get_json(
        self, path: str, params: dict[str, Any] | None, statuses: tuple[int, ...]
    ) -> dict[str, Any]:
        try:
            response = await self.http.get(path, params=params)
        except httpx.HTTPError as exc:
            raise WeatherClientError(f"GET {self.url}{path}: {exc or type(exc).__name__}") from exc
        try:
            body = response.json()
        except ValueError:
            body = None
        if response.status_code not in statuses or not isinstance(body, dict):
            raise WeatherClientError(
                f"GET {self.url}{path}: HTTP {response.status_code}: {response.text[:300]}"
            )
        return body


class Client:
    """The blocking client: an :class:`AsyncClient` run on a private event loop, so its
    connections live across calls. Not for use inside a running event loop (use
    :class:`AsyncClient` there)."""

    def __init__(self, url: str = DEFAULT_URL, **options: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._async: AsyncClient = self._run(self._make(url, options))

    @staticmethod
    async def _make(url: str, options: dict[str, Any]) -> AsyncClient:
        return AsyncClient(url, **options)

    def _run(self, coroutine: Awaitable[T]) -> T:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return self._loop.run_until_complete(coroutine)
        if asyncio.iscoroutine(coroutine):
            coroutine.close()
        raise RuntimeError("Client blocks; inside a running event loop use AsyncClient")

    @property
    def policy(self) -> RetryPolicy:
        return self._async.policy

    def send(
        self,
        tweets: Iterable[Mapping[str, Any]],
        *,
        deadline_s: float | None = None,
        on_batch: Callable[[SendResult], None] | None = None,
    ) -> SendResult:
        """See :meth:`AsyncClient.send`."""
        return self._run(self._async.send(tweets, deadline_s=deadline_s, on_batch=on_batch))

    def stats(self, latest: int = 0) -> dict[str, Any]:
        return self._run(self._async.stats(latest))

    def health(self) -> dict[str, Any]:
        return self._run(self._async.health())

    def close(self) -> None:
        if not self._loop.is_closed():
            self._run(self._async.aclose())
            self._loop.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
