"""Open-loop HTTP load: requests leave on a fixed schedule (a constant arrival rate), not
when a connection is free, so an overloaded server cannot slow the sender down (wrk's
closed loop would). Raw HTTP/1.1 keep-alive on asyncio streams, run in child processes
(each sends every ``processes``-th slot), so the bench's own event loop is not the limit.

Every request is recorded as (scheduled offset s, send lag ms, latency ms, status);
status 0 = timeout or connection error, -1 = no connection free and the cap reached.
The send lag shows whether the generator itself kept to its schedule. With ``keep_ids``
a child also returns the id of every tweet answered 202, so that each can be looked for
in both stores.
"""

from __future__ import annotations

import asyncio
import json
import math
import resource
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

from loadtest.bench.measure import percentile

Record = tuple[float, float, float, int]
NO_CONNECTION = -1
FAILED = 0


def schedule(phases: list[tuple[float, float]], share: int = 0, shares: int = 1) -> list[float]:
    """Send offsets (s from the start) for ``phases`` of (rate/s, seconds) in a row; this
    sender takes every ``shares``-th slot starting at ``share``, so senders interleave."""
    offsets: list[float] = []
    start = 0.0
    for rate, seconds in phases:
        count = math.ceil(rate * seconds - 1e-9) if rate > 0 and seconds > 0 else 0
        offsets += [start + i / rate for i in range(share, count, shares)]
        start += seconds
    return offsets


def request_bytes(host: str, path: str, body: bytes) -> bytes:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bool, bool]:
    """(status, keep-alive, has Retry-After) of one response; its body is read and dropped."""
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").lower()
    status = int(head[9:12])
    length = next((int(x.split(":", 1)[1]) for x in head.split("\r\n")
                   if x.startswith("content-length:")), None)  # fmt: skip
    if length is not None:
        await reader.readexactly(length)
    elif "transfer-encoding: chunked" in head:
        while size := int((await reader.readline()).strip() or b"0", 16):
            await reader.readexactly(size + 2)
        await reader.readline()
    return status, "connection: close" not in head, "retry-after:" in head


@dataclass
class Sender:
    """One child's connections and records."""

    host: str
    port: int
    path: str
    timeout_s: float
    max_connections: int

    def __post_init__(self) -> None:
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self.opened = 0
        self.records: list[Record] = []
        self.retry_after = 0
        self.accepted_ids: list[str] | None = None  # kept only when asked (not in a soak)

    async def one(self, offset: float, lag_ms: float, payload: bytes, tweet_id: str) -> None:
        conn = self.idle.pop() if self.idle else None
        if conn is None and self.opened >= self.max_connections:
            self.records.append((offset, lag_ms, 0.0, NO_CONNECTION))
            return
        sent = time.perf_counter()
        try:
            if conn is None:
                self.opened += 1
                conn = await asyncio.wait_for(
                    asyncio.open_connection(self.host, self.port), self.timeout_s
                )
            conn[1].write(payload)
            status, keep, retry = await asyncio.wait_for(read_response(conn[0]), self.timeout_s)
        except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError):
            self.records.append((offset, lag_ms, (time.perf_counter() - sent) * 1000, FAILED))
            self._drop(conn)
            return
        self.records.append((offset, lag_ms, (time.perf_counter() - sent) * 1000, status))
        self.retry_after += retry and status == 503
        if status == 202 and self.accepted_ids is not None:
            self.accepted_ids.append(tweet_id)
        if keep:
            self.idle.append(conn)
        else:
            self._drop(conn)

    def _drop(self, conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None) -> None:
        self.opened -= 1
        if conn is not None:
            conn[1].close()


async def _drive(sender: Sender, offsets: list[float], start_at: float, tag: str) -> None:
    from loadtest.tweets import TweetFactory

    factory = TweetFactory(tag)
    host = f"{sender.host}:{sender.port}"
    tasks: set[asyncio.Task[None]] = set()
    await asyncio.sleep(max(0.0, start_at - time.time()))
    for offset in offsets:
        tweet = factory.one()
        payload = request_bytes(host, sender.path, json.dumps(tweet).encode())
        wait = start_at + offset - time.time()
        if wait > 0:
            await asyncio.sleep(wait)
        lag_ms = max(0.0, -wait) * 1000
        task = asyncio.create_task(sender.one(offset, lag_ms, payload, tweet["id"]))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.wait(tasks, timeout=sender.timeout_s + 5)
    for _, writer in sender.idle:
        writer.close()


async def _bucketed(sender: Sender, drive: Any, bucket_s: float, out: list[dict]) -> None:
    """Summarize and drop the records every ``bucket_s`` (a soak would hold millions)."""
    task = asyncio.create_task(drive)
    while not task.done():
        await asyncio.wait({task}, timeout=bucket_s)
        records, sender.records = sender.records, []
        out.append(summarize(records, bucket_s))
    await task


def child(kw: dict[str, Any]) -> dict[str, Any]:
    """Entry point of one sender process: its records (or, with ``bucket_s``, a summary
    per bucket) and its own CPU seconds."""
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    sender = Sender(kw["host"], kw["port"], kw["path"], kw["timeout_s"], kw["max_connections"])
    if kw.get("keep_ids"):
        sender.accepted_ids = []
    offsets = schedule(kw["phases"], kw["share"], kw["shares"])
    drive = _drive(sender, offsets, kw["start_at"], kw["tag"])
    buckets: list[dict[str, Any]] = []
    if kw.get("bucket_s"):
        asyncio.run(_bucketed(sender, drive, kw["bucket_s"], buckets))
    else:
        asyncio.run(drive)
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = cpu1.ru_utime - cpu0.ru_utime + cpu1.ru_stime - cpu0.ru_stime
    return {"records": sender.records, "buckets": buckets, "cpu_s": cpu,
            "retry_after": sender.retry_after,
            "accepted_ids": sender.accepted_ids or []}  # fmt: skip


def window(records: list[Record], start: float, end: float) -> list[Record]:
    return [r for r in records if start <= r[0] < end]


def summarize(records: list[Record], seconds: float) -> dict[str, Any]:
    """Counts, rates and latency per outcome of the requests scheduled in one phase."""
    ok = sorted(r[2] for r in records if r[3] == 202)
    refused = sorted(r[2] for r in records if r[3] == 503)
    lags = sorted(r[1] for r in records if r[3] != NO_CONNECTION)
    sent = sum(r[3] != NO_CONNECTION for r in records)
    others = other_statuses(records)
    return {
        "scheduled": len(records),
        "sent": sent,
        "sent_per_s": round(sent / seconds, 1) if seconds else None,
        "accepted_n": len(ok),
        "accepted_per_s": round(len(ok) / seconds, 1) if seconds else None,
        "refused_503": len(refused),
        "share_503": round(len(refused) / sent, 4) if sent else None,
        "other_status": sum(others.values()),
        "other_statuses": others,
        "failed": sum(r[3] == FAILED for r in records),
        "no_connection": len(records) - sent,
        "p50_ms": percentile(ok, 50),
        "p99_ms": percentile(ok, 99),
        "p99_503_ms": percentile(refused, 99),
        "send_lag_p50_ms": percentile(lags, 50),
        "send_lag_p99_ms": percentile(lags, 99),
    }


def other_statuses(records: list[Record]) -> dict[str, int]:
    """How many answers of each status other than 202 and 503 (a 500 breaks the contract:
    the report must say which codes they were)."""
    counts = Counter(r[3] for r in records if r[3] not in (202, 503, FAILED, NO_CONNECTION))
    return {str(status): counts[status] for status in sorted(counts)}


def recovered_after(
    records: list[Record], drop_at: float, threshold_ms: float, window_s: float = 1.0
) -> float | None:
    """Seconds after ``drop_at`` from which every ``window_s`` window's p99 of answered
    requests is <= ``threshold_ms`` and nothing is refused; None if never."""
    tail = [r for r in records if r[0] >= drop_at]
    if not tail:
        return None
    last = max(r[0] for r in tail)
    windows = math.floor((last - drop_at) / window_s) + 1
    good = []
    for i in range(windows):
        part = window(tail, drop_at + i * window_s, drop_at + (i + 1) * window_s)
        lat = sorted(r[2] for r in part if r[3] == 202)
        p99 = percentile(lat, 99)
        good.append(bool(part) and all(r[3] == 202 for r in part) and (p99 or 0) <= threshold_ms)
    for i in range(windows):
        if all(good[i:]):
            return round(i * window_s, 1)
    return None
