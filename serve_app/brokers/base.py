"""What every broker shares, with no broker client in it.

A writer keeps one broker connection and reuses it. ``write`` takes encoded chunks
(:mod:`serve_app.model.codec`) and returns only once the broker confirmed every one of them;
otherwise it raises :class:`~serve_app.errors.BrokerUnavailable`. A consumer source hands
out :class:`Delivery` objects and takes back :class:`DeadLetter` ones, which its dead-letter
sink turns into an :class:`Envelope`: plain, bounded, serializable data that any broker can
carry whatever the message held (so a dead letter can always be published, or parked in a
store and published later).
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from serve_app.errors import BrokerUnavailable, describe
from serve_app.model.codec import Chunk
from serve_app.settings import Settings

POISON_REASON_HEADER = "x-poison-reason"
"""Header of a dead letter naming why it could not be counted."""

MAX_DEAD_LETTER_BODY_BYTES = 786_432
"""Largest dead-letter body sent as it is; a longer one is cut (its length in a header), so a
dead letter always fits Kafka's and RabbitMQ's default message limits (1 MiB, 16 MiB)."""
MAX_HEADER_BYTES = 1024
"""Largest header value (and AMQP message id: a shortstr holds 255 bytes) taken from a message."""
MAX_HEADERS = 32
"""Most headers copied from the original message."""
BODY_BYTES_HEADER = "x-original-body-bytes"

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


@dataclass(frozen=True)
class Skipped:
    """Records a broker deleted before the consumer read them (e.g. Kafka retention):
    offsets ``first``..``last`` of ``source`` (``topic/partition``)."""

    source: str
    first: int
    last: int

    @property
    def count(self) -> int:
        return self.last - self.first + 1


def safe_text(value: object, limit: int = MAX_HEADER_BYTES) -> str:
    """Any value as valid UTF-8 text of at most ``limit`` bytes (lone surrogates and other
    unencodable characters escaped, cut on a character boundary): nothing taken from a
    message can then break a broker's encoder."""
    text = value if isinstance(value, str) else repr(value)
    raw = text.encode("utf-8", "backslashreplace")
    return raw[:limit].decode("utf-8", "ignore")


@dataclass(frozen=True)
class Envelope:
    """A dead letter ready for any broker: bounded body, safe reason, id and headers.

    Built by a sink from a :class:`DeadLetter` (the broker-specific origin flattened into
    ``headers``); JSON round-trips it, so it can be parked in a store and sent later.
    """

    body: bytes
    reason: str
    id: str | None = None
    headers: tuple[tuple[str, str], ...] = ()
    key: bytes | None = None

    @classmethod
    def of(
        cls,
        body: bytes,
        reason: str,
        id: object = None,
        headers: Sequence[tuple[object, object]] = (),
        key: bytes | None = None,
    ) -> Envelope:
        """Bound and sanitize everything taken from the message; never raises."""
        extra: list[tuple[str, str]] = []
        if len(body) > MAX_DEAD_LETTER_BODY_BYTES:
            extra.append((BODY_BYTES_HEADER, str(len(body))))
            body = body[:MAX_DEAD_LETTER_BODY_BYTES]
        safe = [(safe_text(k, 128), safe_text(v)) for k, v in list(headers)[:MAX_HEADERS]]
        return cls(
            body=bytes(body),
            reason=safe_text(reason),
            id=None if id is None else safe_text(id, 255),
            headers=tuple(safe + extra),
            key=None if key is None else bytes(key[:MAX_HEADER_BYTES]),
        )

    def to_json(self) -> str:
        return json.dumps(
            {
                "body": base64.b64encode(self.body).decode(),
                "reason": self.reason,
                "id": self.id,
                "headers": [list(h) for h in self.headers],
                "key": None if self.key is None else base64.b64encode(self.key).decode(),
            }
        )

    @classmethod
    def from_json(cls, text: str) -> Envelope:
        data = json.loads(text)
        key = data.get("key")
        return cls(
            body=base64.b64decode(data["body"]),
            reason=data["reason"],
            id=data.get("id"),
            headers=tuple((str(k), str(v)) for k, v in data.get("headers", [])),
            key=None if key is None else base64.b64decode(key),
        )


class DeadLetterSink(Protocol[Origin]):
    """A broker's dead letters: ``envelope`` flattens a letter (pure, never raises);
    ``identity`` names the message it came from, unique and the same on every redelivery
    (None when the broker has no such name; ``redelivered`` then says whether the message
    may have been seen before); ``send`` publishes envelopes, confirmed (a letter the broker
    did not route or refused is a failure), within the sink's own deadline."""

    def envelope(self, letter: DeadLetter[Origin]) -> Envelope: ...

    def identity(self, origin: Origin) -> str | None: ...

    def redelivered(self, origin: Origin) -> bool: ...

    async def send(self, envelopes: Sequence[Envelope]) -> None: ...


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
