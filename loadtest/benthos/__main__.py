"""CLI: build (cached) and run the Benthos anchor; print every run and the medians.

python -m loadtest.benthos --scenario single --duration 10 --connections 64 --repeat 3
python -m loadtest.benthos --scenario array100 --json
python -m loadtest.benthos --build-only | --print-config | --cleanup
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import statistics
import sys
import time
from typing import Any, get_args

from loadtest.benthos import build, run
from loadtest.benthos.config import Ports, anchor_config, render

FIGURES = (
    "requests_per_s",
    "tweets_per_s",
    "p50_ms",
    "p99_ms",
    "cpu_ms_per_request",
    "cpu_ms_per_tweet",
    "machine_cpu_pct",
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--scenario", choices=get_args(run.Scenario), default="single")
    p.add_argument("--duration", type=float, default=10.0, help="sending window, seconds")
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--pause", type=float, default=2.0, help="seconds between runs")
    p.add_argument(
        "--max-in-flight", type=int, default=None, help="per output; max(connections, batch)"
    )
    p.add_argument("--json", action="store_true", help="print every run as JSON too")
    p.add_argument("--build-only", action="store_true")
    p.add_argument("--print-config", action="store_true", help="the YAML, example ports")
    p.add_argument("--cleanup", action="store_true", help="delete the anchor topic and queue")
    args = p.parse_args(argv)
    if not 1 <= args.repeat <= 20 or args.duration <= 0 or args.connections < 1:
        p.error("--repeat 1..20, --duration > 0 and --connections >= 1")
    return args


def medians(results: list[run.AnchorResult]) -> dict[str, Any]:
    """Median of every figure over the runs (None where a run had none)."""
    out: dict[str, Any] = {}
    for key in FIGURES:
        values = [getattr(r, key) for r in results if getattr(r, key) is not None]
        out[key] = round(statistics.median(values), 3) if values else None
    out["verified_runs"] = f"{sum(r.verified for r in results)}/{len(results)}"
    return out


def line(r: run.AnchorResult) -> str:
    """One run on one line, with its verification."""
    return (
        f"{r.requests_per_s:.0f} req/s, {r.tweets_per_s:.0f} tweets/s, p50 {r.p50_ms:.1f} ms, "
        f"p99 {r.p99_ms:.1f} ms, Benthos CPU {r.cpu_ms_per_request} ms/req, "
        f"machine {r.machine_cpu_pct}%, non-202 {r.non_202}, socket errors {r.socket_errors}, "
        f"Kafka {r.kafka_records} / RabbitMQ {r.rabbitmq_messages} of {r.accepted} accepted "
        f"({'verified' if r.verified else 'NOT VERIFIED'})"
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.print_config:
        print(render(anchor_config(run.load_settings(), Ports(input=4196, service=4195))))
        return 0
    if args.cleanup:
        asyncio.run(run.cleanup())
        print("deleted the anchor's topic, queue and exchange")
        return 0
    started = time.monotonic()
    print(f"Benthos binary: {build.build()} ({time.monotonic() - started:.0f}s)", flush=True)
    if args.build_only:
        return 0
    results = []
    for i in range(args.repeat):
        result = run.run_anchor(
            args.scenario, args.duration, args.connections, max_in_flight=args.max_in_flight
        )
        results.append(result)
        print(f"  {args.scenario} #{i + 1}: {line(result)}", flush=True)
        if args.json:
            print(json.dumps(dataclasses.asdict(result)), flush=True)
        if i + 1 < args.repeat:
            time.sleep(args.pause)
    summary = medians(results)
    print(f"median of {len(results)}: " + ", ".join(f"{k} {v}" for k, v in summary.items()))
    return 0 if all(r.verified for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
