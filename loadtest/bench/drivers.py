"""How load is generated: each driver returns a :class:`Load`, a blocking ``run(tag)``
that sends for ``duration`` s (after ``start_delay`` s) and returns the same figures
(requests, accepted, latency, load-generator and machine CPU). A new load generator is
one more function here."""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loadtest import grpc_load
from loadtest.bench.measure import CpuWindow, percentile
from loadtest.counters import HTTP_BASE

LUA = Path(__file__).resolve().parents[1] / "tweets.lua"
WRK_GRACE_S = 4.0
GRPC_START_DELAY_S = 3.0  # every gRPC load process imports and connects first

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
