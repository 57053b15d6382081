"""The chaos suite: faults under load, on the real local stack, and the promise checked.

    python -m loadtest.chaos [--rounds kafka_kill,...] [--repeat 2]     (or `make chaos`)

Each round: wait until nothing is left to drain; start a client that retries every
non-202 with the same ids (loopback only, bounded in requests and time); inject one fault
and undo it; wait (bounded) until both stores have counted what was accepted. A round
passes only when accepted = Redis delta = Valkey delta, the two stores' breakdowns grew
alike, and nothing good was dead-lettered (the dead letters grew by exactly the poison the
round sent). Results go to loadtest/results/chaos.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aio_pika
import httpx
from aiokafka import AIOKafkaProducer

from devstack import procs, serve_ops, stack
from devstack.config import app_settings, stack_config
from devstack.waits import apoll
from loadtest import retrying
from loadtest.tweets import TweetFactory
from serve_app.dashboard.sources import Monitor
from serve_app.store.client import both_stores, read_side_by_side

settings = app_settings()

RESULTS = Path(__file__).resolve().parent / "results"
LOAD_S = 16.0
FAULT_AT_S = 3.0
RATE = 200.0
DRAIN_TIMEOUT_S = 180.0
POISON_PER_BROKER = 5
BACKLOG = 5000


@dataclass
class Context:
    """What a fault may use: the accepted ids of extra sends, and what it noted."""

    notes: dict[str, Any]
    extra_ids: set[str]
    poison_sent: int = 0
    checks: dict[str, bool] = field(default_factory=dict)


Fault = Callable[[Context], Awaitable[None]]


# --- process-level faults -----------------------------------------------------------------
def _signal_session(name: str, sig: signal.Signals) -> int:
    """Send ``sig`` to a server and every process of its session (RabbitMQ's beam...)."""
    pid = stack.get(name).pid()
    assert pid, f"{name} is not running"
    for member in {pid, *procs.session_members([pid])}:
        os.kill(member, sig)
    return pid


async def _kill_and_restart(name: str, ctx: Context, down_s: float = 3.0) -> None:
    ctx.notes["killed_pid"] = _signal_session(name, signal.SIGKILL)
    await asyncio.sleep(down_s)
    started = time.monotonic()
    await asyncio.to_thread(stack.start, name)
    ctx.notes["restart_s"] = round(time.monotonic() - started, 1)


async def kafka_kill(ctx: Context) -> None:
    await _kill_and_restart("kafka", ctx)


async def rabbitmq_kill(ctx: Context) -> None:
    await _kill_and_restart("rabbitmq", ctx)


async def redis_kill(ctx: Context) -> None:
    await _kill_and_restart("redis", ctx)


async def valkey_kill(ctx: Context) -> None:
    await _kill_and_restart("valkey", ctx)


async def kafka_stop(ctx: Context) -> None:
    """A slow broker, not a dead one: frozen for longer than the publish deadline."""
    frozen_s = settings.publish_timeout_s + 3
    _signal_session("kafka", signal.SIGSTOP)
    await asyncio.sleep(frozen_s)
    _signal_session("kafka", signal.SIGCONT)
    ctx.notes["frozen_s"] = frozen_s


# --- Serve and consumer faults -------------------------------------------------------------
def _consumer_pids() -> dict[str, int]:
    report = httpx.get(f"{stack_config.serve_http_url}/consumers", timeout=30).json()
    return {name: status["pid"] for name, status in report["actors"].items()}


def _rabbit_unacked() -> int:
    listed = stack.get("rabbitmq").ctl(  # type: ignore[attr-defined]
        "list_queues", "-q", "--no-table-headers", "name", "messages_unacknowledged"
    )
    for line in listed.stdout.splitlines():
        name, _, count = line.rpartition("\t")
        if name.strip() == settings.rabbitmq_queue:
            return int(count)
    return 0


async def _burst(ctx: Context, tweets: int) -> None:
    """Arrays of 500 through the Gateway, retried like any client (adds to accepted)."""
    factory = TweetFactory("chaos-burst")
    result = retrying.RetryingResult()
    async with httpx.AsyncClient(base_url=stack_config.serve_http_url, timeout=30) as client:
        give_up_at = time.monotonic() + 120
        for _ in range(tweets // 500):
            await retrying.send_until_accepted(client, factory.many(500), result, give_up_at)
    ctx.extra_ids |= result.accepted_ids


async def _held_deliveries(wait_s: float = 10.0) -> int:
    """Deliveries the frozen RabbitMQ consumer holds unacked (the broker keeps pushing up
    to the prefetch to a consumer that no longer reads); waits a little for them."""
    return await apoll(lambda: asyncio.to_thread(_rabbit_unacked), timeout=wait_s, every=0.5)


async def _totals() -> dict[str, int]:
    stats, _ = await _snapshot()
    return {name: s["total"] for name, s in stats.items()}


async def consumers_kill(ctx: Context) -> None:
    """Freeze both consumer actors mid-batch, pile up a backlog of more than ``BACKLOG``
    tweets, then kill them (-9). The proof that work was in flight: tweets accepted while
    frozen that no store counted, and deliveries the frozen RabbitMQ consumer held."""
    pids = _consumer_pids()
    for pid in pids.values():
        os.kill(pid, signal.SIGSTOP)
    try:
        frozen_at = await _totals()
        burst_before = len(ctx.extra_ids)
        await _burst(ctx, BACKLOG + 1000)
        await asyncio.sleep(1)
        now = await _totals()
        accepted_while_frozen = len(ctx.extra_ids) - burst_before
        backlog = {n: accepted_while_frozen - (now[n] - frozen_at[n]) for n in now}
        ctx.notes["backlog_tweets_at_kill"] = backlog
        ctx.notes["rabbit_unacked_at_kill"] = await _held_deliveries()
        async with Monitor(settings, {}) as monitor:
            ctx.notes["kafka_lag_records_at_kill"] = (await monitor.read())["kafka"].get("lag")
    finally:
        for pid in pids.values():
            os.kill(pid, signal.SIGKILL)
    ctx.notes["killed_pids"] = pids
    ctx.checks["backlog_over_5000"] = min(backlog.values()) >= BACKLOG
    ctx.checks["deliveries_in_flight"] = ctx.notes["rabbit_unacked_at_kill"] > 0


async def gateway_kill(ctx: Context) -> None:
    apps = serve_ops.applications()
    replicas = apps["ingest"]["deployments"]["Gateway"]["replicas"]
    pid = next(r["pid"] for r in replicas if r["state"] == "RUNNING")
    os.kill(pid, signal.SIGKILL)
    ctx.notes["killed_pid"] = pid


async def consumers_redeploy(ctx: Context) -> None:
    """Replace the ConsumerSupervisor replica (a changed deployment option), then back."""
    config = serve_ops.local_config()
    [app] = [a for a in config["applications"] if a["name"] == "consumers"]
    [supervisor] = app["deployments"]
    supervisor["ray_actor_options"]["num_cpus"] = 0.06
    started = time.monotonic()
    # serve_ops writes the variant under the stack's state directory (which exists), not
    # into loadtest/results/, which a fresh clone does not have yet
    await asyncio.to_thread(serve_ops.deploy, config, label="chaos-consumers-variant")
    await asyncio.to_thread(serve_ops.restore)
    ctx.notes["redeploys_s"] = round(time.monotonic() - started, 1)


async def _poison(ctx: Context) -> None:
    """Unreadable messages straight onto both brokers (the consumers must dead-letter them)."""
    bodies = [f"\xff poison {i} {time.time()}".encode("latin-1") for i in range(POISON_PER_BROKER)]
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers, acks="all")
    await producer.start()
    try:
        for body in bodies:
            await producer.send_and_wait(settings.kafka_topic, body, key=b"GT")
    finally:
        await producer.stop()
    connection = await aio_pika.connect(settings.rabbitmq_url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.get_exchange(settings.rabbitmq_exchange)
        for body in bodies:
            await exchange.publish(aio_pika.Message(body), routing_key="")
    ctx.poison_sent = POISON_PER_BROKER


async def rabbitmq_memory_alarm(ctx: Context) -> None:
    """Publishers blocked by a memory alarm while poison waits to be dead-lettered."""
    await _poison(ctx)
    rabbitmq = stack.get("rabbitmq")
    alarm = rabbitmq.ctl("set_vm_memory_high_watermark", "0.00001")  # type: ignore[attr-defined]
    assert alarm.returncode == 0, alarm.stderr
    try:
        await asyncio.sleep(settings.publish_timeout_s + 3)
    finally:
        cleared = rabbitmq.ctl("set_vm_memory_high_watermark", "0.4")  # type: ignore[attr-defined]
        assert cleared.returncode == 0, cleared.stderr
    ctx.notes["alarm_s"] = settings.publish_timeout_s + 3


ROUNDS: dict[str, Fault] = {
    "kafka_kill": kafka_kill,
    "rabbitmq_kill": rabbitmq_kill,
    "kafka_stop": kafka_stop,
    "redis_kill": redis_kill,
    "valkey_kill": valkey_kill,
    "consumers_kill": consumers_kill,
    "gateway_kill": gateway_kill,
    "consumers_redeploy": consumers_redeploy,
    "rabbitmq_memory_alarm": rabbitmq_memory_alarm,
}
QUICK = ("redis_kill", "valkey_kill", "kafka_stop")
"""The cheapest rounds: the subset `make test` runs."""


# --- one round ----------------------------------------------------------------------------
async def _quiesce(timeout_s: float = 120.0) -> None:
    def drained(backlog: dict[str, Any]) -> bool:
        return backlog["kafka"].get("lag") == 0 and backlog["rabbitmq"].get("depth") == 0

    async with Monitor(settings, {}) as monitor:
        await apoll(monitor.read, drained, timeout=timeout_s, every=0.5)


async def _snapshot() -> tuple[dict[str, Any], dict[str, Any]]:
    stores = both_stores(settings)
    try:
        stats, complete = await read_side_by_side(stores)
        assert complete, stats
    finally:
        for store in stores.values():
            await store.client.aclose()
    async with Monitor(settings, {}) as monitor:
        backlog = await monitor.read()
    dead = {broker: backlog[broker]["dead_letters"] for broker in ("kafka", "rabbitmq")}
    return stats, dead


def _grown(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    keys = ("by_country", "by_weather", "by_country_weather")
    grown: dict[str, Any] = {"total": after["total"] - before["total"]}
    for key in keys:
        delta = Counter(after[key])
        delta.subtract(before[key])
        grown[key] = {k: v for k, v in sorted(delta.items()) if v}
    return grown


class GrowthWatch:
    """Samples both totals every 100 ms: the longest stretch neither grew while the load ran
    is the consumption pause a fault caused."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, int, int]] = []

    async def run(self, until: float) -> None:
        stores = both_stores(settings)
        try:  # a sampler, not a wait: it runs to ``until`` whatever it reads
            while time.monotonic() < until:
                with_errors = await read_side_by_side(stores)
                stats = with_errors[0]
                if "error" not in stats["redis"] and "error" not in stats["valkey"]:
                    self.samples.append(
                        (time.monotonic(), stats["redis"]["total"], stats["valkey"]["total"])
                    )
                await asyncio.sleep(0.1)
        finally:
            for store in stores.values():
                await store.client.aclose()

    def longest_pause_s(self) -> float:
        longest, last_growth = 0.0, None
        previous = None
        for at, r, v in self.samples:
            if previous is None or r > previous[0] or v > previous[1]:
                if last_growth is not None:
                    longest = max(longest, at - last_growth)
                last_growth = at
            previous = (r, v)
        return round(longest, 1)


async def run_round(name: str) -> dict[str, Any]:
    fault = ROUNDS[name]
    await _quiesce()
    before, dead_before = await _snapshot()
    ctx = Context(notes={}, extra_ids=set())
    watch = GrowthWatch()
    watching = asyncio.create_task(watch.run(time.monotonic() + LOAD_S + 2))
    load = asyncio.create_task(
        retrying.run(duration_s=LOAD_S, rate_tweets_s=RATE, batch=10, tag=f"chaos-{name}")
    )
    await asyncio.sleep(FAULT_AT_S)
    fault_at = time.monotonic()
    await fault(ctx)
    undone_at = time.monotonic()
    result = await load
    await watching
    accepted = len(result.accepted_ids | ctx.extra_ids)

    async def counted() -> bool:
        try:
            stats, _ = await _snapshot()
        except Exception:  # noqa: BLE001 - a store may still be coming back
            return False
        grown = _grown(before["redis"], stats["redis"]), _grown(before["valkey"], stats["valkey"])
        return grown[0]["total"] >= accepted and grown[1]["total"] >= accepted

    await apoll(counted, timeout=DRAIN_TIMEOUT_S, every=0.5)
    caught_up_at = time.monotonic()
    await asyncio.sleep(2)  # anything counted twice would show up now
    after, dead_after = await _snapshot()
    redis, valkey = (
        _grown(before["redis"], after["redis"]),
        _grown(before["valkey"], after["valkey"]),
    )
    dead = {b: dead_after[b] - dead_before[b] for b in dead_before}
    report = {
        "round": name,
        "accepted": accepted,
        "redis": redis["total"],
        "valkey": valkey["total"],
        "breakdowns_equal": {k: v for k, v in redis.items() if k != "total"}
        == {k: v for k, v in valkey.items() if k != "total"},
        "dead_lettered": dead,
        "poison_sent_per_broker": ctx.poison_sent,
        "requests": result.requests,
        "retries": result.retries,
        "statuses": result.statuses,
        "gave_up": result.gave_up,
        "fault_s": round(undone_at - fault_at, 1),
        "recover_s": round(caught_up_at - undone_at, 1),
        "longest_pause_s": watch.longest_pause_s(),
        **ctx.notes,
    }
    report["passed"] = (
        accepted == redis["total"] == valkey["total"]
        and report["breakdowns_equal"]
        and all(d == ctx.poison_sent for d in dead.values())
        and result.gave_up == 0
        and all(ctx.checks.values())
    )
    report["checks"] = ctx.checks
    return report


async def run_rounds(names: list[str], repeat: int) -> list[dict[str, Any]]:
    reports = []
    for attempt in range(1, repeat + 1):
        for name in names:
            report = await run_round(name)
            report["pass_no"] = attempt
            reports.append(report)
            print(_line(report), flush=True)
    return reports


def _line(r: dict[str, Any]) -> str:
    verdict = "PASS" if r["passed"] else "FAIL"
    return (
        f"{verdict} {r['round']:<22} accepted={r['accepted']} redis={r['redis']} "
        f"valkey={r['valkey']} dead={r['dead_lettered']} retries={r['retries']} "
        f"recover={r['recover_s']}s pause={r['longest_pause_s']}s"
    )


def markdown(reports: list[dict[str, Any]]) -> str:
    lines = [
        "| round | pass | accepted | Redis | Valkey | dead-lettered (Kafka/RabbitMQ) | "
        "retried requests | time to recover s | longest pause s | passed |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in reports:
        dead = f"{r['dead_lettered']['kafka']}/{r['dead_lettered']['rabbitmq']}"
        lines.append(
            f"| {r['round']} | {r['pass_no']} | {r['accepted']} | {r['redis']} | {r['valkey']} "
            f"| {dead} | {r['retries']} | {r['recover_s']} | {r['longest_pause_s']} "
            f"| {'yes' if r['passed'] else '**NO**'} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", default=",".join(ROUNDS))
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.rounds.split(",") if n.strip()]
    unknown = set(names) - set(ROUNDS)
    if unknown:
        parser.error(f"unknown rounds {sorted(unknown)}; choose from {', '.join(ROUNDS)}")
    reports = asyncio.run(run_rounds(names, args.repeat))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "chaos.json").write_text(json.dumps(reports, indent=1) + "\n")
    (RESULTS / "chaos.md").write_text(markdown(reports))
    print(markdown(reports))
    return 0 if all(r["passed"] for r in reports) else 1


if __name__ == "__main__":
    sys.exit(main())
