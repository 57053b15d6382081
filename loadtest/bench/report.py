"""What a benchmark reports: medians per scenario, one line per run, the issue's targets,
and the same table as Markdown (``bench.md``), on the terminal and as JSON (``bench.json``)."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from loadtest.bench.variants import SCALED_KEYS

Report = dict[str, Any]


def medians(runs: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in runs[0]:
        values = [r.get(key) for r in runs]
        if all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
            out[key] = round(statistics.median(values), 2)
        elif key in ("replicas_end", "loadgen", "errors"):
            out[key] = values[-1]
    return out


def one_line(run: dict[str, Any]) -> str:
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
        return "/".join(str(value.get(k, "?")) for k in SCALED_KEYS)
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
            now = tuple(sample.get(k) for k in SCALED_KEYS)
            if now != previous:
                counts = "  ".join(f"{k}={v}" for k, v in zip(SCALED_KEYS, now, strict=True))
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


def write(report: Report, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "bench.md").write_text(markdown(report))
