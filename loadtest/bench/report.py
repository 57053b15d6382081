"""What a benchmark reports: medians per scenario, one line per run, the issue's targets,
and the same table as Markdown (``bench.md``), on the terminal and as JSON (``bench.json``)."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from loadtest.bench import procs
from loadtest.bench.scaling import consumer_rows, gateway_row
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


Row = dict[str, Any]


def _num(value: float) -> str:
    """1,234 for rates, 2.67 for small figures (never scientific notation)."""
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


def ratio(
    target: str, num: float | None, den: float | None, *, lo: float | None = None,
    hi: float | None = None, unit: str = "",
) -> Row | None:  # fmt: skip
    """``num / den`` against a floor ``lo`` or a ceiling ``hi``; None if either is missing."""
    if not num or not den:
        return None
    r = num / den
    met = (lo is None or r >= lo) and (hi is None or r <= hi)
    value = f"{_num(num)}{unit} / {_num(den)}{unit} = {r:.2f}"
    return {"target": target, "value": value, "met": met}


def bound(target: str, value: float | None, *, lo: float | None = None,
          hi: float | None = None, unit: str = "") -> Row | None:  # fmt: skip
    """One figure against a floor or a ceiling; None if it was not measured."""
    if value is None:
        return None
    met = (lo is None or value >= lo) and (hi is None or value <= hi)
    return {"target": target, "value": f"{_num(value)}{unit}", "met": met}


def _med(results: dict[str, Any], name: str, key: str) -> Any:
    return (results.get(name) or {}).get("median", {}).get(key)


GENERATOR_TARGET = "open-loop generator sent >= 0.95 x its target rate"
ACCEPTED_TARGET = "overload: accepted >= 0.9 x max single-tweet rate"
P99_TARGET = "overload: p99 accepted <= 4 x half-rate p99"
P99_503_TARGET = "overload: p99 of the 503 answers <= 100 ms"
RECOVERY_TARGET = "overload: latency normal again <= 5 s after the load drops"
RETRY_AFTER_TARGET = "overload: every 503 carries Retry-After"
LOST_TARGET = "overload: nothing answered 202 lost (each id looked for in Redis and Valkey)"


def _overload_rows(results: dict[str, Any]) -> list[Row | None]:
    """Issue 20 item 5, from the last overload run and the same run's medians; each row
    with the Benthos anchor's figure beside it when ``benthos_overload`` ran."""
    runs = (results.get("overload") or {}).get("runs") or []
    if not runs:
        return []
    run, top = runs[-1], _med(results, "rest", "accepted_per_s")
    hot, half_p99 = run["overload"], _med(results, "rest_half", "p99_ms")
    rate = run["target_rate_req_s"]
    rows = [
        ratio(GENERATOR_TARGET, hot["sent_per_s"], rate, lo=0.95, unit="/s"),
        ratio(ACCEPTED_TARGET, hot["accepted_per_s"], top, lo=0.9, unit="/s"),
        ratio(P99_TARGET, hot["p99_ms"], half_p99, hi=4.0, unit=" ms"),
        bound(P99_503_TARGET, hot["p99_503_ms"], hi=100, unit=" ms"),
        _recovered(run),
        _retry_after(run),
        _memory_bounded(run),
        _nothing_accepted_lost(runs),
    ]
    beside = anchor_overload(results)
    for row in rows:
        if row is not None and beside:
            row["benthos"] = beside.get(row["target"], "-")
    return rows


def _text(row: Row | None, missing: str = "-") -> str:
    if row is None:
        return missing
    return f"{row['value']} ({'met' if row['met'] else 'missed'})"


def anchor_overload(results: dict[str, Any]) -> dict[str, str]:
    """Benthos under the same open-loop run (``benthos_overload``, at 2 x its own max):
    its figure for each overload target, by target. Its "half-rate p99" is its own p99
    over the last 5 s at half its max (``normal_p99_ms``); it answers no 503 (it queues
    everything), so the 503 rows say so."""
    runs = (results.get("benthos_overload") or {}).get("runs") or []
    if not runs:
        return {}
    run = runs[-1]
    hot, normal = run["overload"], run.get("normal_p99_ms")
    top = run.get("max_rate_req_s") or _med(results, "benthos", "accepted_per_s")
    refused = hot["refused_503"] + run["after_drop"]["refused_503"]
    no_503 = "no 503 answered (it never refuses)"
    lost = (
        f"{run['anchor_missing']} missing of {run['accepted']:,} in Kafka + RabbitMQ"
        if run.get("anchor_missing") is not None
        else None
    )
    return {
        GENERATOR_TARGET: _text(ratio(GENERATOR_TARGET, hot["sent_per_s"],
                                      run["target_rate_req_s"], lo=0.95, unit="/s")),
        ACCEPTED_TARGET: _text(ratio(ACCEPTED_TARGET, hot["accepted_per_s"], top, lo=0.9,
                                     unit="/s")),
        P99_TARGET: _text(ratio(P99_TARGET, hot["p99_ms"], normal, hi=4.0, unit=" ms"))
        + " (its own p99 at half its max)",
        P99_503_TARGET: _text(bound(P99_503_TARGET, hot["p99_503_ms"], hi=100, unit=" ms"))
        if refused else no_503,
        RECOVERY_TARGET: _text(_recovered(run), "not measured"),
        RETRY_AFTER_TARGET: _text(_retry_after(run)) if refused else no_503,
        LOST_TARGET: lost or "not checked",
    }  # fmt: skip


RSS_GROWTH_LIMIT = 1 + procs.RSS_TOLERANCE
"""Overload: a process's RSS after the run at most this x before (as in ``make soak``)..."""
RSS_SLACK_MIB = 32.0
"""...or at most this much more (a small process's allocator noise is not growth)."""


def _recovered(run: dict[str, Any]) -> Row | None:
    if run.get("normal_p99_ms") is None:
        return None
    if run["recovered_s"] is None:
        return {"target": RECOVERY_TARGET, "value": "not normal again before the run ended",
                "met": False}  # fmt: skip
    return bound(RECOVERY_TARGET, run["recovered_s"], hi=5, unit=" s")


def _retry_after(run: dict[str, Any]) -> Row:
    refused = run["overload"]["refused_503"] + run["after_drop"]["refused_503"]
    return {
        "target": RETRY_AFTER_TARGET,
        "value": f"{run['retry_after_503']:,} of {refused:,}",
        "met": refused > 0 and run["retry_after_503"] == refused,
    }


def _memory_bounded(run: dict[str, Any]) -> Row:
    """The largest process of each label after the run against before (a label's RSS
    summed would count a replica the autoscaler added as growth)."""
    peak_before, peak_after = run["rss_largest_before_mib"], run["rss_largest_after_mib"]
    grown = {
        name: (peak_before[name], mib)
        for name, mib in peak_after.items()
        if name in peak_before
        and mib > max(RSS_GROWTH_LIMIT * peak_before[name], peak_before[name] + RSS_SLACK_MIB)
    }
    worst = ", ".join(f"{n} {b:,.0f} -> {a:,.0f} MiB" for n, (b, a) in sorted(grown.items()))
    return {
        "target": f"overload: every process's RSS after <= {RSS_GROWTH_LIMIT:g} x before "
        f"(or + {RSS_SLACK_MIB:g} MiB)",
        "value": worst or f"all {len(peak_after)} within",
        "met": not grown,
    }


def _nothing_accepted_lost(runs: list[dict[str, Any]]) -> Row | None:
    """Every tweet answered 202 in the overload runs, looked for by id in both stores."""
    checked = [r for r in runs if r.get("accepted_ids_checked") is not None]
    if not checked:
        return None
    missing = sum(r["accepted_missing_redis"] + r["accepted_missing_valkey"] for r in checked)
    beyond = ", ".join(f"{r['counted_beyond_202']:,}" for r in checked)
    return {
        "target": LOST_TARGET,
        "value": f"{missing} missing of {sum(r['accepted_ids_checked'] for r in checked):,} "
        f"in {len(checked)} runs (counted beyond the 202s: {beyond})",
        "met": missing == 0,
    }


DRAIN_TARGET = 25_000


def _drain_row(redis: float | None, valkey: float | None) -> Row | None:
    """Issue 20 item 3: each consumer drains >= 25,000 tweets/s (the ``drain`` scenario)."""
    if redis is None and valkey is None:
        return None
    return {
        "target": f"each consumer drains >= {DRAIN_TARGET:,} tweets/s (Kafka -> Redis, "
        "RabbitMQ -> Valkey)",
        "value": " / ".join("-" if x is None else _num(x) for x in (redis, valkey)) + " tweets/s",
        "met": all(x is not None and x >= DRAIN_TARGET for x in (redis, valkey)),
    }


def targets(results: dict[str, Any]) -> list[Row]:
    """The issues' targets, each a ratio or a bound within this one run."""

    def med(name: str, key: str) -> Any:
        return _med(results, name, key)

    rest, benthos = med("rest", "e2e_tweets_per_s"), med("benthos", "e2e_tweets_per_s")
    batch = med("rest_batch", "e2e_tweets_per_s")
    fr, fv = med("rest_half", "fresh_p99_redis_ms"), med("rest_half", "fresh_p99_valkey_ms")
    rows: list[Row | None] = [
        ratio("REST single tweets end to end >= 0.6 x no-op HTTP ceiling", rest,
              med("noop", "accepted_per_s"), lo=0.6),
        ratio("REST single tweets end to end >= 0.6 x Benthos", rest, benthos, lo=0.6),
        ratio("moonshot: REST single tweets end to end >= 1.0 x Benthos", rest, benthos, lo=1.0),
        ratio("WebSocket single tweets end to end >= 1.0 x Benthos", med("stream",
              "e2e_tweets_per_s"), benthos, lo=1.0),
        ratio("CPU per tweet (stack processes) at half rate <= 1.2 x full rate",
              med("rest_half", "stack_cpu_ms_per_tweet"), med("rest", "stack_cpu_ms_per_tweet"),
              hi=1.2, unit=" ms"),
        ratio("CPU per tweet (machine less load generator) at half rate <= 1.2 x full rate",
              med("rest_half", "machine_cpu_ms_per_tweet"),
              med("rest", "machine_cpu_ms_per_tweet"), hi=1.2, unit=" ms"),
        bound("p99 accept latency <= 50 ms at half max rate", med("rest_half", "p99_ms"),
              hi=50, unit=" ms"),
        bound("p99 freshness <= 500 ms at half max rate (worse of Redis / Valkey)",
              max(fr, fv) if fr is not None and fv is not None else None, hi=500, unit=" ms"),
        bound("REST arrays of 100 >= 25,000 tweets/s end to end", batch, lo=25_000),
        ratio("REST arrays of 100 end to end >= 2 x Benthos arrays", batch,
              med("benthos_batch", "e2e_tweets_per_s"), lo=2.0),
        _drain_row(med("drain", "drain_redis_tweets_per_s"),
                   med("drain", "drain_valkey_tweets_per_s")),
        *consumer_rows(results),
        gateway_row(results),
        ratio("gRPC PublishBatch >= REST arrays (tweets/s)",
              med("grpc_batch", "e2e_tweets_per_s"), batch, lo=1.0),
        ratio("gRPC Publish end to end >= 0.6 x no-op gRPC ceiling",
              med("grpc", "e2e_tweets_per_s"), med("noop_grpc", "accepted_per_s"), lo=0.6),
        *_overload_rows(results),
    ]  # fmt: skip
    runs = [r for s in results.values() for r in s["runs"]]
    counted = [r for r in runs if r.get("zero_loss") is not None]
    rows.append(
        {"target": "zero loss in every pipeline run (accepted = Redis = Valkey)",
         "value": f"{sum(r['zero_loss'] for r in counted)}/{len(counted)} runs exact",
         "met": all(r["zero_loss"] for r in counted)}
    )  # fmt: skip
    anchors = [r for r in runs if "verified" in r]
    if anchors:
        rows.append(
            {"target": "Benthos: every accepted tweet found in Kafka and RabbitMQ",
             "value": f"{sum(r['verified'] for r in anchors)}/{len(anchors)} runs verified",
             "met": all(r["verified"] for r in anchors)}
        )  # fmt: skip
    return [r for r in rows if r is not None]


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
    ("drain Redis tweets/s", "drain_redis_tweets_per_s"),
    ("drain Valkey tweets/s", "drain_valkey_tweets_per_s"),
    ("zero loss", "zero_loss_all"),
    ("Benthos verified", "verified_all"),
    ("stack CPU ms/tweet", "stack_cpu_ms_per_tweet"),
    ("Serve CPU ms/tweet", "serve_cpu_ms_per_tweet"),
    ("machine CPU ms/tweet", "machine_cpu_ms_per_tweet"),
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
        if abs(value) < 1:
            return f"{value:.3f}"
        return f"{value:.1f}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


def markdown(report: dict[str, Any]) -> str:
    p, m = report["params"], report["machine"]
    lines = [
        f"# Benchmark {report['date']}",
        "",
        f"Machine: {m['cores']} cores ({m['cpu_model']}), {m['memory_gib']} GiB, "
        f"kernel {m['kernel']}, Python {m['python']}; load average (1/5/15 min) "
        f"{m.get('load_average_start')} at the start, {m.get('load_average_end')} at the end.",
        f"Load: {p['duration']} s per run ({p['replica_duration']} s in the replica sweep), "
        f"{p['connections']} connections, {p['threads']} wrk thread(s), {p['batch']} "
        f"tweet(s) per request, gRPC {p['grpc_processes']} process(es) x "
        f"{p['grpc_concurrency']} concurrent calls, WebSocket {p['stream_connections']} x "
        f"{p['stream_in_flight']} frames in flight, freshness probe {p['probe_rate']}/s. "
        f"Every figure is the median of {p['repeat']} run(s).",
        "",
        "| " + " | ".join(c for c, _ in COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    for name, entry in report["scenarios"].items():
        med = entry["median"]
        cells = [f"{name}: {entry['title']}"] + [_cell(med.get(k)) for _, k in COLUMNS[1:]]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "## Targets (reported, not asserted)", ""]
    lines += target_table(report["targets"])
    lines += overload_markdown(report["scenarios"].get("overload"))
    lines += overload_markdown(report["scenarios"].get("benthos_overload"), "Benthos overload")
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


def target_table(rows: list[Row]) -> list[str]:
    """The targets as Markdown; with a Benthos column when the anchor ran under overload."""
    anchor = any("benthos" in row for row in rows)
    head = "| Target | Measured | Met |" + (" Benthos, same run |" if anchor else "")
    lines = [head, "|---|---|---|" + ("---|" if anchor else "")]
    for row in rows:
        cells = [row["target"], row["value"], "yes" if row["met"] else "no"]
        if anchor:
            cells.append(row.get("benthos", "-"))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _statuses(counts: dict[str, int] | None) -> str:
    return ", ".join(f"{n} x {status}" for status, n in counts.items()) if counts else "none"


def overload_markdown(entry: dict[str, Any] | None, heading: str = "Overload") -> list[str]:
    """The overload run's phases, answers and every stack process's RSS before/after."""
    if not entry or not entry.get("runs"):
        return []
    run = entry["runs"][-1]
    lines = ["", f"## {heading} (open loop)", "", entry["title"], "", "| Phase | " + " | ".join(
        PHASE_KEYS) + " |", "|---|" + "---|" * len(PHASE_KEYS)]  # fmt: skip
    for phase in ("overload", "after_drop"):
        lines.append(
            f"| {phase} | " + " | ".join(_cell(run[phase].get(k)) for k in PHASE_KEYS) + " |"
        )
    lines += [
        "",
        f"503 answers with Retry-After: {run['retry_after_503']}; other statuses "
        f"{_statuses(run['overload'].get('other_statuses'))}; normal p99 "
        f"{_cell(run['normal_p99_ms'])} ms; latency back to <= 2 x normal "
        f"{_cell(run['recovered_s'])} s after the load dropped; accepted = Redis = Valkey: "
        f"{_cell(run['zero_loss'])}; answered 202 and missing from Redis / Valkey: "
        f"{_cell(run.get('accepted_missing_redis'))} / "
        f"{_cell(run.get('accepted_missing_valkey'))}; counted beyond the 202s: "
        f"{_cell(run.get('counted_beyond_202'))}.",
    ]
    if "anchor_missing" in run:
        lines.append(
            f"Benthos's own brokers: Kafka {run['kafka_records']:,}, RabbitMQ "
            f"{run['rabbitmq_messages']:,} of {run['accepted']:,} answered 202."
        )
    lines += [
        "",
        "| Process | RSS before MiB | RSS after MiB |",
        "|---|---|---|",
    ]
    before, after = run["rss_before_mib"], run["rss_after_mib"]
    for name in sorted(set(before) | set(after)):
        lines.append(f"| {name} | {_cell(before.get(name))} | {_cell(after.get(name))} |")
    return lines


PHASE_KEYS = ("scheduled", "sent_per_s", "accepted_per_s", "share_503", "p50_ms", "p99_ms",
              "p99_503_ms", "failed", "no_connection", "send_lag_p99_ms")  # fmt: skip


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
        beside = f"   | Benthos: {row['benthos']}" if "benthos" in row else ""
        print(f"{'MET ' if row['met'] else 'MISS'}  {row['target']}: {row['value']}{beside}")
    for name, heading in (("overload", "Overload"), ("benthos_overload", "Benthos overload")):
        overload = overload_markdown(report["scenarios"].get(name), heading)
        if overload:
            print("\n".join(overload))


def write(report: Report, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "bench.md").write_text(markdown(report))
