"""Network partitions on loopback: packets to and from one server's port dropped (not a
kill: connections stay open and hang, as on a real partition), for longer than the publish
deadline, then restored.

Every rule lives in one chain of our own, ``CHAIN``, reached by one jump from INPUT on
``lo``; on loopback each packet passes INPUT once at its receiver, so dropping both
``--dport PORT`` (to the server) and ``--sport PORT`` (its answers) there cuts both
directions. Removal is by exact name and spec: the jump, each rule of our chain as
``iptables -S CHAIN`` lists it, then the chain. Nothing else is touched (no flush, no
other chain), and a chain left by a killed run is removed the same way at the next start.
"""

from __future__ import annotations

import asyncio
import shlex
import shutil
import subprocess
from collections.abc import Sequence
from urllib.parse import urlsplit

from devstack.config import LOCALHOST
from devstack.servers.replicated import STORE_SIDE
from loadtest.chaos.core import Context, consumers, settings

CHAIN = "WEATHER-CHAOS-PARTITION"
IPTABLES_WAIT_S = "5"
JUMP = ["INPUT", "-i", "lo", "-j", CHAIN]
MAX_JUMPS = 10
"""At most this many identical jumps are removed (there is one; the bound keeps it finite)."""


def server_port(name: str) -> int:
    """The loopback port the application talks to for ``name``."""
    if name == "kafka":
        return int(urlsplit(f"//{settings.kafka_bootstrap_servers.split(',')[0]}").port or 9092)
    return {
        "rabbitmq": settings.rabbitmq_port,
        "redis": settings.redis_port,
        "valkey": settings.valkey_port,
    }[name]


# --- the rules (pure) -------------------------------------------------------------------
def iptables(*args: str) -> list[str]:
    return ["iptables", "-w", IPTABLES_WAIT_S, *args]


def port_rules(port: int, side: str | None = None) -> list[list[str]]:
    """Match TCP to and from ``port``; with ``side``, only what an address of that side
    sends to it and what it answers there."""
    source = ["-s", side] if side else []
    destination = ["-d", side] if side else []
    return [
        [*source, "-p", "tcp", "--dport", str(port)],
        [*destination, "-p", "tcp", "--sport", str(port)],
    ]


def isolation_rules(primary: int, others: Sequence[int]) -> list[list[str]]:
    """A store primary cut off together with the application: the store side (its replica
    and Sentinels, connecting from ``STORE_SIDE``) no longer reaches ``primary``, and the
    application side (127.0.0.1) no longer reaches ``others`` (the replica, the Sentinels).
    The Sentinels still reach each other and the replica, so they fail over on their side."""
    rules = port_rules(primary, STORE_SIDE)
    for port in others:
        rules += port_rules(port, LOCALHOST)
    return rules


def chain_commands(rules: Sequence[list[str]]) -> list[list[str]]:
    """Create ``CHAIN`` dropping what each of ``rules`` matches, and jump to it from INPUT
    on lo."""
    return [
        iptables("-N", CHAIN),
        *(iptables("-A", CHAIN, *rule, "-j", "DROP") for rule in rules),
        iptables("-I", *JUMP[:1], "1", *JUMP[1:]),
    ]


def partition_commands(port: int) -> list[list[str]]:
    """Create ``CHAIN`` dropping TCP to and from ``port`` and jump to it from INPUT on lo."""
    return chain_commands(port_rules(port))


def rule_deletions(listing: str) -> list[list[str]]:
    """``iptables -S CHAIN`` output turned into the exact deletions of its rules (only
    ``-A CHAIN ...`` lines; the ``-N CHAIN`` line is the chain itself)."""
    deletions = []
    for line in listing.splitlines():
        words = shlex.split(line)
        if len(words) > 2 and words[0] == "-A" and words[1] == CHAIN:
            deletions.append(iptables("-D", *words[1:]))
    return deletions


# --- applying them --------------------------------------------------------------------------
def _run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)


def require_iptables() -> None:
    if shutil.which("iptables") is None:
        raise RuntimeError("iptables missing: `make install` (Debian package iptables)")


def chain_exists() -> bool:
    return _run(iptables("-S", CHAIN)).returncode == 0


def heal() -> list[str]:
    """Remove our jump(s), our chain's rules and our chain, by exact name; returns what it
    removed (idempotent: nothing when there is nothing of ours)."""
    removed: list[str] = []
    for _ in range(MAX_JUMPS):
        if _run(iptables("-C", *JUMP)).returncode != 0:
            break
        done = _run(iptables("-D", *JUMP))
        assert done.returncode == 0, done.stderr
        removed.append("jump")
    listing = _run(iptables("-S", CHAIN))
    if listing.returncode != 0:
        return removed
    for cmd in rule_deletions(listing.stdout):
        done = _run(cmd)
        assert done.returncode == 0, done.stderr
        removed.append(shlex.join(cmd[3:]))
    done = _run(iptables("-X", CHAIN))
    assert done.returncode == 0, done.stderr
    removed.append(f"chain {CHAIN}")
    return removed


def cut(port: int) -> None:
    """Drop TCP to and from ``port`` on lo (healing first if a killed run left a chain)."""
    cut_by(port_rules(port))


def cut_by(rules: Sequence[list[str]]) -> None:
    """Drop what ``rules`` match on lo (healing first if a killed run left a chain)."""
    require_iptables()
    heal()
    for cmd in chain_commands(rules):
        done = _run(cmd)
        if done.returncode != 0:
            heal()
            raise RuntimeError(f"{shlex.join(cmd)} failed: {done.stderr.strip()}")


def _actor_state(kind: str) -> dict[str, object]:
    try:
        report = consumers()
    except Exception as exc:  # noqa: BLE001 - evidence only
        return {"error": repr(exc)}
    for actor in (report.get("actors") or {}).values():
        if actor.get("kind") == kind:
            return {k: actor.get(k) for k in ("retrying", "retries", "last_error", "connected")}
    return {}


async def partition(name: str, ctx: Context) -> None:
    """Cut ``name``'s port for ``PUBLISH_TIMEOUT_S`` + 3 s, then restore it."""
    port = server_port(name)
    held_s = settings.publish_timeout_s + 3
    await asyncio.to_thread(cut, port)
    try:
        await asyncio.sleep(held_s - 1)
        kind = {"redis": "kafka", "valkey": "rabbitmq"}.get(name, name)
        ctx.notes["consumer_during"] = await asyncio.to_thread(_actor_state, kind)
        await asyncio.sleep(1)
    finally:
        ctx.notes["healed"] = await asyncio.to_thread(heal)
    ctx.notes.update(port=port, held_s=held_s)
    ctx.checks["rules_removed"] = not await asyncio.to_thread(chain_exists)


async def kafka_partition(ctx: Context) -> None:
    await partition("kafka", ctx)


async def rabbitmq_partition(ctx: Context) -> None:
    await partition("rabbitmq", ctx)


async def redis_partition(ctx: Context) -> None:
    await partition("redis", ctx)


async def valkey_partition(ctx: Context) -> None:
    await partition("valkey", ctx)
