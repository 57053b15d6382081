"""What all WebSocket streams of one Gateway replica may hold together (no Ray in here).

A stream holds one of the replica's request slots for as long as it is open, and the frames
it has read until both brokers confirm them. Without a bound shared by every stream, idle
sockets could take every slot (then ``POST /input`` and ``/health`` wait for ever) and slow
brokers would let frames pile up past the pod's memory. :class:`StreamBudget` counts both:
streams beyond ``max_open`` are closed as they open, and a reader whose frame would take the
replica past ``max_bytes`` waits (it stops reading its socket, so TCP slows its client).
"""

from __future__ import annotations

import asyncio


class StreamBudget:
    """Open streams and frame bytes in flight, for every stream of one replica."""

    def __init__(self, max_open: int, max_bytes: int) -> None:
        self.max_open = max_open
        self.max_bytes = max_bytes
        self.open = 0
        self.bytes_in_flight = 0
        self._freed = asyncio.Condition()

    def try_open(self) -> bool:
        """Count a new stream, unless ``max_open`` are open already."""
        if self.open >= self.max_open:
            return False
        self.open += 1
        return True

    def closed(self) -> None:
        self.open -= 1

    async def take(self, size: int) -> None:
        """Wait until ``size`` more bytes fit (a frame larger than the whole budget goes
        alone, when nothing else is in flight, rather than never)."""
        async with self._freed:
            await self._freed.wait_for(
                lambda: self.bytes_in_flight + size <= self.max_bytes or not self.bytes_in_flight
            )
            self.bytes_in_flight += size

    async def give_back(self, size: int) -> None:
        if not size:
            return
        async with self._freed:
            self.bytes_in_flight -= size
            self._freed.notify_all()

    def report(self) -> dict[str, int]:
        return {
            "open": self.open,
            "max_open": self.max_open,
            "bytes_in_flight": self.bytes_in_flight,
            "max_bytes_in_flight": self.max_bytes,
        }
