"""Freshness probe: a low, fixed rate of tagged tweets, each timed until it is counted.

Every ``1/rate`` s the probe POSTs one tweet with its own id to ``/input`` and notes the
send time; a poller checks every ``poll_s`` whether the id's seen-marker exists in Redis
and in Valkey (the consumers set it in the same Lua call that bumps the counters).
Freshness = first time the poller sees it counted - send time. That is an upper bound on
accepted_at -> counted (it includes the accept latency and up to ``poll_s`` of polling).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from dataclasses import dataclass, field

import httpx

from loadtest.counters import HTTP_BASE, Counters
from loadtest.tweets import TweetFactory


@dataclass
class ProbeResult:
    sent: int = 0
    accepted: int = 0
    redis_ms: list[float] = field(default_factory=list)
    valkey_ms: list[float] = field(default_factory=list)
    missing_redis: int = 0
    missing_valkey: int = 0


class Probe:
    def __init__(self, counters: Counters, rate: float = 5.0, poll_s: float = 0.01) -> None:
        self.counters = counters
        self.rate = rate
        self.poll_s = poll_s
        self.factory = TweetFactory(f"probe-{uuid.uuid4().hex[:8]}")
        self.result = ProbeResult()
        self._pending: dict[str, tuple[float, float | None, float | None]] = {}
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        if self.rate <= 0:
            return
        self._client = httpx.AsyncClient(base_url=HTTP_BASE, timeout=10)
        self._tasks = [asyncio.create_task(self._send_loop()), asyncio.create_task(self._poll())]

    async def _send_one(self) -> None:
        tweet = self.factory.one()
        sent_at = time.monotonic()
        self.result.sent += 1
        try:
            resp = await self._client.post("/input", json=tweet)
        except httpx.HTTPError:
            return
        if resp.status_code == 202:
            self.result.accepted += 1
            self._pending[tweet["id"]] = (sent_at, None, None)

    async def _send_loop(self) -> None:
        interval = 1.0 / self.rate
        next_at = time.monotonic()
        sends: set[asyncio.Task[None]] = set()
        while not self._stop.is_set():
            task = asyncio.create_task(self._send_one())
            sends.add(task)
            task.add_done_callback(sends.discard)
            next_at += interval
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), max(0.0, next_at - time.monotonic()))
        if sends:
            await asyncio.wait(sends, timeout=15)

    async def _poll(self) -> None:
        while not (self._stop.is_set() and self._senders_done() and not self._pending):
            ids = list(self._pending)
            if ids:
                try:
                    in_redis, in_valkey = await self.counters.counted(ids)
                except Exception:  # noqa: BLE001 - a slow read just delays the sample
                    in_redis = in_valkey = [False] * len(ids)
                now = time.monotonic()
                for tweet_id, r, v in zip(ids, in_redis, in_valkey, strict=True):
                    sent_at, at_r, at_v = self._pending[tweet_id]
                    at_r = at_r if at_r is not None else (now if r else None)
                    at_v = at_v if at_v is not None else (now if v else None)
                    if at_r is not None and at_v is not None:
                        del self._pending[tweet_id]
                        self.result.redis_ms.append((at_r - sent_at) * 1000)
                        self.result.valkey_ms.append((at_v - sent_at) * 1000)
                    else:
                        self._pending[tweet_id] = (sent_at, at_r, at_v)
            await asyncio.sleep(self.poll_s)

    def _senders_done(self) -> bool:
        return self._tasks[0].done() if self._tasks else True

    async def stop_sending(self) -> None:
        self._stop.set()
        if self._tasks:
            await asyncio.wait_for(self._tasks[0], timeout=20)

    async def finish(self, timeout: float = 60.0) -> ProbeResult:
        """Wait (bounded) until every accepted probe tweet is counted in both stores."""
        self._stop.set()
        if self._tasks:
            try:
                await asyncio.wait_for(asyncio.gather(*self._tasks), timeout=timeout)
            except TimeoutError:
                for task in self._tasks:
                    task.cancel()
            await self._client.aclose()
        for _, at_r, at_v in self._pending.values():
            self.result.missing_redis += at_r is None
            self.result.missing_valkey += at_v is None
        return self.result
