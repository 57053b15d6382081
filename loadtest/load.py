"""`make load`: run Locust headless against the local stack, then check nothing was lost.

1. read ``GET /stats`` (Redis and Valkey totals);
2. run Locust headless (``--users``, ``--spawn-rate``, ``--duration``), CSV and HTML
   report under ``loadtest/results/``;
3. wait (bounded) until both stores counted every accepted tweet, and a little longer
   in case more than that arrives;
4. print accepted, Redis delta and Valkey delta; exit 1 unless all three are equal.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from devstack.config import REPO
from devstack.procs import venv_bin
from devstack.waits import poll
from loadtest.counters import HTTP_BASE, http_stats, stats_totals

RESULTS = Path(__file__).resolve().parent / "results"


def wait_drained(before: tuple[int, int], accepted: int, timeout: float) -> tuple[int, int]:
    """Poll /stats until both deltas reach ``accepted`` (or ``timeout``); return deltas."""

    def deltas() -> tuple[int, int]:
        r, v = stats_totals(http_stats())
        return r - before[0], v - before[1]

    return poll(deltas, lambda d: min(d) >= accepted, timeout=timeout, every=0.5)


def main(argv: list[str] | None = None) -> int:
    env = os.environ.get
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--duration", default=env("DURATION", "30s"))
    p.add_argument("--users", type=int, default=int(env("USERS", "50")))
    p.add_argument("--spawn-rate", type=float, default=float(env("SPAWN_RATE", "10")))
    p.add_argument("--drain-timeout", type=float, default=180.0)
    p.add_argument("--settle", type=float, default=3.0)
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("locust_args", nargs="*", help="extra Locust arguments (after --)")
    args = p.parse_args(argv)
    duration = args.duration if args.duration[-1].isalpha() else f"{args.duration}s"

    args.out.mkdir(parents=True, exist_ok=True)
    before = stats_totals(http_stats())
    with tempfile.TemporaryDirectory(prefix="locust-accepted-") as accepted_dir:
        cmd = [
            venv_bin("locust"),
            "-f", str(Path(__file__).with_name("locustfile.py")),
            "--headless",
            "--host", HTTP_BASE,
            "--users", str(args.users),
            "--spawn-rate", str(args.spawn_rate),
            "--run-time", duration,
            "--stop-timeout", "15",
            "--csv", str(args.out / "load"),
            "--html", str(args.out / "load.html"),
            "--only-summary",
            *args.locust_args,
        ]  # fmt: skip
        print("$ " + " ".join(cmd), flush=True)
        env_vars = {**os.environ, "LOADTEST_ACCEPTED_DIR": accepted_dir}
        # Locust exits 1 when any request failed (e.g. a 503 under overload): reported,
        # but the verdict below is about loss, not about back-pressure.
        seconds = _seconds(duration)
        locust = subprocess.run(cmd, cwd=REPO, env=env_vars, timeout=seconds + 120, check=False)
        files = list(Path(accepted_dir).glob("accepted-*.json"))
        if not files:
            print("Locust wrote no accepted count (did it start?)")
            return 1
        counts = [json.loads(f.read_text()) for f in files]
    accepted = sum(c["total"] for c in counts)
    print(f"waiting up to {args.drain_timeout:.0f}s for the consumers to count {accepted} ...")
    started = time.monotonic()
    wait_drained(before, accepted, args.drain_timeout)
    drain = time.monotonic() - started
    time.sleep(args.settle)
    d_r, d_v = (a - b for a, b in zip(stats_totals(http_stats()), before, strict=True))
    rest, grpc_ = sum(c["rest"] for c in counts), sum(c["grpc"] for c in counts)
    print()
    print(f"accepted      {accepted:>10}   (REST {rest}, gRPC {grpc_})")
    print(f"Redis delta   {d_r:>10}")
    print(f"Valkey delta  {d_v:>10}")
    print(f"drained in {drain:.1f}s; Locust exit code {locust.returncode}")
    print(f"report: {args.out / 'load.html'}, CSV: {args.out / 'load_stats.csv'}")
    if accepted == d_r == d_v:
        print("OK: accepted == Redis delta == Valkey delta")
        return 0
    print("FAIL: the three counts differ")
    return 1


def _seconds(duration: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600}
    total, number = 0.0, ""
    for ch in duration:
        if ch.isdigit() or ch == ".":
            number += ch
        elif ch in units and number:
            total, number = total + float(number) * units[ch], ""
    return total + (float(number) if number else 0.0)


if __name__ == "__main__":
    sys.exit(main())
