"""``/input/stream``: each batch is one JSON text frame; the server answers every frame, in
order, with ``{"frame", "status", ...}`` (what ``POST /input`` would have answered, plus
``retry_after`` on a 503).

Several batches share one connection, each waiting for its own acknowledgement. When the
connection is lost (or an acknowledgement is late, after which the order can no longer be
trusted) every frame still unacknowledged is answered as a retryable failure, and the
retry opens a new connection and sends the same ids again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import WebSocketException

from weather_client.delivery import Outcome, Retry, classify_answer
from weather_client.tweets import Tweet

STREAM_PATH = "/input/stream"
MAX_MESSAGE_BYTES = 2**22
CLOSE_TIMEOUT_S = 2.0


def stream_url(base_url: str) -> str:
    """``ws(s)://host:port/input/stream`` from the REST base URL."""
    scheme, sep, rest = base_url.rstrip("/").partition("://")
    if not sep:
        raise ValueError(f"a URL with a scheme is needed, got {base_url!r}")
    ws_scheme = {"http": "ws", "https": "wss"}.get(scheme.lower(), scheme.lower())
    return f"{ws_scheme}://{rest}{STREAM_PATH}"


class _Connection:
    """One WebSocket and the frames sent on it that still wait for their acknowledgement."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.waiting: deque[tuple[int, asyncio.Future[Outcome]]] = deque()
        self.next_frame = 0
        self.reader: asyncio.Task[None] | None = None
        self.lost = False

    def expect(self) -> asyncio.Future[Outcome]:
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self.waiting.append((self.next_frame, future))
        self.next_frame += 1
        return future

    def acknowledge(self, ack: Any) -> None:
        """Answer the oldest waiting frame; a frame number out of order is a lost stream."""
        if not self.waiting:
            raise ValueError("an acknowledgement arrived for no frame")
        frame, future = self.waiting.popleft()
        if not isinstance(ack, dict) or ack.get("frame") != frame:
            problem = f"expected the acknowledgement of frame {frame}, got {ack!r:.200}"
            future.set_result(Retry("ProtocolError", problem))
            raise ValueError(problem)
        retry_after = ack.get("retry_after")
        seconds = float(retry_after) if isinstance(retry_after, int | float) else None
        outcome = classify_answer(int(ack.get("status", 0)), ack, seconds)
        if not future.done():
            future.set_result(outcome)

    def fail_all(self, kind: str, reason: str) -> None:
        self.lost = True
        while self.waiting:
            _, future = self.waiting.popleft()
            if not future.done():
                future.set_result(Retry(kind, reason))


class StreamTransport:
    """Sends batches as frames of one shared ``/input/stream`` connection."""

    def __init__(
        self, base_url: str, connector: Callable[..., Awaitable[ClientConnection]] = connect
    ) -> None:
        self.url = stream_url(base_url)
        self._connector = connector
        self._connection: _Connection | None = None
        self._lock = asyncio.Lock()

    async def send(self, tweets: Sequence[Tweet], timeout_s: float) -> Outcome:
        frame = json.dumps(list(tweets), ensure_ascii=False, separators=(",", ":"))
        async with self._lock:  # frames go out in the order their futures were queued
            try:
                connection = await self._connect(timeout_s)
            except (OSError, TimeoutError, WebSocketException) as exc:
                return Retry(type(exc).__name__, f"cannot open {self.url}: {exc}")
            future = connection.expect()
            try:
                await connection.ws.send(frame)
            except (OSError, WebSocketException) as exc:
                await self._lose(connection, type(exc).__name__, str(exc))
        try:
            return await asyncio.wait_for(asyncio.shield(future), timeout_s)
        except TimeoutError:
            reason = f"no acknowledgement within {timeout_s:g} s"
            await self._lose(connection, "TimeoutError", reason)
            if not future.done():  # answered by nobody else: still a retryable failure
                future.set_result(Retry("TimeoutError", reason))
            return future.result()

    async def _connect(self, timeout_s: float) -> _Connection:
        if self._connection is not None and not self._connection.lost:
            return self._connection
        ws = await self._connector(
            self.url,
            max_size=MAX_MESSAGE_BYTES,
            open_timeout=timeout_s,
            close_timeout=CLOSE_TIMEOUT_S,
        )
        connection = _Connection(ws)
        connection.reader = asyncio.create_task(self._read(connection))
        self._connection = connection
        return connection

    async def _read(self, connection: _Connection) -> None:
        """Hand every acknowledgement to its frame until the connection ends."""
        kind, reason = "ConnectionClosed", "the server closed the stream"
        try:
            async for message in connection.ws:
                connection.acknowledge(json.loads(message))
        except (OSError, WebSocketException, ValueError, TypeError) as exc:
            kind, reason = type(exc).__name__, str(exc)
        await self._lose(connection, kind, reason, from_reader=True)

    async def _lose(
        self, connection: _Connection, kind: str, reason: str, from_reader: bool = False
    ) -> None:
        """Answer every waiting frame as retryable and close the connection."""
        connection.fail_all(kind, reason)
        if self._connection is connection:
            self._connection = None
        if connection.reader is not None and not from_reader:
            connection.reader.cancel()
        with contextlib.suppress(OSError, WebSocketException, TimeoutError):
            await connection.ws.close()

    async def aclose(self) -> None:
        if self._connection is not None:
            await self._lose(self._connection, "Closed", "the client closed the stream")
