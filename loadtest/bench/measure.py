"""What a run is measured with: machine CPU (psutil), the load generator's own CPU,
latency percentiles, both stores' totals over time, the backlog before a run, and
the Gateway's replica counts."""

from __future__ import annotations

import asyncio
import os
import platform
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psutil

from devstack import serve_ops
from devstack.waits import apoll
from loadtest import counters
from loadtest.bench.variants import SCALED_KEYS
from loadtest.counters import Counters
from loadtest.probe import ProbeResult

CpuSample = tuple[float, float]


def machine(wrk: str) -> dict[str, Any]:
    return {
        "cores": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 1024**3, 1),
        "cpu_model": _cpu_model(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "wrk": wrk,
        "load_average_end": [round(x, 1) for x in os.getloadavg()],
    }


def _cpu_model() -> str:
    # psutil has no CPU model name: /proc/cpuinfo is the place
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or ""


def cpu_times() -> CpuSample:
    """(busy, total) CPU seconds of the whole machine; iowait counts as idle."""
    times = psutil.cpu_times()
    total = sum(times)
    return total - times.idle - getattr(times, "iowait", 0.0), total


def busy_pct(start: CpuSample, end: CpuSample) -> float | None:
    total = end[1] - start[1]
    return round(100.0 * (end[0] - start[0]) / total, 1) if total > 0 else None


class CpuWindow:
    """Machine CPU over the sending window ``[start_s, start_s + length_s]`` from now,
    sampled by timers so the load generator's blocking call needs no thread of its own."""

    def __init__(self, start_s: float, length_s: float) -> None:
        self.samples: dict[str, CpuSample] = {}
        if start_s <= 0:
            self.samples["start"] = cpu_times()
        self.timers = [
            threading.Timer(start_s + length_s, self._take, ("end",)),
            *([threading.Timer(start_s, self._take, ("start",))] if start_s > 0 else []),
        ]
        for timer in self.timers:
            timer.start()

    def _take(self, which: str) -> None:
        self.samples.setdefault(which, cpu_times())

    def busy_pct(self) -> float | None:
        """The window's machine CPU %; an end not reached yet is sampled now."""
        for timer in self.timers:
            timer.cancel()
        if "start" not in self.samples:
            return None
        return busy_pct(self.samples["start"], self.samples.get("end") or cpu_times())


BROKERS_AND_STORES = frozenset({"kafka", "rabbitmq", "redis", "valkey"})


def ms_per(cpu_s: float | None, tweets: int) -> float | None:
    return round(1000 * cpu_s / tweets, 3) if cpu_s is not None and tweets > 0 else None


def cpu_per_tweet(
    by_process: dict[str, float], machine_busy_s: float, loadgen_cpu_s: float | None, tweets: int
) -> dict[str, Any]:
    """CPU ms per accepted tweet over the sending window (in steady state the work done in
    it is the work for what it accepted; the backlog left is in the lag figures): the
    stack's processes (the pipeline's cost, whatever else the machine runs), its Serve/Ray
    processes alone, and the whole machine less the load generator."""
    stack = sum(by_process.values())
    serve = sum(
        v for k, v in by_process.items() if k not in BROKERS_AND_STORES and not k.startswith("ray:")
    )
    return {
        "stack_cpu_s": round(stack, 2),
        "stack_cpu_ms_per_tweet": ms_per(stack, tweets),
        "serve_cpu_ms_per_tweet": ms_per(serve, tweets),
        "machine_cpu_ms_per_tweet": ms_per(machine_busy_s - (loadgen_cpu_s or 0.0), tweets),
    }


def percentile(sorted_values: list[float], pct: float) -> float | None:
    if not sorted_values:
        return None
    k = min(len(sorted_values) - 1, max(0, round(pct / 100 * len(sorted_values) + 0.5) - 1))
    return round(sorted_values[k], 2)


class TotalsRecorder:
    """Polls both stores' totals every 50 ms from the start of a run, so the moment the
    last accepted tweet is counted is known even if it happened while the load generator
    was still winding down; ``target`` is set once the accepted count is known."""

    def __init__(self, counters: Counters, poll_s: float = 0.05) -> None:
        self.counters = counters
        self.poll_s = poll_s
        self.target: tuple[int, int] | None = None
        self.samples: list[tuple[float, int, int]] = []

    async def run(self, drain_timeout: float) -> tuple[float | None, float | None]:
        """Return the first time Redis and Valkey reached the target (None: not in time)."""
        # Hand-written, not devstack.waits: a sampler whose deadline starts only once the
        # target is known, after the load ends.
        deadline: float | None = None
        while True:
            r, v = await self.counters.totals()
            now = time.time()
            self.samples.append((now, r, v))
            if self.target is not None:
                deadline = deadline or now + drain_timeout
                if (r >= self.target[0] and v >= self.target[1]) or now >= deadline:
                    return self._first(1, self.target[0]), self._first(2, self.target[1])
            await asyncio.sleep(self.poll_s)

    def _first(self, index: int, target: int) -> float | None:
        return next((s[0] for s in self.samples if s[index] >= target), None)


async def quiesce(store: Counters, timeout: float) -> dict[str, Any]:
    """Before a run: wait (bounded) until nothing is left to drain (no Kafka lag, no
    ready RabbitMQ messages, totals unchanged for 1 s), so a backlog of earlier
    work is not counted as this run's. Returns what was found at the start."""
    seen: list[dict[str, Any]] = []

    async def backlog() -> dict[str, Any]:
        t1 = await store.totals()
        found = await counters.lag()
        await asyncio.sleep(1.0)
        t2 = await store.totals()
        found["store_growth_1s"] = (t2[0] - t1[0], t2[1] - t1[1])
        seen.append(dict(found))
        return found

    def idle(found: dict[str, Any]) -> bool:
        quiet = (found["kafka_lag"] or 0) <= 0 and (found["rabbitmq_depth"] or 0) == 0
        return quiet and found["store_growth_1s"] == (0, 0)

    await apoll(backlog, idle, timeout=timeout, every=0.0)
    return seen[0]


async def replicas() -> dict[str, int]:
    """Replicas of the scaled deployments ({} on a dashboard hiccup: no sample)."""
    try:
        counts = await asyncio.to_thread(serve_ops.replica_counts)
    except Exception:  # noqa: BLE001
        return {}
    return {k: v for k, v in counts.items() if k in SCALED_KEYS}


async def sample_replicas(timeline: list[dict[str, Any]], t0: float) -> None:
    """Append the replica counts to ``timeline`` every second until cancelled."""
    while True:  # a sampler the caller cancels, not a wait
        counts = await replicas()
        timeline.append(
            {"t": round(time.time() - t0, 1), **{k: counts.get(k) for k in SCALED_KEYS}}
        )
        await asyncio.sleep(1.0)


async def cooldown(limit: float) -> None:
    """After the load: keep sampling until the scaled deployments are back at 1."""
    if limit <= 0:
        return

    def at_floor(counts: dict[str, int]) -> bool:
        return all(counts.get(k) == 1 for k in SCALED_KEYS)

    if at_floor(await apoll(replicas, at_floor, timeout=limit, every=1.0)):
        await asyncio.sleep(2.0)  # one more sample at the floor


def delivery(
    run: dict[str, Any], before: tuple[int, int], after: tuple[int, int], counted_at: float | None
) -> dict[str, Any]:
    """Accepted against what each store counted, and the end-to-end rate: accepted tweets
    over first request -> last accepted tweet counted in Redis AND Valkey."""
    d_r, d_v = after[0] - before[0], after[1] - before[1]
    duration = run["duration_s"]
    e2e = counted_at - run["started_at"] if counted_at else None
    return {
        "redis_delta": d_r,
        "valkey_delta": d_v,
        "zero_loss": d_r == run["accepted"] and d_v == run["accepted"],
        "requests_per_s": round(run["requests"] / duration, 1),
        "accepted_per_s": round(run["accepted_load"] / duration, 1),
        "e2e_s": round(e2e, 2) if e2e else None,
        "e2e_tweets_per_s": round(run["accepted"] / e2e, 1) if e2e else None,
        "drain_s": round(counted_at - run["started_at"] - duration, 2) if counted_at else None,
    }


def drain_rates(
    samples: Sequence[tuple[float, int, int]],
    released_at: float,
    before: tuple[int, int],
    backlog: int,
) -> dict[str, Any]:
    """Each consumer's drain rate from a backlog built while the stores' writes were
    paused: per store (Redis fed by the Kafka consumer, Valkey by the RabbitMQ one), the
    tweets counted from its first count after ``released_at`` until ``backlog`` more than
    ``before``, over that time (a consumer whose store call had timed out resumes after its
    retry backoff: that wait is ``resume_s``, not drain time). None where a store never
    got there."""
    out: dict[str, Any] = {"backlog_tweets": backlog}
    for index, store in ((1, "redis"), (2, "valkey")):
        after = [(s[0], s[index]) for s in samples if s[0] >= released_at]
        target = before[index - 1] + backlog
        first = next(((t, n) for t, n in after if n > before[index - 1]), None)
        done = next((t for t, n in after if n >= target), None)
        rate = None
        if first and done and done > first[0]:
            rate = round((target - first[1]) / (done - first[0]), 1)
        out[f"drain_{store}_tweets_per_s"] = rate
        out[f"resume_{store}_s"] = round(first[0] - released_at, 2) if first else None
    return out


ACCEPTED_IDS = "_accepted_ids"
"""A load's figures key for the ids of the tweets answered 202 (the open-loop generator's),
looked for in both stores after the drain by :func:`accepted_by_id`, then dropped."""


def accepted_by_id(
    run: dict[str, Any], in_redis: Sequence[bool], in_valkey: Sequence[bool]
) -> dict[str, Any]:
    """The promise checked tweet by tweet: how many answered 202 are missing from each store
    (must be 0), and how many more each store counted than were answered 202: tweets of
    requests answered 503 after the deadline or not answered in time, which may have been
    published; a retry with their ids counts nothing twice."""
    return {
        "accepted_ids_checked": len(in_redis),
        "accepted_missing_redis": len(in_redis) - sum(in_redis),
        "accepted_missing_valkey": len(in_valkey) - sum(in_valkey),
        "counted_beyond_202": max(run["redis_delta"], run["valkey_delta"]) - run["accepted"],
    }


def freshness(probe: ProbeResult) -> dict[str, Any]:
    """Send -> counted latency of the probe's tagged tweets, per store."""
    fr, fv = sorted(probe.redis_ms), sorted(probe.valkey_ms)
    return {
        "fresh_samples": len(fr),
        "fresh_p50_redis_ms": percentile(fr, 50),
        "fresh_p99_redis_ms": percentile(fr, 99),
        "fresh_p50_valkey_ms": percentile(fv, 50),
        "fresh_p99_valkey_ms": percentile(fv, 99),
        "fresh_missing": probe.missing_redis + probe.missing_valkey,
    }
