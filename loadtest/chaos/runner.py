"""The rounds, one round run end to end, the report, and the CLI."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from devstack.config import topology
from devstack.waits import apoll
from loadtest import retrying
from loadtest.chaos import (
    dead_letters,
    disk,
    hostile,
    memory,
    network,
    processes,
    replicated,
    retention,
    scaleout,
)
from loadtest.chaos.core import (
    DRAIN_TIMEOUT_S,
    FAULT_AT_S,
    RATE,
    Context,
    GrowthWatch,
    Round,
    Tally,
    failures,
    grown,
    ours,
    quiesce,
    same_breakdowns,
    skipped_records,
    snapshot,
)

RESULTS = Path(__file__).resolve().parents[1] / "results"
DEAD_LETTERS_TIMEOUT_S = 60.0
"""Dead letters may be parked while a broker is out and published up to 2 s after."""

ROUNDS: dict[str, Round] = {
    "kafka_kill": Round(processes.kafka_kill),
    "rabbitmq_kill": Round(processes.rabbitmq_kill),
    "kafka_stop": Round(processes.kafka_stop),
    "redis_kill": Round(processes.redis_kill),
    "valkey_kill": Round(processes.valkey_kill),
    "consumers_kill": Round(processes.consumers_kill),
    "consumer_actor_kill": Round(scaleout.consumer_actor_kill),
    "gateway_kill": Round(processes.gateway_kill),
    "consumers_redeploy": Round(processes.consumers_redeploy),
    "rabbitmq_memory_alarm": Round(processes.rabbitmq_memory_alarm),
    "kafka_partition": Round(network.kafka_partition, refusals_expected=True),
    "rabbitmq_partition": Round(network.rabbitmq_partition, refusals_expected=True),
    "redis_partition": Round(network.redis_partition),
    "valkey_partition": Round(network.valkey_partition),
    "rabbitmq_disk_full": Round(
        disk.rabbitmq_disk_full, setup=disk.rabbitmq_small_disk, refusals_expected=True
    ),
    "kafka_disk_full": Round(
        disk.kafka_disk_full, setup=disk.kafka_small_disk, refusals_expected=True
    ),
    "redis_outage_retention": Round(
        retention.redis_outage_retention,
        setup=retention.short_retention_repaired("redis_outage_retention"),
        load_s=retention.DOWN_S + 15,
        skips_allowed=True,
        refusals_expected=True,
    ),
    "redis_outage_past_retention_check": Round(
        retention.redis_outage_past_retention_check,
        setup=retention.short_retention_repaired("redis_outage_past_retention_check"),
        load_s=retention.SHORT_LOAD_S,
        skips_allowed=True,
    ),
    "hostile_messages": Round(
        hostile.hostile_messages, setup=hostile.victims, after=hostile.every_hostile_has_a_reason
    ),
    "kafka_outage_poison": Round(processes.kafka_outage_poison, refusals_expected=True),
    "dead_letter_sink_outage": Round(
        dead_letters.dead_letter_sink_outage, setup=dead_letters.sinks_mended_afterwards
    ),
    "consumers_setting": Round(processes.consumers_setting, load_s=60.0),
    "redis_maxmemory": Round(memory.store_maxmemory("redis"), refusals_expected=True),
    "valkey_maxmemory": Round(memory.store_maxmemory("valkey"), refusals_expected=True),
}
REPLICATED: dict[str, Round] = {
    "kafka_broker_wipe": Round(replicated.kafka_broker_wipe),
    "rabbitmq_leader_wipe": Round(replicated.rabbitmq_leader_wipe, load_s=60.0),
    "redis_primary_wipe": Round(replicated.redis_primary_wipe),
    "valkey_primary_wipe": Round(replicated.valkey_primary_wipe),
    "broker_then_store": Round(replicated.broker_then_store, load_s=60.0),
    "redis_primary_partition": Round(replicated.redis_primary_partition, load_s=45.0),
    "valkey_primary_partition": Round(replicated.valkey_primary_partition, load_s=45.0),
}
"""Losses of a machine: only on the replicated topology (`make up TOPOLOGY=replicated`)."""
ROUNDS.update(REPLICATED)


def default_rounds() -> list[str]:
    """The rounds of the topology the stack runs: a lost machine needs the replicated one,
    which the single-copy rounds (`kafka_kill` of the server "kafka"...) do not know."""
    if topology() == "replicated":
        return list(REPLICATED)
    return [name for name in ROUNDS if name not in REPLICATED]


QUICK = ("redis_kill", "valkey_kill", "kafka_stop", "redis_partition", "valkey_partition")
"""The cheapest rounds: the subset `make test` runs."""


async def clean_leftovers() -> dict[str, Any]:
    """What a killed run may have left (iptables chain, tmpfs mounts, topic overrides and
    a lowered maxmemory), removed by exact name before anything else runs."""
    return {
        "iptables": await asyncio.to_thread(network.heal),
        "disk": await asyncio.to_thread(disk.back_to_disk),
        "retention": await retention.put_back(),
        "maxmemory": await memory.put_back(),
    }


async def _counted_and_dead(
    before: dict[str, Any], dead_before: dict[str, int], accepted: int, ctx: Context
) -> bool:
    """Both stores grew by ``accepted`` and the dead letters by what the fault caused."""
    try:
        stats, dead = await snapshot()
    except Exception:  # noqa: BLE001 - a store may still be coming back
        return False
    for store in ("redis", "valkey"):
        counted = ours(grown(before[store], stats[store]))["total"]
        missing = skipped_records(stats[store]) - skipped_records(before[store])
        if counted < accepted and not missing:
            return False
    return all(dead[b] - dead_before[b] >= ctx.poison[b] for b in dead)


@dataclass(frozen=True)
class Start:
    """The snapshot a round is judged against, and when its fault ran."""

    stats: dict[str, Any]
    dead: dict[str, int]
    fault_at: float = 0.0
    undone_at: float = 0.0


async def _judged(
    spec: Round, ctx: Context, result: retrying.RetryingResult, start: Start
) -> dict[str, Any]:
    """Wait (bounded) for both stores and the dead letters, then measure and judge."""
    accepted = len(result.accepted_ids | ctx.extra_ids)
    before, dead_before = start.stats, start.dead

    async def ready() -> bool:
        return await _counted_and_dead(before, dead_before, accepted, ctx)

    await apoll(ready, timeout=DRAIN_TIMEOUT_S, every=0.5)
    caught_up_at = time.monotonic()
    await apoll(ready, timeout=DEAD_LETTERS_TIMEOUT_S, every=0.5)
    await asyncio.sleep(2)  # anything counted twice would show up now
    if spec.after is not None:
        await spec.after(ctx)
    after, dead_after = await snapshot()
    redis = ours(grown(before["redis"], after["redis"]))
    valkey = ours(grown(before["valkey"], after["valkey"]))
    if redis["other"] or valkey["other"]:
        ctx.notes["other_traffic"] = {"redis": redis["other"], "valkey": valkey["other"]}
    skipped = {s: skipped_records(after[s]) - skipped_records(before[s]) for s in after}
    if spec.refusals_expected:
        ctx.checks["clients_saw_refusals"] = any(k != "202" for k in result.statuses)
    deleted = ctx.notes.get("unread_deleted_records", 0)
    if deleted:
        # reported, and no more than were deleted: records the consumer had applied but not
        # committed yet count as deleted unread in ``deleted`` and are rightly not skipped
        ctx.checks["deleted_records_reported"] = 0 < skipped.get("redis", 0) <= deleted
    ctx.checks["nothing_parked"] = all(after[s]["parked_dead_letters"] == 0 for s in after)
    tally = Tally(
        accepted=accepted,
        redis=redis["total"],
        valkey=valkey["total"],
        breakdowns_equal=same_breakdowns(redis, valkey),
        dead={b: dead_after[b] - dead_before[b] for b in dead_before},
        expected_dead=dict(ctx.poison),
        gave_up=result.gave_up,
        skipped=skipped,
        checks=ctx.checks,
    )
    why = failures(tally, spec.skips_allowed)
    return {
        "accepted": accepted,
        "redis": tally.redis,
        "valkey": tally.valkey,
        "breakdowns_equal": tally.breakdowns_equal,
        "dead_lettered": tally.dead,
        "poison_sent": tally.expected_dead,
        "skipped_records": skipped,
        "requests": result.requests,
        "retries": result.retries,
        "statuses": result.statuses,
        "refused_503": result.statuses.get("503", 0),
        "gave_up": result.gave_up,
        "fault_s": round(start.undone_at - start.fault_at, 1),
        "recover_s": round(caught_up_at - start.undone_at, 1),
        "passed": not why,
        "failures": why,
        "checks": ctx.checks,
    }


async def run_round(name: str) -> dict[str, Any]:
    """One round: setup, drained start, load, fault, bounded wait, verdict, teardown."""
    spec = ROUNDS[name]
    ctx = Context(notes={}, extra_ids=set())
    ctx.notes["leftovers_removed"] = {k: v for k, v in (await clean_leftovers()).items() if v}
    started = time.monotonic()
    around = spec.setup(ctx) if spec.setup else contextlib.nullcontext()
    async with around:  # type: ignore[attr-defined]
        await quiesce()
        await dead_letters.none_parked()  # letters of earlier work would count in this round
        before, dead_before = await snapshot()
        watch = GrowthWatch()
        watching = asyncio.create_task(watch.run(time.monotonic() + spec.load_s + 2))
        load = asyncio.create_task(
            retrying.run(duration_s=spec.load_s, rate_tweets_s=RATE, batch=10, tag=f"chaos-{name}")
        )
        try:
            await asyncio.sleep(FAULT_AT_S)
            fault_at = time.monotonic()
            try:
                await spec.fault(ctx)
            except Exception:
                # let the client retry what it sent: a request given up after a 503 can
                # leave a tweet in one store only
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(asyncio.shield(load), spec.load_s + 130)
                raise
            undone_at = time.monotonic()
            result = await load
            await watching
        finally:
            for task in (load, watching):
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
        report = await _judged(spec, ctx, result, Start(before, dead_before, fault_at, undone_at))
    report.update(round=name, longest_pause_s=watch.longest_pause_s(), **ctx.notes)
    report["round_s"] = round(time.monotonic() - started, 1)
    report["passed"] = report["passed"] and all(ctx.checks.values())
    return report


async def run_rounds(names: list[str], repeat: int) -> list[dict[str, Any]]:
    reports = []
    for attempt in range(1, repeat + 1):
        for name in names:
            try:
                report = await run_round(name)
            except Exception as exc:  # noqa: BLE001 - one broken round must not hide the rest
                report = {"round": name, "passed": False, "error": repr(exc)[:2000]}
            report["pass_no"] = attempt
            reports.append(report)
            print(_line(report), flush=True)
    return reports


def _line(r: dict[str, Any]) -> str:
    verdict = "PASS" if r["passed"] else "FAIL"
    if "error" in r:
        return f"{verdict} {r['round']:<24} error: {r['error'][:500]}"
    return (
        f"{verdict} {r['round']:<24} accepted={r['accepted']} redis={r['redis']} "
        f"valkey={r['valkey']} dead={r['dead_lettered']} 503={r['refused_503']} "
        f"retries={r['retries']} recover={r['recover_s']}s pause={r['longest_pause_s']}s "
        f"{'; '.join(r['failures'])}"
    )


def markdown(reports: list[dict[str, Any]]) -> str:
    lines = [
        "| round | pass | accepted | Redis | Valkey | dead-lettered (Kafka/RabbitMQ) | 503s "
        "| retried requests | time to recover s | longest pause s | passed |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in reports:
        if "error" in r:
            error = f"| {r['round']} | {r['pass_no']} | error: {r['error'][:120]} "
            lines.append(error + "| " * 8 + "| **NO** |")
            continue
        dead = f"{r['dead_lettered']['kafka']}/{r['dead_lettered']['rabbitmq']}"
        lines.append(
            f"| {r['round']} | {r['pass_no']} | {r['accepted']} | {r['redis']} | {r['valkey']} "
            f"| {dead} | {r['refused_503']} | {r['retries']} | {r['recover_s']} "
            f"| {r['longest_pause_s']} | {'yes' if r['passed'] else '**NO**'} |"
        )
    return "\n".join(lines) + "\n"


async def _cancellable(work: Coroutine[Any, Any, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Run ``work`` so that SIGTERM (a `timeout` around the command) cancels it: the rounds'
    ``finally`` blocks then remove their rules, mounts and overrides before the exit."""
    task = asyncio.ensure_future(work)
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    return await task


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", default=",".join(default_rounds()))
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.rounds.split(",") if n.strip()]
    unknown = set(names) - set(ROUNDS)
    if unknown:
        parser.error(f"unknown rounds {sorted(unknown)}; choose from {', '.join(ROUNDS)}")
    reports = asyncio.run(_cancellable(run_rounds(names, args.repeat)))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "chaos.json").write_text(json.dumps(reports, indent=1, default=str) + "\n")
    (RESULTS / "chaos.md").write_text(markdown(reports))
    print(markdown(reports))
    return 0 if all(r["passed"] for r in reports) else 1


if __name__ == "__main__":
    sys.exit(main())
