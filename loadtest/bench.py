"""The benchmark: one command, one run, one machine, every figure side by side.

    python -m loadtest.bench [--repeat 3] [--duration 20] [--smoke]   (or `make bench`)

Scenarios (each repeated ``--repeat`` times; the tables show medians):

* ``noop``: wrk + tweets.lua against a no-op Serve app (``/noop``) deployed next to the
  pipeline: the ceiling of Serve's HTTP path on this machine.
* ``noop_grpc``: the gRPC client against the same no-op app's ``Publish`` (metadata
  ``application: noop``): the ceiling of Serve's gRPC path.
* ``rest``: the same wrk load against ``POST /input``; end-to-end tweets/s = accepted
  tweets / (first request -> last accepted tweet counted in Redis AND Valkey).
* ``rest_half``: wrk paced open-loop at half the measured ``rest`` rate: accept latency
  and freshness at a sustainable rate.
* ``rest_batch``: wrk posting arrays of ``--big-batch`` (100) tweets.
* ``grpc``: a multi-process grpc.aio client calling ``Publish`` through port 9000.
* ``grpc_batch``: the same client calling ``PublishBatch`` with ``--big-batch`` tweets.
* ``replicas_1`` / ``replicas_2`` / ``replicas_auto``: the Gateway fixed at 1, at 2, and
  autoscaling; replica counts over time from the dashboard's Serve REST API.

A freshness probe (low-rate tagged tweets polled in both stores) runs during every
pipeline run. Results go to ``loadtest/results/bench.json`` and ``bench.md``.
``serve_config.yaml`` is deployed again at the end, whatever happened.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from loadtest import grpc_load, serveops
from loadtest.probe import Probe
from loadtest.serveops import HTTP_BASE, NOOP_ROUTE, Counters

HERE = Path(__file__).resolve().parent
LUA = HERE / "tweets.lua"
WRK_GRACE_S = 4.0
RESULTS = HERE / "results"

DEFAULT_AUTOSCALE = {
    # Bench-only overrides of serve_config.yaml's autoscaling_config so that a rise and
    # a fall fit into one run (Serve's defaults: upscale 30 s, downscale 600 s) and so
    # that the benchmark's concurrency is above the per-replica targets.
    "Gateway": {"target_ongoing_requests": 16, "upscale_delay_s": 2, "downscale_delay_s": 10},
}


# --- machine ---------------------------------------------------------------------------
def machine() -> dict[str, Any]:
    mem_kib = 0
    model = platform.processor() or ""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cores": os.cpu_count(),
        "memory_gib": round(mem_kib / 1024**2, 1),
        "cpu_model": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "wrk": wrk_binary(),
    }


def cpu_times() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine from /proc/stat."""
    fields = [float(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)
    return sum(fields) - idle, sum(fields)


def busy_pct(start: tuple[float, float], end: tuple[float, float]) -> float | None:
    total = end[1] - start[1]
    return round(100.0 * (end[0] - start[0]) / total, 1) if total > 0 else None


# --- wrk -------------------------------------------------------------------------------
def wrk_binary() -> str:
    return os.environ.get("WRK") or shutil.which("wrk") or "/usr/bin/wrk"


def run_wrk(
    url: str,
    *,
    duration_s: float,
    connections: int,
    threads: int,
    batch: int,
    rate: float = 0.0,
    tag: str = "wrk",
) -> dict[str, Any]:
    """Run wrk (blocking, bounded by its -d and a hard timeout); return its JSON + CPU."""
    threads = max(1, min(threads, connections))
    per_thread = rate / threads if rate > 0 else 0.0
    # Send for duration_s, then give in-flight requests WRK_GRACE_S to be answered
    # (and counted) before wrk exits; rates are per duration_s, the sending window.
    stop_ms = (time.monotonic() + 0.2 + duration_s) * 1000
    cmd = [
        wrk_binary(),
        f"-t{threads}",
        f"-c{connections}",
        f"-d{math.ceil(duration_s + 0.2 + WRK_GRACE_S)}s",
        "--timeout=10s",
        "-s",
        str(LUA),
        url,
        "--",
        str(batch),
        f"{per_thread:.3f}",
        tag,
        f"{stop_ms:.0f}",
    ]
    started = time.time()
    window: dict[str, tuple[float, float]] = {"start": cpu_times()}
    sampler = threading.Timer(duration_s + 0.2, lambda: window.setdefault("end", cpu_times()))
    sampler.start()
    proc = subprocess.Popen(
        cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    assert proc.stdout is not None
    try:
        output = proc.stdout.read().decode(errors="replace")
    finally:
        # wait4 gives this child's own rusage (the load generator's CPU time).
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        sampler.cancel()
    wall = time.time() - started
    line = next((x for x in output.splitlines() if x.startswith("WRK_JSON ")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed (exit {proc.returncode}): {' '.join(cmd)}\n{output}")
    data = json.loads(line.removeprefix("WRK_JSON "))
    cpu = usage.ru_utime + usage.ru_stime
    duration = duration_s
    lat = data["latency_us"]
    errors = sum(data["errors"].values()) - data["errors"]["status"]
    return {
        "started_at": started,
        "duration_s": duration,
        "requests": data["requests"],
        "accepted": data["accepted"],
        "non_202": data["other_status"],
        "socket_errors": errors,
        "p50_ms": lat["p50"] / 1000,
        "p99_ms": lat["p99"] / 1000,
        "max_ms": lat["max"] / 1000,
        "loadgen_cpu_s": round(cpu, 2),
        "loadgen_cpu_pct": round(100 * cpu / min(wall, duration_s + 0.2), 1),
        "machine_cpu_pct": busy_pct(window["start"], window.get("end", cpu_times())),
        "loadgen": f"wrk -t{threads} -c{connections}",
        "target_rate_req_s": rate or None,
    }


def run_grpc(
    *,
    duration_s: float,
    processes: int,
    concurrency: int,
    batch: int,
    tag: str,
    application: str = grpc_load.PIPELINE_APP,
) -> dict[str, Any]:
    start_delay = 3.0
    started = time.time() + start_delay
    window: dict[str, tuple[float, float]] = {}
    timers = [
        threading.Timer(start_delay, lambda: window.setdefault("start", cpu_times())),
        threading.Timer(start_delay + duration_s, lambda: window.setdefault("end", cpu_times())),
    ]
    for timer in timers:
        timer.start()
    res = grpc_load.run(
        duration_s=duration_s,
        processes=processes,
        concurrency=concurrency,
        batch=batch,
        tag=tag,
        start_delay_s=start_delay,
        application=application,
    )
    lat = sorted(res.latencies_ms)
    return {
        "started_at": started,
        "duration_s": res.wall_s,
        "requests": res.requests,
        "accepted": res.accepted,
        "non_202": sum(res.errors.values()),
        "errors": res.errors,
        "socket_errors": 0,
        "p50_ms": percentile(lat, 50),
        "p99_ms": percentile(lat, 99),
        "max_ms": lat[-1] if lat else None,
        "loadgen_cpu_s": round(res.cpu_s, 2),
        "loadgen_cpu_pct": round(100 * res.cpu_s / res.wall_s, 1) if res.wall_s else None,
        "machine_cpu_pct": busy_pct(window["start"], window["end"]) if len(window) == 2 else None,
        "loadgen": f"grpc.aio x{processes} proc x{concurrency} conc",
        "target_rate_req_s": None,
    }


def percentile(sorted_values: list[float], pct: float) -> float | None:
    if not sorted_values:
        return None
    k = min(len(sorted_values) - 1, max(0, round(pct / 100 * len(sorted_values) + 0.5) - 1))
    return round(sorted_values[k], 2)


# --- one measured run ------------------------------------------------------------------
LoadFn = Callable[[str], dict[str, Any]]


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


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.counters = Counters()
        self.results: dict[str, Any] = {}
        self.timeline: list[dict[str, Any]] = []
        self.timeline_t0 = time.time()

    async def ceiling_run(self, name: str, load: LoadFn) -> dict[str, Any]:
        out = await asyncio.to_thread(load, f"{name}-{uuid.uuid4().hex[:8]}")
        out["accepted_per_s"] = round(out["accepted"] / out["duration_s"], 1)
        out["requests_per_s"] = round(out["requests"] / out["duration_s"], 1)
        out["e2e_tweets_per_s"] = None
        out["zero_loss"] = None
        return out

    async def pipeline_run(
        self, name: str, load: LoadFn, duration: float, start_delay: float = 0.0
    ) -> dict[str, Any]:
        """One pipeline run: load + probe, lag at the end of the sending window, drain."""
        a = self.args
        backlog = await self.quiesce(a.quiesce_timeout)
        before = await self.counters.totals()
        probe = Probe(self.counters, rate=a.probe_rate)
        at_end: dict[str, Any] = {}

        async def start_probe() -> None:
            await asyncio.sleep(start_delay)
            probe.start()

        async def end_of_window() -> None:  # consumer lag and replicas as the load stops
            await asyncio.sleep(start_delay + duration + 0.2)
            await probe.stop_sending()  # the probe sends within the load's window only
            at_end.update(await serveops.lag())
            at_end["replicas_end"] = {k: v for k, v in await _replicas() if k in _SCALED_KEYS}

        recorder = TotalsRecorder(self.counters)
        recording = asyncio.create_task(recorder.run(a.drain_timeout))
        side = [asyncio.create_task(start_probe()), asyncio.create_task(end_of_window())]
        try:
            out = await asyncio.to_thread(load, f"{name}-{uuid.uuid4().hex[:8]}")
            await asyncio.gather(*side)
            out.update(at_end)
            load_end = out["started_at"] + out["duration_s"]
            accepted = out["accepted"] + probe.result.accepted
            recorder.target = (before[0] + accepted, before[1] + accepted)
            done_r, done_v = await recording
        finally:
            recording.cancel()
        probe_result = await probe.finish(timeout=30)
        await asyncio.sleep(a.settle)  # anything beyond `accepted` would show up now
        after = await self.counters.totals()
        d_r, d_v = after[0] - before[0], after[1] - before[1]
        duration = out["duration_s"]
        counted_at = max(done_r, done_v) if done_r and done_v else None
        e2e = counted_at - out["started_at"] if counted_at else None
        fr, fv = sorted(probe_result.redis_ms), sorted(probe_result.valkey_ms)
        out.update(
            backlog_before=backlog,
            accepted_load=out["accepted"],
            accepted_probe=probe_result.accepted,
            accepted=accepted,
            redis_delta=d_r,
            valkey_delta=d_v,
            zero_loss=d_r == accepted and d_v == accepted,
            requests_per_s=round(out["requests"] / duration, 1),
            accepted_per_s=round(out["accepted"] / duration, 1),
            e2e_s=round(e2e, 2) if e2e else None,
            e2e_tweets_per_s=round(accepted / e2e, 1) if e2e else None,
            drain_s=round(counted_at - load_end, 2) if counted_at else None,
            fresh_samples=len(fr),
            fresh_p50_redis_ms=percentile(fr, 50),
            fresh_p99_redis_ms=percentile(fr, 99),
            fresh_p50_valkey_ms=percentile(fv, 50),
            fresh_p99_valkey_ms=percentile(fv, 99),
            fresh_missing=probe_result.missing_redis + probe_result.missing_valkey,
        )
        return out

    async def quiesce(self, timeout: float) -> dict[str, Any]:
        """Before a run: wait (bounded) until nothing is left to drain (no Kafka lag, no
        ready RabbitMQ messages, totals unchanged for 1 s), so a backlog of earlier
        work is not counted as this run's. Returns what was found at the start."""
        deadline = time.time() + timeout
        first: dict[str, Any] | None = None
        while True:
            t1 = await self.counters.totals()
            backlog = await serveops.lag()
            await asyncio.sleep(1.0)
            t2 = await self.counters.totals()
            backlog["store_growth_1s"] = (t2[0] - t1[0], t2[1] - t1[1])
            first = first or dict(backlog)
            idle = (backlog["kafka_lag"] or 0) <= 0 and (backlog["rabbitmq_depth"] or 0) == 0
            if (idle and t1 == t2) or time.time() >= deadline:
                return first

    async def scenario(
        self,
        name: str,
        title: str,
        runner: Callable[[], Awaitable[dict[str, Any]]],
    ) -> dict[str, Any]:
        runs = []
        for i in range(self.args.repeat):
            run = await runner()
            runs.append(run)
            print(f"  {name} #{i + 1}: {_one_line(run)}", flush=True)
            await asyncio.sleep(self.args.pause)
        entry = {"title": title, "median": medians(runs), "runs": runs}
        entry["median"]["zero_loss_all"] = (
            all(r["zero_loss"] for r in runs) if runs[0]["zero_loss"] is not None else None
        )
        self.results[name] = entry
        return entry

    # --- the whole benchmark -----------------------------------------------------------
    def wrk_load(
        self,
        path: str,
        rate: float = 0.0,
        duration: float | None = None,
        batch: int | None = None,
    ) -> LoadFn:
        a = self.args

        def load(tag: str) -> dict[str, Any]:
            return run_wrk(
                f"{HTTP_BASE}{path}",
                duration_s=duration or a.duration,
                connections=a.connections,
                threads=a.threads,
                batch=batch or a.batch,
                rate=rate,
                tag=tag,
            )

        return load

    def grpc_load(self, batch: int | None = None, application: str | None = None) -> LoadFn:
        a = self.args

        def load(tag: str) -> dict[str, Any]:
            return run_grpc(
                duration_s=a.duration,
                processes=a.grpc_processes,
                concurrency=a.grpc_concurrency,
                batch=batch or a.batch,
                tag=tag,
                application=application or grpc_load.PIPELINE_APP,
            )

        return load

    async def run(self) -> dict[str, Any]:
        a = self.args
        wanted = set(a.scenarios)
        base = serveops.base_config()
        deploys: dict[str, float] = {}
        t = serveops.deploy(serveops.with_noop(base), label="noop")
        deploys["pipeline+noop"] = round(t, 1)
        print(f"deployed serve_config.yaml + noop app in {t:.0f}s", flush=True)
        if "noop" in wanted:
            await self.scenario(
                "noop",
                "Ceiling: no-op Serve app, POST /noop (wrk)",
                lambda: self.ceiling_run("noop", self.wrk_load(NOOP_ROUTE)),
            )
        if "noop_grpc" in wanted:
            await self.scenario(
                "noop_grpc",
                "Ceiling: no-op Serve gRPC method, Publish on app noop (grpc.aio)",
                lambda: self.ceiling_run(
                    "noop_grpc", self.grpc_load(batch=1, application=serveops.NOOP_APP)
                ),
            )
        if "rest" in wanted:
            await self.scenario(
                "rest",
                "Pipeline, REST POST /input (wrk, closed loop)",
                lambda: self.pipeline_run("rest", self.wrk_load("/input"), a.duration),
            )
        if "rest_half" in wanted:
            rest = (self.results.get("rest") or {}).get("median", {})
            measured = rest.get("e2e_tweets_per_s") or rest.get("accepted_per_s")
            if a.half_rate:
                half, how = a.half_rate, "--half-rate"
            elif measured:
                half, how = measured / 2, "half the rest median"
            else:  # nothing measured (e.g. `rest` not run or it failed): a token rate
                half, how = 10.0, "fallback, no rest figure"
            req_rate = half / a.batch
            await self.scenario(
                "rest_half",
                f"Pipeline, REST paced at {half:.0f} tweets/s ({how}; wrk delay())",
                lambda: self.pipeline_run(
                    "rest_half", self.wrk_load("/input", req_rate), a.duration
                ),
            )
        if "rest_batch" in wanted:
            await self.scenario(
                "rest_batch",
                f"Pipeline, REST arrays of {a.big_batch} tweets (wrk, closed loop)",
                lambda: self.pipeline_run(
                    "rest_batch", self.wrk_load("/input", batch=a.big_batch), a.duration
                ),
            )
        if "grpc" in wanted:
            await self.scenario(
                "grpc",
                "Pipeline, gRPC Publisher.Publish via :9000 (grpc.aio client)",
                lambda: self.pipeline_run(
                    "grpc", self.grpc_load(batch=1), a.duration, start_delay=3.0
                ),
            )
        if "grpc_batch" in wanted:
            await self.scenario(
                "grpc_batch",
                f"Pipeline, gRPC PublishBatch of {a.big_batch} via :9000 (grpc.aio client)",
                lambda: self.pipeline_run(
                    "grpc_batch", self.grpc_load(batch=a.big_batch), a.duration, start_delay=3.0
                ),
            )
        variants = [v for v in ("replicas_1", "replicas_2", "replicas_auto") if v in wanted]
        for variant in variants:
            if variant == "replicas_auto":
                config = serveops.replica_variant(base, None, a.autoscale)
                title = "Gateway autoscaling (REST, wrk)"
            else:
                n = int(variant.rsplit("_", 1)[1])
                config = serveops.replica_variant(base, n)
                title = f"Gateway fixed at {n} replica(s) (REST, wrk)"
            t = serveops.deploy(config, label=variant, allow_deleting=True)
            deploys[variant] = round(t, 1)
            print(f"deployed {variant} in {t:.0f}s", flush=True)
            load = self.wrk_load("/input", duration=a.replica_duration)
            if variant == "replicas_auto":
                sampler = asyncio.create_task(self.sample_replicas())
                await self.scenario(
                    variant,
                    title,
                    lambda v=variant, f=load: self.pipeline_run(v, f, a.replica_duration),
                )
                await self.cooldown(a.autoscale_cooldown)
                sampler.cancel()
                self.results[variant]["config"] = a.autoscale
                self.results[variant]["timeline"] = self.timeline
                self.results[variant]["load_windows_s"] = [
                    [round(r["started_at"] - self.timeline_t0, 1),
                     round(r["started_at"] + r["duration_s"] - self.timeline_t0, 1)]
                    for r in self.results[variant]["runs"]
                ]  # fmt: skip
            else:
                await self.scenario(
                    variant,
                    title,
                    lambda v=variant, f=load: self.pipeline_run(v, f, a.replica_duration),
                )
        return {"deploy_s": deploys}

    async def sample_replicas(self) -> None:
        self.timeline_t0 = t0 = time.time()
        while True:
            counts = dict(await _replicas())
            self.timeline.append(
                {"t": round(time.time() - t0, 1), **{k: counts.get(k) for k in _SCALED_KEYS}}
            )
            await asyncio.sleep(1.0)

    async def cooldown(self, limit: float) -> None:
        """After the load: keep sampling until the scaled deployments are back at 1."""
        deadline = time.time() + limit
        while time.time() < deadline:
            counts = dict(await _replicas())
            if all(counts.get(k) == 1 for k in _SCALED_KEYS):
                await asyncio.sleep(2.0)  # one more sample at the floor
                return
            await asyncio.sleep(1.0)


_SCALED_KEYS = tuple(f"{app}/{dep}" for app, dep in serveops.SCALED)


async def _replicas() -> list[tuple[str, int]]:
    try:
        return list((await asyncio.to_thread(serveops.replica_counts)).items())
    except Exception:  # noqa: BLE001 - dashboard hiccup: no sample
        return []


def medians(runs: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in runs[0]:
        values = [r.get(key) for r in runs]
        if all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
            out[key] = round(statistics.median(values), 2)
        elif key in ("replicas_end", "loadgen", "errors"):
            out[key] = values[-1]
    return out


def _one_line(run: dict[str, Any]) -> str:
    parts = [
        f"req/s={run.get('requests_per_s')}",
        f"e2e tweets/s={run.get('e2e_tweets_per_s')}",
        f"p50={run.get('p50_ms')}ms p99={run.get('p99_ms')}ms",
    ]
    if run.get("zero_loss") is not None:
        parts += [
            f"accepted={run['accepted']} redis+={run['redis_delta']} valkey+={run['valkey_delta']}",
            f"fresh p99 r/v={run.get('fresh_p99_redis_ms')}/{run.get('fresh_p99_valkey_ms')}ms",
            f"lag k/r={run.get('kafka_lag')}/{run.get('rabbitmq_depth')}",
        ]
    parts.append(f"loadgen cpu={run.get('loadgen_cpu_pct')}% machine={run.get('machine_cpu_pct')}%")
    return " ".join(parts)


# --- report ----------------------------------------------------------------------------
def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The ingest issue's targets, each a ratio or a bound within this one run."""

    def med(name: str, key: str) -> Any:
        return (results.get(name) or {}).get("median", {}).get(key)

    rows: list[dict[str, Any]] = []

    def ratio_row(target: str, num: Any, den: Any, floor: float) -> None:
        if num and den:
            rows.append(
                {"target": target, "value": f"{num:.0f} / {den:.0f} = {num / den:.2f}",
                 "met": num / den >= floor}
            )  # fmt: skip

    ratio_row(
        "REST single tweets end to end >= 0.6 x no-op HTTP ceiling",
        med("rest", "e2e_tweets_per_s"),
        med("noop", "accepted_per_s"),
        0.6,
    )
    p99 = med("rest_half", "p99_ms")
    if p99 is not None:
        rows.append(
            {"target": "p99 accept latency <= 50 ms at half max rate",
             "value": f"{p99:.1f} ms", "met": p99 <= 50}
        )  # fmt: skip
    fr, fv = med("rest_half", "fresh_p99_redis_ms"), med("rest_half", "fresh_p99_valkey_ms")
    if fr is not None and fv is not None:
        rows.append(
            {"target": "p99 freshness <= 500 ms at half max rate (Redis / Valkey)",
             "value": f"{fr:.0f} / {fv:.0f} ms", "met": fr <= 500 and fv <= 500}
        )  # fmt: skip
    batch = med("rest_batch", "e2e_tweets_per_s")
    if batch is not None:
        rows.append(
            {"target": "REST arrays of 100 >= 10,000 tweets/s end to end",
             "value": f"{batch:.0f} tweets/s", "met": batch >= 10_000}
        )  # fmt: skip
    grpc_batch = med("grpc_batch", "e2e_tweets_per_s")
    if grpc_batch is not None and batch is not None:
        rows.append(
            {"target": "gRPC PublishBatch >= REST arrays (tweets/s)",
             "value": f"{grpc_batch:.0f} vs {batch:.0f}", "met": grpc_batch >= batch}
        )  # fmt: skip
    ratio_row(
        "gRPC Publish end to end >= 0.6 x no-op gRPC ceiling",
        med("grpc", "e2e_tweets_per_s"),
        med("noop_grpc", "accepted_per_s"),
        0.6,
    )
    runs = [r for s in results.values() for r in s["runs"] if r.get("zero_loss") is not None]
    rows.append(
        {
            "target": "zero loss in every pipeline run",
            "value": f"{sum(r['zero_loss'] for r in runs)}/{len(runs)} runs exact",
            "met": all(r["zero_loss"] for r in runs),
        }
    )
    return rows


COLUMNS = [
    ("Scenario", None),
    ("e2e tweets/s", "e2e_tweets_per_s"),
    ("accepted tweets/s", "accepted_per_s"),
    ("req/s", "requests_per_s"),
    ("p50 ms", "p50_ms"),
    ("p99 ms", "p99_ms"),
    ("fresh p99 Redis ms", "fresh_p99_redis_ms"),
    ("fresh p99 Valkey ms", "fresh_p99_valkey_ms"),
    ("Kafka lag end", "kafka_lag"),
    ("RabbitMQ depth end", "rabbitmq_depth"),
    ("drain s", "drain_s"),
    ("zero loss", "zero_loss_all"),
    ("loadgen CPU %", "loadgen_cpu_pct"),
    ("machine CPU %", "machine_cpu_pct"),
    ("Gateway replicas end", "replicas_end"),
]


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "**NO**"
    if isinstance(value, dict):
        return "/".join(str(value.get(k, "?")) for k in _SCALED_KEYS)
    if isinstance(value, float):
        return f"{value:.1f}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


def markdown(report: dict[str, Any]) -> str:
    p, m = report["params"], report["machine"]
    lines = [
        f"# Benchmark {report['date']}",
        "",
        f"Machine: {m['cores']} cores ({m['cpu_model']}), {m['memory_gib']} GiB, "
        f"kernel {m['kernel']}, Python {m['python']}.",
        f"Load: {p['duration']} s per run ({p['replica_duration']} s in the replica sweep), "
        f"{p['connections']} connections, {p['threads']} wrk thread(s), {p['batch']} "
        f"tweet(s) per request, gRPC {p['grpc_processes']} process(es) x "
        f"{p['grpc_concurrency']} concurrent calls, freshness probe {p['probe_rate']}/s. "
        f"Every figure is the median of {p['repeat']} run(s).",
        "",
        "| " + " | ".join(c for c, _ in COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    for name, entry in report["scenarios"].items():
        med = entry["median"]
        cells = [f"{name}: {entry['title']}"] + [_cell(med.get(k)) for _, k in COLUMNS[1:]]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "## Targets (reported, not asserted)", "", "| Target | Measured | Met |"]
    lines.append("|---|---|---|")
    for row in report["targets"]:
        lines.append(f"| {row['target']} | {row['value']} | {'yes' if row['met'] else 'no'} |")
    auto = report["scenarios"].get("replicas_auto")
    if auto and auto.get("timeline"):
        lines += ["", "## Autoscaling: Gateway replicas over time", ""]
        lines.append(f"Autoscaling overrides: `{json.dumps(auto.get('config'))}`")
        windows = ", ".join(f"{a}-{b} s" for a, b in auto.get("load_windows_s", []))
        lines.append(f"Load (sending) windows: {windows}; replica counts change only:")
        lines.append("")
        lines.append("```")
        previous = None
        for sample in auto["timeline"]:
            now = tuple(sample.get(k) for k in _SCALED_KEYS)
            if now != previous:
                counts = "  ".join(f"{k}={v}" for k, v in zip(_SCALED_KEYS, now, strict=True))
                lines.append(f"t={sample['t']:>6.1f}s  {counts}")
                previous = now
        lines.append(f"(last sample t={auto['timeline'][-1]['t']}s)")
        lines.append("```")
    return "\n".join(lines) + "\n"


def print_table(report: dict[str, Any]) -> None:
    keys = COLUMNS
    rows = [[c for c, _ in keys]]
    for name, entry in report["scenarios"].items():
        rows.append([name] + [_cell(entry["median"].get(k)) for _, k in keys[1:]])
    widths = [max(len(r[i]) for r in rows) for i in range(len(keys))]
    for row in rows:
        print("  ".join(cell.rjust(w) if i else cell.ljust(w) for i, (cell, w) in enumerate(
            zip(row, widths, strict=True))))  # fmt: skip
    print()
    for row in report["targets"]:
        print(f"{'MET ' if row['met'] else 'MISS'}  {row['target']}: {row['value']}")


# --- entry point -----------------------------------------------------------------------
ALL_SCENARIOS = (
    "noop",
    "noop_grpc",
    "rest",
    "rest_half",
    "rest_batch",
    "grpc",
    "grpc_batch",
    "replicas_1",
    "replicas_2",
    "replicas_auto",
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    env = os.environ.get
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--repeat", type=int, default=int(env("REPEAT", "3")))
    p.add_argument("--duration", type=float, default=float(env("DURATION", "20")))
    p.add_argument("--replica-duration", type=float, default=None)
    p.add_argument("--connections", type=int, default=int(env("CONNECTIONS", "64")))
    p.add_argument("--threads", type=int, default=int(env("THREADS", "1")))
    p.add_argument("--batch", type=int, default=int(env("BATCH", "1")))
    p.add_argument("--big-batch", type=int, default=int(env("BIG_BATCH", "100")))
    p.add_argument("--grpc-processes", type=int, default=int(env("GRPC_PROCESSES", "1")))
    p.add_argument("--grpc-concurrency", type=int, default=int(env("GRPC_CONCURRENCY", "64")))
    p.add_argument("--probe-rate", type=float, default=float(env("PROBE_RATE", "5")))
    p.add_argument("--half-rate", type=float, default=None, help="tweets/s for rest_half")
    p.add_argument("--drain-timeout", type=float, default=180.0)
    p.add_argument("--settle", type=float, default=1.0)
    p.add_argument("--quiesce-timeout", type=float, default=60.0)
    p.add_argument("--pause", type=float, default=2.0)
    p.add_argument("--autoscale", type=json.loads, default=DEFAULT_AUTOSCALE)
    p.add_argument("--autoscale-cooldown", type=float, default=90.0)
    p.add_argument("--scenarios", default=env("SCENARIOS", ",".join(ALL_SCENARIOS)))
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--smoke", action="store_true", help="REPEAT=1, 3 s runs, fixed replicas")
    args = p.parse_args(argv)
    if args.smoke:
        args.repeat, args.duration, args.pause, args.settle = 1, 3.0, 0.5, 0.5
        args.replica_duration = args.replica_duration or 2.0
        args.autoscale_cooldown = 0.0
        if "SCENARIOS" not in os.environ:
            args.scenarios = "noop,noop_grpc,rest,rest_half,rest_batch,grpc,grpc_batch,replicas_1"
    args.replica_duration = args.replica_duration or args.duration
    args.scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = set(args.scenarios) - set(ALL_SCENARIOS)
    if unknown:
        p.error(f"unknown scenarios {sorted(unknown)}; choose from {', '.join(ALL_SCENARIOS)}")
    if args.repeat < 1 or args.duration <= 0 or args.connections < 1:
        p.error("--repeat, --duration and --connections must be positive")
    return args


async def _main(args: argparse.Namespace) -> dict[str, Any]:
    bench = Bench(args)
    started = dt.datetime.now(dt.UTC)
    error = None
    try:
        extra = await bench.run()
    except BaseException as exc:
        error = f"{type(exc).__name__}: {exc}"
        extra = {}
        if not isinstance(exc, Exception):
            raise
    finally:
        try:
            t = await asyncio.to_thread(serveops.restore)
            print(f"restored serve_config.yaml deployment in {t:.0f}s", flush=True)
        finally:
            await bench.counters.close()
    params = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    return {
        "date": started.isoformat(timespec="seconds"),
        "duration_s": round((dt.datetime.now(dt.UTC) - started).total_seconds(), 1),
        "machine": machine(),
        "params": params,
        "error": error,
        **extra,
        "scenarios": bench.results,
        "targets": targets(bench.results),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        apps = serveops.applications()
    except OSError as exc:
        print(f"Ray dashboard not reachable ({exc}); start the stack with `make up`.")
        return 2
    if apps.get("ingest", {}).get("status") != "RUNNING":
        print("the `ingest` Serve application is not RUNNING; start the stack with `make up`.")
        return 2
    report = asyncio.run(_main(args))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "bench.md").write_text(markdown(report))
    print()
    print_table(report)
    print(f"\nwrote {args.out / 'bench.json'} and {args.out / 'bench.md'}")
    if report["error"]:
        print(f"benchmark stopped early: {report['error']}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
