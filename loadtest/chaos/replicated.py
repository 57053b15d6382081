"""Losses of a machine on the replicated topology (`make up TOPOLOGY=replicated`): a member
killed and its data wiped, as a lost disk; the rest of its cluster carries on, and the
member comes back empty and is filled from the others.

Rounds: a Kafka broker wiped and started empty; the RabbitMQ node leading the tweet queue
wiped (forgotten by the cluster, joined again blank, its quorum queue member grown back);
the Redis or Valkey primary killed and its AOF wiped (the Sentinels fail over first, then
it returns as a replica); the Redis or Valkey primary partitioned away together with the
application (a failover on the other side, then the heal); two losses in a row (a broker,
then a store).
"""

from __future__ import annotations

import asyncio
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import redis

from devstack import stack
from devstack.config import topology
from devstack.servers.replicated import STORE_SIDE, RabbitNode, _Sentinel
from devstack.waits import apoll
from loadtest.chaos import network
from loadtest.chaos.core import Context, settings
from loadtest.chaos.processes import signal_session
from serve_app.store.core import KEYS

FAILOVER_TIMEOUT_S = 60.0
"""How long the Sentinels may take to name a new primary (down-after is 3 s)."""


def _replicated() -> None:
    if topology() != "replicated":
        raise RuntimeError("this round needs `make up TOPOLOGY=replicated`")


def _wipe(path: Path) -> None:
    if path.exists():
        shutil.rmtree(path)


async def _kill(name: str, ctx: Context) -> None:
    ctx.notes.setdefault("killed", []).append(name)
    signal_session(name, signal.SIGKILL)
    await asyncio.sleep(1)


async def _start(name: str, ctx: Context) -> None:
    started = time.monotonic()
    await asyncio.to_thread(stack.start, name)
    ctx.notes.setdefault("restart_s", {})[name] = round(time.monotonic() - started, 1)


# --- Kafka ----------------------------------------------------------------------------------
async def kafka_broker_wipe(ctx: Context) -> None:
    """Broker 1 killed, its log directory wiped; started again, formatted empty, it fetches
    every partition back from the other two (replication factor 3, min ISR 2)."""
    _replicated()
    name = "kafka-1"
    await _kill(name, ctx)
    _wipe(stack.get(name).dir / "data")
    await asyncio.sleep(2)
    await _start(name, ctx)


# --- RabbitMQ -------------------------------------------------------------------------------
def _rabbit_nodes() -> list[RabbitNode]:
    return [s for s in (stack.get(n) for n in stack.NAMES) if isinstance(s, RabbitNode)]


def _queue_leader(via: RabbitNode) -> str:
    listed = via.ctl("list_queues", "-q", "--no-table-headers", "name", "leader")
    for line in listed.stdout.splitlines():
        name, _, leader = line.partition("\t")
        if name.strip() == settings.rabbitmq_queue:
            return leader.strip()
    raise RuntimeError(f"queue {settings.rabbitmq_queue} not found: {listed.stderr[-300:]}")


def _queues_tool(via: RabbitNode, *args: str) -> subprocess.CompletedProcess[str]:
    tool = Path(via.script).with_name("rabbitmq-queues")
    return subprocess.run(
        [str(tool), *args], env=via.env(), capture_output=True, text=True, timeout=120
    )


async def rabbitmq_leader_wipe(ctx: Context) -> None:
    """The node leading the tweet queue killed and its data wiped; the cluster forgets it,
    it joins again blank, and the queue gets its member there back (grow)."""
    _replicated()
    nodes = _rabbit_nodes()
    leader = _queue_leader(nodes[0])
    lost = next(n for n in nodes if n.node == leader)
    survivor = next(n for n in nodes if n is not lost)
    ctx.notes["queue_leader"] = leader
    await _kill(lost.name, ctx)
    _wipe(lost.dir / "mnesia")
    forgot = await asyncio.to_thread(survivor.ctl, "forget_cluster_node", lost.node)
    if forgot.returncode != 0:
        raise RuntimeError(f"forget_cluster_node {lost.node}: {forgot.stderr[-300:]}")
    await _start(lost.name, ctx)
    grown = await asyncio.to_thread(_queues_tool, survivor, "grow", lost.node, "all")
    if grown.returncode != 0:
        raise RuntimeError(f"rabbitmq-queues grow {lost.node}: {grown.stderr[-300:]}")
    ctx.notes["new_queue_leader"] = await asyncio.to_thread(_queue_leader, survivor)


# --- Redis and Valkey -----------------------------------------------------------------------
def _sentinel(store: str) -> _Sentinel:
    found = stack.get(f"{store}-sentinel-1")
    assert isinstance(found, _Sentinel)
    return found


def member_at(store: str, address: str) -> str:
    port = int(address.rsplit(":", 1)[1])
    for index in (1, 2):
        if stack.get(f"{store}-{index}").ports() == [port]:
            return f"{store}-{index}"
    raise RuntimeError(f"no {store} member on {address}")


async def store_primary_wipe(store: str, ctx: Context) -> None:
    """The primary killed and its AOF wiped; only after the Sentinels promoted the replica
    is it started again (empty: as a primary it would be an empty store the replica then
    copies), and they turn it into the new primary's replica."""
    _replicated()
    sentinel = _sentinel(store)
    old = await asyncio.to_thread(sentinel.primary)
    lost = member_at(store, old)
    ctx.notes[f"{store}_old_primary"] = old
    await _kill(lost, ctx)
    _wipe(stack.get(lost).dir / "data")
    started = time.monotonic()

    async def promoted() -> bool:
        return (await asyncio.to_thread(sentinel.primary)) not in (old, "?")

    if not await apoll(promoted, timeout=FAILOVER_TIMEOUT_S, every=0.5):
        raise RuntimeError(f"{store}: no failover within {FAILOVER_TIMEOUT_S:.0f} s")
    ctx.notes[f"{store}_failover_s"] = round(time.monotonic() - started, 1)
    ctx.notes[f"{store}_new_primary"] = await asyncio.to_thread(sentinel.primary)
    await _start(lost, ctx)


async def redis_primary_wipe(ctx: Context) -> None:
    await store_primary_wipe("redis", ctx)


async def valkey_primary_wipe(ctx: Context) -> None:
    await store_primary_wipe("valkey", ctx)


ISOLATED_S = 15.0
"""How long a primary stays cut off: the Sentinels (down-after 3 s) fail over well within."""


def member_total(store: str, member: str) -> int:
    """``tweets:total`` as one member holds it (0 when it does not answer)."""
    server = stack.get(member)
    password = getattr(settings, f"{store}_password").get_secret_value() or None
    client = redis.Redis(port=server.ports()[0], password=password, socket_timeout=2)
    try:
        return int(client.get(KEYS.total) or 0)
    except redis.RedisError:
        return 0
    finally:
        client.close()


def _require_store_side(store: str) -> None:
    """Members and Sentinels configured to connect out from ``STORE_SIDE`` (configs are
    written once, so a replicated stack made before that setting lacks it)."""
    names = [f"{store}-{i}" for i in (1, 2)] + [f"{store}-sentinel-{i}" for i in (1, 2, 3)]
    for name in names:
        server = stack.get(name)
        conf = server.dir / ("sentinel.conf" if "sentinel" in name else f"{name}.conf")
        # a Sentinel's CONFIG REWRITE quotes the value
        if not re.search(
            rf'^bind-source-addr "?{re.escape(STORE_SIDE)}"?$', conf.read_text(), re.M
        ):
            raise RuntimeError(
                f"{conf} has no bind-source-addr {STORE_SIDE}: `make down`, remove "
                f"{server.dir.parent}/{store}-* and `make up TOPOLOGY=replicated` again"
            )


def isolation_of(store: str, primary: str) -> tuple[str, list[list[str]]]:
    """The other member of ``store`` and the rules that cut ``primary`` (a member name) off
    together with the application from it and the store's three Sentinels."""
    replica = next(m for m in (f"{store}-1", f"{store}-2") if m != primary)
    others = [stack.get(replica).ports()[0]]
    others += [stack.get(f"{store}-sentinel-{i}").ports()[0] for i in (1, 2, 3)]
    return replica, network.isolation_rules(stack.get(primary).ports()[0], others)


async def store_primary_isolated(store: str, ctx: Context) -> None:
    """The primary cut off together with the application from its replica and Sentinels
    for ``ISOLATED_S``: the consumer goes on writing to it, the Sentinels promote the
    replica on their side, then the partition heals and the old primary rejoins as a
    replica, throwing away what it took alone. Nothing is lost because the consumer
    committed none of it: its WAITAOF saw no replica, so it writes it again to the new
    primary (the scripts are idempotent). The round records how many counts only the
    old primary held at the heal: what a failover alone would have lost."""
    _replicated()
    _require_store_side(store)
    sentinel = _sentinel(store)
    old = await asyncio.to_thread(sentinel.primary)
    isolated = member_at(store, old)
    replica, rules = isolation_of(store, isolated)
    ctx.notes[f"{store}_old_primary"] = old
    await asyncio.to_thread(network.cut_by, rules)
    try:
        await asyncio.sleep(ISOLATED_S)
        alone = await asyncio.to_thread(member_total, store, isolated)
    finally:
        ctx.notes["healed"] = await asyncio.to_thread(network.heal)
    promoted_total = await asyncio.to_thread(member_total, store, replica)
    ctx.notes[f"{store}_only_on_the_old_primary"] = alone - promoted_total
    ctx.checks["rules_removed"] = not await asyncio.to_thread(network.chain_exists)
    new = await asyncio.to_thread(sentinel.primary)
    ctx.notes[f"{store}_new_primary"] = new
    ctx.checks["failed_over_on_the_far_side"] = new != "?" and member_at(store, new) == replica
    started = time.monotonic()
    member = stack.get(isolated)

    async def rejoined() -> bool:
        return (await asyncio.to_thread(member.role)) == "slave"

    ctx.checks["old_primary_rejoined_as_replica"] = await apoll(
        rejoined, timeout=FAILOVER_TIMEOUT_S, every=0.5
    )
    ctx.notes[f"{store}_rejoined_s"] = round(time.monotonic() - started, 1)


async def redis_primary_partition(ctx: Context) -> None:
    await store_primary_isolated("redis", ctx)


async def valkey_primary_partition(ctx: Context) -> None:
    await store_primary_isolated("valkey", ctx)


async def broker_then_store(ctx: Context) -> None:
    """Two losses in a row: a Kafka broker wiped, then the Redis primary."""
    await kafka_broker_wipe(ctx)
    await redis_primary_wipe(ctx)
