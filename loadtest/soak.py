"""Soak: hours-long behaviour in one command (``make soak``, not in CI).

    python -m loadtest.soak [--minutes 60] [--rate R] [--interval 30]

An open-loop load at half the max single-tweet rate (``--rate``, else half the ``rest``
median in loadtest/results/bench.json, else half of a 10 s wrk measurement) for
``--minutes``, with the dashboard's server-sent-event stream open the whole time (as a
browser tab would hold it). Every ``--interval`` s: each stack process's RSS, Kafka lag
and RabbitMQ depth, and the stack's CPU per counted tweet. At the end, after the drain:
accepted = Redis delta = Valkey delta. Checks after the warm-up: every process's RSS
within +-15 % of its value at the end of the warm-up, lag bounded, CPU per tweet steady.
Writes loadtest/results/soak.json and soak.png; exit 1 if a check fails.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from loadtest.bench import drivers, measure, openloop, procs
from loadtest.counters import HTTP_BASE, Counters, lag

RESULTS = Path(__file__).resolve().parent / "results"
Sample = dict[str, Any]


# --- checks (pure) ----------------------------------------------------------------------
def after_warmup(samples: list[Sample], warmup_s: float) -> list[Sample]:
    return [s for s in samples if s["t"] >= warmup_s]


def rss_drift(samples: list[Sample], tolerance: float = procs.RSS_TOLERANCE) -> dict[str, Any]:
    """Per process: the largest relative change of its RSS against the first sample
    (the end of the warm-up); ok if every one stays within ``tolerance``."""
    if not samples:
        return {"ok": False, "worst": {}}
    ref = samples[0]["rss_mib"]
    worst: dict[str, float] = {}
    for name, base in ref.items():
        values = [s["rss_mib"].get(name) for s in samples[1:]]
        changes = [abs(v - base) / base for v in values if v is not None and base > 0]
        worst[name] = round(max(changes, default=0.0), 3)
    return {"ok": all(v <= tolerance for v in worst.values()), "worst": worst}


def lag_bounded(samples: list[Sample], bound: int) -> dict[str, Any]:
    """Kafka lag and RabbitMQ depth never above ``bound`` (an unreadable one fails)."""
    kafka = [s["kafka_lag"] for s in samples]
    rabbit = [s["rabbitmq_depth"] for s in samples]
    known = [v for v in kafka + rabbit if v is not None]
    ok = bool(samples) and len(known) == len(kafka + rabbit) and max(known) <= bound
    return {"ok": ok, "max_kafka_lag": max(kafka, default=None, key=lambda v: v or 0),
            "max_rabbitmq_depth": max(rabbit, default=None, key=lambda v: v or 0),
            "bound": bound}  # fmt: skip


def cpu_steady(samples: list[Sample], tolerance: float = 0.25) -> dict[str, Any]:
    """CPU ms per counted tweet of every interval within ``tolerance`` of their median."""
    values = [s["cpu_ms_per_tweet"] for s in samples if s["cpu_ms_per_tweet"] is not None]
    if not values:
        return {"ok": False, "median": None, "worst": None}
    med = statistics.median(values)
    worst = max(abs(v - med) / med for v in values) if med else 0.0
    return {"ok": worst <= tolerance, "median": round(med, 3), "worst": round(worst, 3)}


# --- the run ----------------------------------------------------------------------------
async def hold_dashboard(stop_at: float, seen: list[int]) -> None:
    """Keep the dashboard's SSE stream open until ``stop_at`` (it ends every ~5 minutes;
    reconnect like a browser, bounded by the deadline); count the events."""
    url = f"{HTTP_BASE}/dashboard/api/events"
    async with httpx.AsyncClient(timeout=httpx.Timeout(10, read=30)) as client:
        while time.time() < stop_at:
            try:
                async with client.stream("GET", url) as response:
                    async for line in response.aiter_lines():
                        seen[0] += line.startswith("data:")
                        if time.time() >= stop_at:
                            return
            except httpx.HTTPError:
                seen[1] += 1
                await asyncio.sleep(1.0)


def half_max_rate(args: argparse.Namespace) -> tuple[float, str]:
    """--rate, else half the rest median of the last bench, else half a 10 s wrk run."""
    if args.rate:
        return args.rate, "--rate"
    bench = RESULTS / "bench.json"
    if bench.exists():
        rest = json.loads(bench.read_text())["scenarios"].get("rest", {}).get("median", {})
        if rest.get("accepted_per_s"):
            return rest["accepted_per_s"] / 2, f"half the rest median of {bench}"
    run = drivers.run_wrk(f"{HTTP_BASE}/input", duration_s=10, connections=64, threads=1,
                          batch=1, tag=f"soak-max-{int(time.time())}")  # fmt: skip
    return run["accepted"] / 10 / 2, "half of a 10 s wrk run"


class Sampler:
    """Every interval: RSS per process, lag, and the stack's CPU per counted tweet."""

    def __init__(self, store: Counters) -> None:
        self.store = store
        self.samples: list[Sample] = []
        self.t0 = time.time()
        self.last: tuple[procs.Usage, int] | None = None

    async def take(self) -> Sample:
        # Found again each time: replicas the autoscaler adds or stops come and go.
        stack = await asyncio.to_thread(procs.stack_processes)
        usage = await asyncio.to_thread(procs.sample, stack)
        redis, valkey = await self.store.totals()
        backlog = await lag()
        sample: Sample = {"t": round(time.time() - self.t0, 1), "redis_total": redis,
                          "valkey_total": valkey, "rss_mib": procs.rss_mib(usage),
                          **backlog, "cpu_ms_per_tweet": None}  # fmt: skip
        if self.last is not None:
            cpu = sum(procs.cpu_between(self.last[0], usage).values())
            sample["cpu_ms_per_tweet"] = measure.ms_per(cpu, redis - self.last[1])
        self.last = (usage, redis)
        self.samples.append(sample)
        backlog_text = f"{backlog['kafka_lag']}/{backlog['rabbitmq_depth']}"
        print(f"t={sample['t']:>6.0f}s counted={redis} lag k/r={backlog_text} "
              f"cpu/tweet={sample['cpu_ms_per_tweet']} ms", flush=True)  # fmt: skip
        return sample


async def soak(args: argparse.Namespace) -> dict[str, Any]:
    rate, how = await asyncio.to_thread(half_max_rate, args)
    seconds = args.minutes * 60
    print(f"soak: {rate:.0f} req/s ({how}) for {args.minutes:g} min", flush=True)
    store = Counters()
    before = await store.totals()
    split = urlsplit(HTTP_BASE)
    start_at = time.time() + drivers.CHILD_START_DELAY_S
    kws = [{"host": split.hostname, "port": split.port, "path": "/input",
            "phases": [(rate, seconds)], "share": i, "shares": 2, "start_at": start_at,
            "tag": f"soak-{int(start_at)}-p{i}", "timeout_s": 10.0, "max_connections": 256,
            "bucket_s": args.interval} for i in range(2)]  # fmt: skip
    sse = [0, 0]
    dashboard = asyncio.create_task(hold_dashboard(start_at + seconds, sse))
    load = asyncio.create_task(
        asyncio.to_thread(drivers.in_children, openloop.child, kws, seconds + 120)
    )
    sampler = Sampler(store)
    while not load.done():  # bounded: the load ends by its schedule (+ the backstop)
        await sampler.take()
        await asyncio.wait({load}, timeout=args.interval)
    outs = await load
    await dashboard
    accepted = sum(b["accepted_n"] for out in outs for b in out["buckets"])
    target = (before[0] + accepted, before[1] + accepted)
    drained = await drain(store, target, args.drain_timeout)
    await asyncio.sleep(2.0)
    after = await store.totals()
    await sampler.take()
    await store.close()
    steady = after_warmup(sampler.samples, args.warmup_minutes * 60)
    checks = {
        "rss_within_15pct": rss_drift(steady),
        "lag_bounded": lag_bounded(steady, args.max_lag),
        "cpu_per_tweet_steady": cpu_steady(steady[1:]),  # the first interval has no delta
        "counts_exact": {
            "ok": after == target,
            "accepted": accepted,
            "drained": drained,
            "redis_delta": after[0] - before[0],
            "valkey_delta": after[1] - before[1],
        },  # fmt: skip
    }
    buckets = [b for out in outs for b in out["buckets"]]
    return {
        "rate_req_s": rate, "rate_from": how, "minutes": args.minutes,
        "interval_s": args.interval, "warmup_minutes": args.warmup_minutes,
        "sent": sum(b["sent"] for b in buckets), "accepted": accepted,
        "refused_503": sum(b["refused_503"] for b in buckets),
        "retry_after_503": sum(out["retry_after"] for out in outs),
        "other_status": sum(b["other_status"] for b in buckets),
        "other_statuses": dict(sum((Counter(b["other_statuses"]) for b in buckets), Counter())),
        "failed": sum(b["failed"] for b in buckets),
        "loadgen_cpu_s": round(sum(out["cpu_s"] for out in outs), 1),
        "dashboard_events": sse[0], "dashboard_reconnect_errors": sse[1],
        "checks": checks, "ok": all(c["ok"] for c in checks.values()),
        "samples": sampler.samples,
    }  # fmt: skip


async def drain(store: Counters, target: tuple[int, int], timeout: float) -> bool:
    """Wait (bounded) until both stores counted everything accepted."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        r, v = await store.totals()
        if r >= target[0] and v >= target[1]:
            return True
        await asyncio.sleep(0.5)
    return False


def plot(report: dict[str, Any], path: Path) -> bool:
    """RSS per process, lag and CPU per tweet over time; False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    samples = report["samples"]
    t = [s["t"] / 60 for s in samples]
    fig, (rss, backlog, cpu) = plt.subplots(3, 1, figsize=(10, 11), sharex=True)
    big = sorted(samples[-1]["rss_mib"], key=lambda k: -samples[-1]["rss_mib"][k])[:12]
    for name in big:
        rss.plot(t, [s["rss_mib"].get(name) for s in samples], label=name)
    rss.set_ylabel("RSS MiB")
    rss.legend(fontsize=7, ncol=3)
    backlog.plot(t, [s["kafka_lag"] for s in samples], label="Kafka lag (records)")
    backlog.plot(t, [s["rabbitmq_depth"] for s in samples], label="RabbitMQ depth")
    backlog.set_ylabel("backlog")
    backlog.legend(fontsize=8)
    cpu.plot(t, [s["cpu_ms_per_tweet"] for s in samples], marker="o")
    cpu.set_ylabel("stack CPU ms / tweet")
    cpu.set_xlabel("minutes")
    for axis in (rss, backlog, cpu):
        axis.axvline(report["warmup_minutes"], color="grey", linestyle=":")
    fig.suptitle(f"soak: {report['rate_req_s']:.0f} req/s for {report['minutes']:g} min "
                 f"({'all checks met' if report['ok'] else 'a check failed'})")  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--minutes", type=float, default=60.0)
    p.add_argument("--rate", type=float, default=None, help="req/s (default: half the max)")
    p.add_argument("--interval", type=float, default=30.0, help="seconds between samples")
    p.add_argument("--warmup-minutes", type=float, default=None, help="default min(5, 1/3)")
    p.add_argument("--max-lag", type=int, default=5000, help="bound on lag and depth")
    p.add_argument("--drain-timeout", type=float, default=180.0)
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    if not 0 < args.minutes <= 24 * 60 or args.interval <= 0:
        p.error("--minutes in (0, 1440] and --interval > 0")
    if args.warmup_minutes is None:
        args.warmup_minutes = min(5.0, args.minutes / 3)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    report = asyncio.run(soak(args))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "soak.json").write_text(json.dumps(report, indent=2) + "\n")
    drawn = plot(report, args.out / "soak.png")
    for name, check in report["checks"].items():
        detail = {k: v for k, v in check.items() if k != "worst" or not isinstance(v, dict)}
        print(f"{'MET ' if check['ok'] else 'MISS'}  {name}: {detail}")
    worst = report["checks"]["rss_within_15pct"]["worst"]
    print("RSS change after warm-up, worst per process:", json.dumps(worst))
    print(f"wrote {args.out / 'soak.json'}" + (f" and {args.out / 'soak.png'}" if drawn else
          " (no plot: install the load extra for matplotlib)"))  # fmt: skip
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
