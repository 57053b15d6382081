"""Flags, the whole benchmark run (restoring serve_config.yaml whatever happens), and
the results written out."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
from pathlib import Path
from typing import Any

import loadtest.bench
from devstack import serve_ops
from loadtest.bench import measure, report
from loadtest.bench.drivers import wrk_binary
from loadtest.bench.runner import Bench
from loadtest.bench.scenarios import ALL_SCENARIOS
from loadtest.bench.variants import DEFAULT_AUTOSCALE
from loadtest.benthos import build as benthos_build

RESULTS = Path(__file__).resolve().parents[1] / "results"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    env = os.environ.get
    p = argparse.ArgumentParser(
        description=loadtest.bench.__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
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
    p.add_argument("--stream-connections", type=int, default=8, help="WebSockets (stream)")
    p.add_argument("--stream-in-flight", type=int, default=8, help="frames per WebSocket")
    p.add_argument("--max-rate", type=float, default=None, help="overload: max req/s, else rest")
    p.add_argument(
        "--benthos-max-rate", type=float, default=None,
        help="benthos_overload: Benthos's max req/s, else the benthos median",
    )  # fmt: skip
    p.add_argument("--overload-factor", type=float, default=2.0)
    p.add_argument("--overload-duration", type=float, default=60.0)
    p.add_argument("--overload-tail", type=float, default=15.0, help="s at half the max after")
    p.add_argument("--overload-processes", type=int, default=2)
    p.add_argument("--overload-connections", type=int, default=3000)
    p.add_argument(
        "--scenarios",
        default=env("SCENARIOS", ",".join(ALL_SCENARIOS)),
        help=f"default: all of {','.join(ALL_SCENARIOS)}",
    )
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--smoke", action="store_true", help="REPEAT=1, 3 s runs, fixed replicas")
    args = p.parse_args(argv)
    if args.smoke:
        args.repeat, args.duration, args.pause, args.settle = 1, 3.0, 0.5, 0.5
        args.replica_duration = args.replica_duration or 2.0
        args.autoscale_cooldown = 0.0
        if "SCENARIOS" not in os.environ:
            args.scenarios = smoke_scenarios(benthos_build.binary().exists())
    args.replica_duration = args.replica_duration or args.duration
    args.scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = set(args.scenarios) - set(ALL_SCENARIOS)
    if unknown:
        p.error(f"unknown scenarios {sorted(unknown)}; choose from {', '.join(ALL_SCENARIOS)}")
    if args.repeat < 1 or args.duration <= 0 or args.connections < 1:
        p.error("--repeat, --duration and --connections must be positive")
    return args


def smoke_scenarios(benthos_built: bool) -> str:
    """CI-sized: the anchor only when its binary is cached (a cold build is minutes)."""
    anchor = "benthos,benthos_batch," if benthos_built else ""
    return (
        f"noop,noop_grpc,rest,{anchor}stream,rest_half,rest_batch,drain,grpc,grpc_batch,replicas_1"
    )


async def _main(args: argparse.Namespace) -> dict[str, Any]:
    bench = Bench(args)
    started = dt.datetime.now(dt.UTC)
    load_start = [round(x, 1) for x in os.getloadavg()]  # a shared machine shows here
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
            t = await asyncio.to_thread(serve_ops.restore)
            print(f"restored serve_config.yaml deployment in {t:.0f}s", flush=True)
        finally:
            await bench.counters.close()
    params = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    return {
        "date": started.isoformat(timespec="seconds"),
        "duration_s": round((dt.datetime.now(dt.UTC) - started).total_seconds(), 1),
        "machine": {**measure.machine(wrk_binary()), "load_average_start": load_start},
        "params": params,
        "error": error,
        **extra,
        "scenarios": bench.results,
        "targets": report.targets(bench.results),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        apps = serve_ops.applications()
    except OSError as exc:
        print(f"Ray dashboard not reachable ({exc}); start the stack with `make up`.")
        return 2
    if apps.get("ingest", {}).get("status") != "RUNNING":
        print("the `ingest` Serve application is not RUNNING; start the stack with `make up`.")
        return 2
    results = asyncio.run(_main(args))
    report.write(results, args.out)
    print()
    report.print_table(results)
    print(f"\nwrote {args.out / 'bench.json'} and {args.out / 'bench.md'}")
    if results["error"]:
        print(f"benchmark stopped early: {results['error']}")
        return 1
    return 0
