"""How load is generated: each driver returns a :class:`Load`, a blocking ``run(tag)``
that sends for ``duration`` s (after ``start_delay`` s) and returns the same figures
(requests, accepted, latency, load-generator and machine CPU). A new load generator is
one more function here."""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import multiprocessing as mp
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from loadtest import grpc_load
from loadtest.bench import openloop, procs, wsload
from loadtest.bench.measure import ACCEPTED_IDS, CpuWindow, percentile
from loadtest.counters import HTTP_BASE

LUA = Path(__file__).resolve().parents[1] / "tweets.lua"
WRK_GRACE_S = 4.0
GRPC_START_DELAY_S = 3.0  # every gRPC load process imports and connects first
CHILD_START_DELAY_S = 3.0  # a spawned Python load process imports before its start time

Figures = dict[str, Any]


@dataclass(frozen=True)
class Load:
    run: Callable[[str], Figures]
    duration: float
    start_delay: float = 0.0


# --- wrk -------------------------------------------------------------------------------
def wrk_binary() -> str:
    return os.environ.get("WRK") or shutil.which("wrk") or "/usr/bin/wrk"


def wrk(
    args: argparse.Namespace,
    path: str,
    *,
    rate: float = 0.0,
    duration: float | None = None,
    batch: int | None = None,
) -> Load:
    """wrk + tweets.lua against ``path``: closed loop, or paced at ``rate`` requests/s."""
    seconds = duration or args.duration

    def run(tag: str) -> Figures:
        return run_wrk(
            f"{HTTP_BASE}{path}",
            duration_s=seconds,
            connections=args.connections,
            threads=args.threads,
            batch=batch or args.batch,
            rate=rate,
            tag=tag,
        )

    return Load(run, seconds)


def run_wrk(
    url: str,
    *,
    duration_s: float,
    connections: int,
    threads: int,
    batch: int,
    rate: float = 0.0,
    tag: str = "wrk",
) -> Figures:
    """Run wrk (blocking, bounded by its -d and a hard timeout); return its JSON + CPU."""
    threads = max(1, min(threads, connections))
    per_thread = rate / threads if rate > 0 else 0.0
    # Send for duration_s, then give in-flight requests WRK_GRACE_S to be answered
    # (and counted) before wrk exits; rates are per duration_s, the sending window.
    stop_ms = (time.monotonic() + 0.2 + duration_s) * 1000
    cmd = [
        wrk_binary(), f"-t{threads}", f"-c{connections}",
        f"-d{math.ceil(duration_s + 0.2 + WRK_GRACE_S)}s", "--timeout=10s",
        "-s", str(LUA), url, "--", str(batch), f"{per_thread:.3f}", tag, f"{stop_ms:.0f}",
    ]  # fmt: skip
    started = time.time()
    window = CpuWindow(0.0, duration_s + 0.2)
    proc = subprocess.Popen(
        cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    assert proc.stdout is not None
    try:
        output = proc.stdout.read().decode(errors="replace")
    finally:
        # wait4 gives this child's own rusage (the load generator's CPU time); psutil
        # can only read a process that still runs.
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    machine_pct = window.busy_pct()
    wall = time.time() - started
    line = next((x for x in output.splitlines() if x.startswith("WRK_JSON ")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed (exit {proc.returncode}): {' '.join(cmd)}\n{output}")
    cpu = usage.ru_utime + usage.ru_stime
    return {
        "started_at": started,
        "duration_s": duration_s,
        **wrk_figures(json.loads(line.removeprefix("WRK_JSON "))),
        "loadgen_cpu_s": round(cpu, 2),
        "loadgen_cpu_pct": round(100 * cpu / min(wall, duration_s + 0.2), 1),
        "machine_cpu_pct": machine_pct,
        "loadgen": f"wrk -t{threads} -c{connections}",
        "target_rate_req_s": rate or None,
    }


def wrk_figures(data: dict[str, Any]) -> Figures:
    """Counts and latency from the ``WRK_JSON`` line tweets.lua prints."""
    lat = data["latency_us"]
    return {
        "requests": data["requests"],
        "accepted": data["accepted"],
        "non_202": data["other_status"],
        "socket_errors": sum(data["errors"].values()) - data["errors"]["status"],
        "p50_ms": lat["p50"] / 1000,
        "p99_ms": lat["p99"] / 1000,
        "max_ms": lat["max"] / 1000,
    }


# --- gRPC ------------------------------------------------------------------------------
def grpc(
    args: argparse.Namespace,
    *,
    batch: int | None = None,
    application: str = grpc_load.PIPELINE_APP,
) -> Load:
    """The multi-process grpc.aio client: ``Publish`` (batch 1) or ``PublishBatch``."""

    def run(tag: str) -> Figures:
        return run_grpc(
            duration_s=args.duration,
            processes=args.grpc_processes,
            concurrency=args.grpc_concurrency,
            batch=batch or args.batch,
            tag=tag,
            application=application,
        )

    return Load(run, args.duration, GRPC_START_DELAY_S)


def run_grpc(
    *,
    duration_s: float,
    processes: int,
    concurrency: int,
    batch: int,
    tag: str,
    application: str = grpc_load.PIPELINE_APP,
) -> Figures:
    started = time.time() + GRPC_START_DELAY_S
    window = CpuWindow(GRPC_START_DELAY_S, duration_s)
    res = grpc_load.run(
        duration_s=duration_s,
        processes=processes,
        concurrency=concurrency,
        batch=batch,
        tag=tag,
        start_delay_s=GRPC_START_DELAY_S,
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
        "machine_cpu_pct": window.busy_pct(),
        "loadgen": f"grpc.aio x{processes} proc x{concurrency} conc",
        "target_rate_req_s": None,
    }


# --- Python load processes (WebSocket, open loop) ---------------------------------------
def in_children(
    fn: Callable[[dict[str, Any]], dict[str, Any]], kwargs: list[dict[str, Any]], timeout_s: float
) -> list[dict[str, Any]]:
    """Run ``fn(kw)`` in one spawned process per ``kw`` (each bounded by its own deadline;
    ``timeout_s`` is the backstop) and return their results in order."""
    with ProcessPoolExecutor(len(kwargs), mp_context=mp.get_context("spawn")) as pool:
        futures = [pool.submit(fn, kw) for kw in kwargs]
        return [f.result(timeout=timeout_s) for f in futures]


def _common(started: float, seconds: float, cpu_s: float, window: CpuWindow) -> Figures:
    return {
        "started_at": started,
        "duration_s": seconds,
        "loadgen_cpu_s": round(cpu_s, 2),
        "loadgen_cpu_pct": round(100 * cpu_s / seconds, 1),
        "machine_cpu_pct": window.busy_pct(),
    }


def stream(args: argparse.Namespace) -> Load:
    """Single tweets as WebSocket frames on ``/input/stream`` (wsload), end to end."""
    url = HTTP_BASE.replace("http", "ws", 1) + "/input/stream"

    def run(tag: str) -> Figures:
        started = time.time() + CHILD_START_DELAY_S
        window = CpuWindow(CHILD_START_DELAY_S, args.duration)
        kw = {
            **{"url": url, "tag": tag, "start_at": started, "duration_s": args.duration},
            **{"connections": args.stream_connections, "in_flight": args.stream_in_flight},
        }
        (out,) = in_children(wsload.child, [kw], CHILD_START_DELAY_S + args.duration + 60)
        lat = sorted(out["latencies_ms"])
        return {
            **_common(started, args.duration, out["cpu_s"], window),
            "requests": out["frames"],
            "accepted": out["accepted"],
            "non_202": sum(out["errors"].values()),
            "errors": out["errors"],
            "error_samples": out["error_samples"],
            "socket_errors": out["unacked"],
            "p50_ms": percentile(lat, 50),
            "p99_ms": percentile(lat, 99),
            "max_ms": lat[-1] if lat else None,
            "loadgen": f"websockets x{args.stream_connections} conn"
            f" x{args.stream_in_flight} frames in flight",
            "target_rate_req_s": None,
        }

    return Load(run, args.duration, CHILD_START_DELAY_S)


def overload(
    args: argparse.Namespace, rate: float, tail_rate: float, normal_p99_ms: float | None
) -> Load:
    """Open loop at ``rate`` req/s for ``--overload-duration`` s, then ``tail_rate`` for
    ``--overload-tail`` s (how fast latency recovers) against the pipeline; every tweet
    answered 202 is kept by id, to be looked for in both stores."""
    split = urlsplit(HTTP_BASE)
    target = OpenLoopTarget(split.hostname or "127.0.0.1", split.port or 80, "/input")

    def run(tag: str) -> Figures:
        return open_loop_overload(args, target, rate, tail_rate, normal_p99_ms, tag)

    return Load(run, args.overload_duration + args.overload_tail, CHILD_START_DELAY_S)


@dataclass(frozen=True)
class OpenLoopTarget:
    host: str
    port: int
    path: str
    keep_ids: bool = True


def open_loop_overload(
    args: argparse.Namespace,
    target: OpenLoopTarget,
    rate: float,
    tail_rate: float,
    normal_p99_ms: float | None,
    tag: str,
) -> Figures:
    """One open-loop overload run against ``target``: RSS of every stack process before
    and after; each phase summarized apart; recovery against ``normal_p99_ms`` (or, if
    None, the p99 of the last 5 s of the tail, the target's own normal)."""
    high, tail = args.overload_duration, args.overload_tail
    phases = [(rate, high), (tail_rate, tail)]
    shares = args.overload_processes
    stack = procs.stack_processes()
    before = procs.sample(stack)
    started = time.time() + CHILD_START_DELAY_S
    window = CpuWindow(CHILD_START_DELAY_S, high)
    kws = [
        {"host": target.host, "port": target.port, "path": target.path, "phases": phases,
         "share": i, "shares": shares, "start_at": started, "tag": f"{tag}-p{i}",
         "timeout_s": 10.0, "max_connections": args.overload_connections // shares,
         "keep_ids": target.keep_ids}
        for i in range(shares)
    ]  # fmt: skip
    outs = in_children(openloop.child, kws, CHILD_START_DELAY_S + high + tail + 60)
    after = procs.sample(procs.stack_processes())
    records = [r for out in outs for r in out["records"]]
    hot = openloop.summarize(openloop.window(records, 0, high), high)
    cool = openloop.summarize(openloop.window(records, high, high + tail), tail)
    normal = normal_p99_ms or percentile(
        sorted(r[2] for r in openloop.window(records, high + tail - 5, high + tail)
               if r[3] == 202), 99)  # fmt: skip
    cpu = sum(out["cpu_s"] for out in outs)
    figures = {
        **_common(started, high + tail, cpu, window),
        "requests": hot["sent"] + cool["sent"],
        "accepted": hot["accepted_n"] + cool["accepted_n"],
        "non_202": hot["refused_503"] + cool["refused_503"] + hot["other_status"],
        "socket_errors": hot["failed"] + cool["failed"],
        "p50_ms": hot["p50_ms"],
        "p99_ms": hot["p99_ms"],
        "target_rate_req_s": rate,
        "overload": hot,
        "after_drop": cool,
        "retry_after_503": sum(out["retry_after"] for out in outs),
        "normal_p99_ms": normal,
        "recovered_s": openloop.recovered_after(records, high, 2 * normal) if normal else None,
        "rss_before_mib": procs.rss_mib(before),
        "rss_after_mib": procs.rss_mib(after),
        "rss_largest_before_mib": procs.rss_mib(before, largest=True),
        "rss_largest_after_mib": procs.rss_mib(after, largest=True),
        "loadgen": f"open loop x{shares} proc, <= {args.overload_connections} conn",
    }
    if target.keep_ids:
        figures[ACCEPTED_IDS] = [i for out in outs for i in out["accepted_ids"]]
    return figures


# --- the Benthos anchor -----------------------------------------------------------------
def benthos(args: argparse.Namespace, scenario: Literal["single", "array100"]) -> Load:
    """Benthos v4.27 (built once, started per run) driven by the same wrk + tweets.lua;
    every accepted tweet is then looked for in both brokers (``verified``). The stack's
    processes (the brokers Benthos writes to) are sampled as wrk's sending window opens
    and closes: ``window_usage``, what the CPU per tweet is taken over."""
    from loadtest.benthos import run_anchor

    def run(tag: str) -> Figures:
        stack = procs.stack_processes()
        usage: dict[str, procs.Usage] = {}

        def on_window(which: str) -> None:
            usage[which] = procs.sample(stack)

        started = time.time()
        result = run_anchor(scenario, args.duration, args.connections, tag=tag,
                            on_window=on_window)  # fmt: skip
        return {"started_at": started, **result.as_bench_run(), "window_usage": usage}

    return Load(run, args.duration)


def benthos_overload(
    args: argparse.Namespace, max_rate: float, rate: float, tail_rate: float
) -> Load:
    """The pipeline's overload run (:func:`open_loop_overload`, the same open-loop
    generator, phases and summaries) against Benthos, started for the run; afterwards
    every tweet it answered 202 is looked for in both of its brokers. Its "normal" p99 is
    its own over the last 5 s at half its maximum (it has no half-rate run)."""

    def run(tag: str) -> Figures:
        return asyncio.run(_benthos_overload_run(args, max_rate, rate, tail_rate, tag))

    return Load(run, args.overload_duration + args.overload_tail, CHILD_START_DELAY_S)


async def _benthos_overload_run(
    args: argparse.Namespace, max_rate: float, rate: float, tail_rate: float, tag: str
) -> Figures:
    from loadtest.benthos import process
    from loadtest.benthos.run import default_max_in_flight, running_anchor

    in_flight = default_max_in_flight(args.connections, 1)  # as the `benthos` anchor runs
    async with running_anchor("overload", max_in_flight=in_flight) as anchor:
        split = urlsplit(anchor.url)
        target = OpenLoopTarget(split.hostname or "127.0.0.1", split.port or 80, split.path,
                                keep_ids=False)  # fmt: skip
        stack = procs.stack_processes()
        usage = {"start": procs.sample(stack)}
        cpu0 = process.cpu_seconds(anchor.pid)
        out = await asyncio.to_thread(open_loop_overload, args, target, rate, tail_rate, None, tag)
        benthos_cpu = process.cpu_seconds(anchor.pid) - cpu0
        usage["end"] = procs.sample(stack)
        counts = await anchor.counts(out["accepted"])
    accepted = out["accepted"]
    missing = max(0, accepted - counts.kafka) + max(0, accepted - counts.rabbitmq)
    hot = out["overload"]
    return {
        **out,
        "max_rate_req_s": max_rate,
        "accepted_per_s": hot["accepted_per_s"],
        "requests_per_s": hot["sent_per_s"],
        "e2e_tweets_per_s": hot["accepted_per_s"] if missing == 0 else None,
        "zero_loss": None,
        "kafka_records": counts.kafka,
        "rabbitmq_messages": counts.rabbitmq,
        "anchor_missing": missing,
        "verified": missing == 0,
        "benthos_cpu_s": round(benthos_cpu, 2),
        "cpu_ms_per_tweet": round(1000 * benthos_cpu / accepted, 4) if accepted else None,
        "window_usage": usage,
    }
