"""Faults of processes: a broker or store killed or frozen, the consumer actors frozen and
killed, the Gateway killed, the consumers redeployed (an option, or a changed setting), a
RabbitMQ memory alarm while poison waits, Kafka killed while poison flows."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from typing import Any

import aio_pika
from aiokafka import AIOKafkaProducer

from devstack import procs, serve_ops, stack
from devstack.waits import apoll, poll
from loadtest.chaos.core import Context, burst, consumers, settings, totals
from serve_app.dashboard.sources import Monitor

POISON_PER_BROKER = 5
BACKLOG = 5000
REDEPLOY_BATCH_SIZE = 37
"""CONSUMER_BATCH_SIZE of the `consumers_setting` round (the stock one is 100)."""


# --- servers --------------------------------------------------------------------------------
def signal_session(name: str, sig: signal.Signals) -> int:
    """Send ``sig`` to a server and every process of its session (RabbitMQ's beam...)."""
    pid = stack.get(name).pid()
    assert pid, f"{name} is not running"
    for member in {pid, *procs.session_members([pid])}:
        os.kill(member, sig)
    return pid


async def kill_and_restart(name: str, ctx: Context, down_s: float = 3.0) -> None:
    ctx.notes["killed_pid"] = signal_session(name, signal.SIGKILL)
    await asyncio.sleep(down_s)
    started = time.monotonic()
    await asyncio.to_thread(stack.start, name)
    ctx.notes["restart_s"] = round(time.monotonic() - started, 1)


async def kafka_kill(ctx: Context) -> None:
    await kill_and_restart("kafka", ctx)


async def rabbitmq_kill(ctx: Context) -> None:
    await kill_and_restart("rabbitmq", ctx)


async def redis_kill(ctx: Context) -> None:
    await kill_and_restart("redis", ctx)


async def valkey_kill(ctx: Context) -> None:
    await kill_and_restart("valkey", ctx)


async def kafka_stop(ctx: Context) -> None:
    """A slow broker, not a dead one: frozen for longer than the publish deadline."""
    frozen_s = settings.publish_timeout_s + 3
    signal_session("kafka", signal.SIGSTOP)
    try:
        await asyncio.sleep(frozen_s)
    finally:
        signal_session("kafka", signal.SIGCONT)
    ctx.notes["frozen_s"] = frozen_s


# --- Serve and consumer faults --------------------------------------------------------------
def _consumer_pids() -> dict[str, int]:
    return {name: status["pid"] for name, status in consumers()["actors"].items()}


def _rabbit_unacked() -> int:
    listed = stack.get("rabbitmq").ctl(  # type: ignore[attr-defined]
        "list_queues", "-q", "--no-table-headers", "name", "messages_unacknowledged"
    )
    for line in listed.stdout.splitlines():
        name, _, count = line.rpartition("\t")
        if name.strip() == settings.rabbitmq_queue:
            return int(count)
    return 0


async def _held_deliveries(wait_s: float = 10.0) -> int:
    """Deliveries the frozen RabbitMQ consumer holds unacked (the broker keeps pushing up
    to the prefetch to a consumer that no longer reads); waits a little for them."""

    async def unacked() -> int:
        return await asyncio.to_thread(_rabbit_unacked)

    return await apoll(unacked, timeout=wait_s, every=0.5)


async def consumers_kill(ctx: Context) -> None:
    """Freeze both consumer actors mid-batch, pile up a backlog of more than ``BACKLOG``
    tweets, then kill them (-9). The proof that work was in flight: tweets accepted while
    frozen that no store counted, and deliveries the frozen RabbitMQ consumer held."""
    pids = _consumer_pids()
    for pid in pids.values():
        os.kill(pid, signal.SIGSTOP)
    backlog: dict[str, int] = {}
    try:
        frozen_at = await totals()
        burst_before = len(ctx.extra_ids)
        await burst(ctx, BACKLOG + 1000)
        await asyncio.sleep(1)
        now = await totals()
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
    ctx.checks["backlog_over_5000"] = bool(backlog) and min(backlog.values()) >= BACKLOG
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
    try:
        await asyncio.to_thread(serve_ops.deploy, config, label="chaos-consumers-variant")
    finally:
        await asyncio.to_thread(serve_ops.restore)
    ctx.notes["redeploys_s"] = round(time.monotonic() - started, 1)


# --- consumers redeployed with a changed setting (f) ----------------------------------------
def actors_run(report: dict[str, Any], version: str) -> bool:
    """Every consumer actor reachable, running and reporting ``version`` (what the
    supervisor computed from the deployed settings and code)."""
    actors = report.get("actors") or {}
    return bool(actors) and all(
        a.get("running") and not a.get("unreachable") and a.get("config_version") == version
        for a in actors.values()
    )


def _local_version(batch_size: int) -> str:
    """The version a consumer of ``batch_size`` should report, computed from this checkout
    (the code on disk and the tooling's settings; differs if either differs in Ray)."""
    from pathlib import Path

    import serve_app
    from serve_app.consume.core import code_version, config_version

    code = code_version(Path(serve_app.__file__).parent)
    return config_version(settings.model_copy(update={"consumer_batch_size": batch_size}), code)


def _new_pauses(before: dict[str, Any], after: dict[str, Any], version: str) -> list[float]:
    """``pause_s`` of the replacements to ``version`` that ``after`` lists and ``before`` did
    not (the supervisor keeps a bounded list, so compare by timestamp)."""
    seen = max((r.get("at", 0) for r in before.get("replacements") or []), default=0)
    return [
        r["pause_s"]
        for r in after.get("replacements") or []
        if r.get("at", 0) > seen and r.get("to") == version
    ]


def _deploy_and_follow(
    config: dict[str, Any] | None, label: str, timeout_s: float = 120.0
) -> dict[str, Any]:
    """Deploy ``config`` (None: the stock one), then wait (bounded) until the supervisor
    reports a version every actor runs; returns what was seen."""
    before = consumers()
    started = time.monotonic()
    if config is None:
        serve_ops.restore()
    else:
        serve_ops.deploy(config, label=label)
    deployed_s = time.monotonic() - started

    def settled() -> dict[str, Any]:
        try:
            return consumers()
        except Exception:  # noqa: BLE001 - the route may be moving to the new replica
            return {}

    report = poll(
        settled, lambda r: actors_run(r, r.get("config_version", "")), timeout=timeout_s, every=0.5
    )
    version = report.get("config_version", "")
    return {
        "from": before.get("config_version"),
        "to": version,
        "all_actors_run_it": actors_run(report, version),
        "deploy_s": round(deployed_s, 1),
        "settled_s": round(time.monotonic() - started, 1),
        "pauses_s": _new_pauses(before, report, version),
        "actors": {n: a.get("config_version") for n, a in (report.get("actors") or {}).items()},
    }


async def consumers_setting(ctx: Context) -> None:
    """Redeploy `consumers` with another CONSUMER_BATCH_SIZE (its `args:`) under load: every
    actor must be replaced and report the new version (no silent adoption), then the stock
    config brings the stock version back; nothing lost either way."""
    config = serve_ops.local_config()
    [app] = [a for a in config["applications"] if a["name"] == "consumers"]
    app["args"] = {**(app.get("args") or {}), "consumer_batch_size": REDEPLOY_BATCH_SIZE}
    expected = _local_version(REDEPLOY_BATCH_SIZE), _local_version(settings.consumer_batch_size)
    ctx.notes["expected_versions"] = expected
    try:
        changed = await asyncio.to_thread(_deploy_and_follow, config, "chaos-batch-size")
    finally:
        back = await asyncio.to_thread(_deploy_and_follow, None, "local")
    ctx.notes["to_batch_size"] = changed
    ctx.notes["back_to_stock"] = back
    # what a consumer of each batch size reports, hashed here from the same settings and code
    ctx.checks["actors_run_the_new_batch_size"] = changed["to"] == expected[0]
    ctx.checks["actors_run_the_stock_batch_size"] = back["to"] == expected[1]
    ctx.checks["new_setting_runs"] = (
        changed["all_actors_run_it"] and changed["to"] != changed["from"]
    )
    # the stock version need not be the one before: serve_app/ edited meanwhile changes it
    ctx.checks["stock_setting_runs_again"] = (
        back["all_actors_run_it"] and back["to"] != changed["to"]
    )
    ctx.checks["every_actor_replaced"] = len(changed["pauses_s"]) >= len(changed["actors"])
    pauses = changed["pauses_s"] + back["pauses_s"]
    ctx.notes["replacement_pause_max_s"] = max(pauses, default=None)


# --- poison ---------------------------------------------------------------------------------
def poison_bodies(count: int) -> list[bytes]:
    """Unreadable messages (not UTF-8, not JSON): each is one dead letter."""
    return [f"\xff poison {i} {time.time()}".encode("latin-1") for i in range(count)]


Record = tuple[bytes, list[tuple[str, bytes]]]
"""A raw Kafka record: body and headers."""


async def publish_kafka(records: list[Record], key: bytes = b"GT") -> None:
    """Publish raw records (body, headers) straight onto the tweet topic."""
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap_servers, acks="all", max_request_size=2**20
    )
    await producer.start()
    try:
        for body, headers in records:
            await producer.send_and_wait(settings.kafka_topic, body, key=key, headers=headers)
    finally:
        await producer.stop()


async def publish_rabbitmq(messages: list[aio_pika.Message]) -> None:
    """Publish raw messages straight onto the tweet exchange (confirmed)."""
    connection = await aio_pika.connect(settings.rabbitmq_url, timeout=10)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.get_exchange(settings.rabbitmq_exchange)
        for message in messages:
            await exchange.publish(message, routing_key="", timeout=10)


async def poison(ctx: Context, kafka: bool = True, rabbitmq: bool = True) -> None:
    """``POISON_PER_BROKER`` unreadable messages straight onto the brokers asked for."""
    bodies = poison_bodies(POISON_PER_BROKER)
    if kafka:
        await publish_kafka([(b, []) for b in bodies])
        ctx.add_poison(kafka=len(bodies))
    if rabbitmq:
        await publish_rabbitmq([aio_pika.Message(b) for b in bodies])
        ctx.add_poison(rabbitmq=len(bodies))


async def rabbitmq_memory_alarm(ctx: Context) -> None:
    """Publishers blocked by a memory alarm while poison waits to be dead-lettered."""
    await poison(ctx)
    rabbitmq = stack.get("rabbitmq")
    alarm = rabbitmq.ctl("set_vm_memory_high_watermark", "0.00001")  # type: ignore[attr-defined]
    assert alarm.returncode == 0, alarm.stderr
    try:
        await asyncio.sleep(settings.publish_timeout_s + 3)
    finally:
        cleared = rabbitmq.ctl("set_vm_memory_high_watermark", "0.4")  # type: ignore[attr-defined]
        assert cleared.returncode == 0, cleared.stderr
    ctx.notes["alarm_s"] = settings.publish_timeout_s + 3


async def _dead_letters() -> dict[str, Any]:
    async with Monitor(settings, {}) as monitor:
        backlog = await monitor.read()
    return {b: backlog[b].get("dead_letters") for b in ("kafka", "rabbitmq")}


async def kafka_outage_poison(ctx: Context) -> None:
    """Kafka killed (-9) while poison flows: poison before (the Kafka dead-letter producer
    has sent), during (RabbitMQ's only) and after the outage. The dead-letter producer must
    recover: every poison message dead-lettered, none left parked."""
    start = await _dead_letters()
    await poison(ctx)

    def kafka_sent(now: dict[str, Any]) -> bool:
        return (now["kafka"] or 0) - (start["kafka"] or 0) >= POISON_PER_BROKER

    first = await apoll(_dead_letters, kafka_sent, timeout=30, every=0.5)
    ctx.checks["dead_letter_producer_used_before"] = kafka_sent(first)
    ctx.notes["killed_pid"] = signal_session("kafka", signal.SIGKILL)
    try:
        await poison(ctx, kafka=False)
        await asyncio.sleep(settings.publish_timeout_s + 3)
    finally:
        started = time.monotonic()
        await asyncio.to_thread(stack.start, "kafka")
        ctx.notes["restart_s"] = round(time.monotonic() - started, 1)
    await poison(ctx)
