"""What every broker shares, with no broker client in it.

A writer keeps one broker connection and reuses it. ``write`` takes encoded chunks
(:mod:`serve_app.model.codec`) and returns only once the broker confirmed every one of them;
otherwise it raises :class:`~serve_app.errors.BrokerUnavailable`. A consumer source hands
out :class:`Delivery` objects and takes back :class:`DeadLetter` ones.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from serve_app.errors import BrokerUnavailable, describe
from serve_app.model.codec import Chunk
from serve_app.settings import Settings

POISON_REASON_HEADER = "x-poison-reason"
"""Header of a dead letter naming why it could not be counted."""

Origin = TypeVar("Origin")


@dataclass(frozen=True)
class Delivery(Generic[Origin]):
    """One broker message; ``origin`` is the driver's own handle on it (record, message)."""

    body: bytes
    origin: Origin


@dataclass(frozen=True)
class DeadLetter(Generic[Origin]):
    """What goes to the dead letters: a bad tweet alone (or an unreadable message whole),
    why, and the message it came from."""

    body: bytes
    reason: str
    origin: Origin
    id: str | None = None


class DeadLetterSink(Protocol[Origin]):
    async def send(self, letters: Sequence[DeadLetter[Origin]]) -> None: ...


class ChunkWriter:
    """Lazy, self-healing connection and a deadline on every broker round trip.

    A driver fills in ``_connect``, ``_connected``, ``_send`` and ``_probe``.
    """

    broker = ""
    by_country = False

    def __init__(self, config: Settings) -> None:
        self.settings = config
        self._connect_lock = asyncio.Lock()

    async def _connect(self) -> None:
        raise NotImplementedError

    def _connected(self) -> bool:
        raise NotImplementedError

    async def _send(self, chunks: Sequence[Chunk]) -> None:
        raise NotImplementedError

    async def _probe(self) -> None:
        raise NotImplementedError

    def _after_failure(self) -> None:
        """Called after any failed round trip; the connection is kept by default."""

    async def _ensure_connected(self) -> None:
        if self._connected():
            return
        async with self._connect_lock:
            if not self._connected():
                await self._connect()

    async def _guarded(self, operation: Callable[[], Awaitable[None]], timeout_s: float) -> None:
        try:
            async with asyncio.timeout(timeout_s):
                await self._ensure_connected()
                await operation()
        except Exception as exc:  # any broker failure means "not confirmed"
            self._after_failure()
            raise BrokerUnavailable(self.broker, describe(exc)) from exc

    async def write(self, chunks: Sequence[Chunk], timeout_s: float) -> int:
        """Publish every chunk and wait for the broker's confirmation of each."""
        await self._guarded(lambda: self._send(chunks), timeout_s)
        return len(chunks)

    async def health(self, timeout_s: float) -> dict[str, Any]:
        """A real round trip to the broker."""
        try:
            await self._guarded(self._probe, timeout_s)
        except BrokerUnavailable as exc:
            return {"ok": False, "detail": exc.reason}
        return {"ok": True, "detail": "reachable"}
