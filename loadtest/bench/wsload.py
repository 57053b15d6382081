"""WebSocket load on ``/input/stream``: ``connections`` sockets, each keeping up to
``in_flight`` single-tweet frames unacknowledged (the Gateway's own limit is 8), until the
sending window ends; then every outstanding acknowledgement is awaited (bounded). Runs in
a child process so its CPU is its own. Acks come in frame order, so the latency of an ack
is now - the send time of the oldest unacknowledged frame."""

from __future__ import annotations

import asyncio
import collections
import json
import resource
import time
from typing import Any

ACK_TIMEOUT_S = 10.0
ERROR_SAMPLES = 5


async def _connection(url: str, tag: str, stop_at: float, in_flight: int, out: dict) -> None:
    from websockets.asyncio.client import connect

    from loadtest.tweets import TweetFactory

    factory = TweetFactory(tag)
    sent: collections.deque[float] = collections.deque()
    slots = asyncio.Semaphore(in_flight)
    done = asyncio.Event()
    async with connect(url, open_timeout=10, ping_interval=None, max_size=2**20) as ws:

        async def send() -> None:
            while time.time() < stop_at:
                await slots.acquire()
                if time.time() >= stop_at:
                    break
                frame = json.dumps(factory.one())
                sent.append(time.perf_counter())
                await ws.send(frame)
            done.set()

        async def receive() -> None:
            deadline = stop_at + ACK_TIMEOUT_S
            while not (done.is_set() and not sent) and time.time() < deadline:
                try:
                    message = await asyncio.wait_for(ws.recv(), 0.5)
                except TimeoutError:
                    continue
                out["latencies_ms"].append((time.perf_counter() - sent.popleft()) * 1000)
                slots.release()
                ack = json.loads(message)
                out["frames"] += 1
                if ack.get("status") == 202:
                    out["accepted"] += int(ack.get("accepted", 0))
                else:
                    key = str(ack.get("status"))
                    out["errors"][key] = out["errors"].get(key, 0) + 1
                    if len(out["error_samples"]) < ERROR_SAMPLES:  # what the answer said
                        out["error_samples"].append(message[:500])
            out["unacked"] += len(sent)

        sender = asyncio.create_task(send())
        try:
            await receive()
        finally:
            sender.cancel()  # blocked on a slot only if acks stopped coming


async def _drive(kw: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"frames": 0, "accepted": 0, "unacked": 0, "errors": {},
                           "error_samples": [], "latencies_ms": []}  # fmt: skip
    await asyncio.sleep(max(0.0, kw["start_at"] - time.time()))
    stop_at = kw["start_at"] + kw["duration_s"]
    results = await asyncio.gather(
        *(
            _connection(kw["url"], f"{kw['tag']}-c{i}", stop_at, kw["in_flight"], out)
            for i in range(kw["connections"])
        ),
        return_exceptions=True,
    )
    for exc in results:
        if isinstance(exc, BaseException):
            key = f"client: {type(exc).__name__}"
            out["errors"][key] = out["errors"].get(key, 0) + 1
    return out


def child(kw: dict[str, Any]) -> dict[str, Any]:
    """Entry point of the load process: counts, ack latencies, its own CPU seconds."""
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    out = asyncio.run(_drive(kw))
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    out["cpu_s"] = cpu1.ru_utime - cpu0.ru_utime + cpu1.ru_stime - cpu0.ru_stime
    return out
