"""A store near its memory limit under load: ``maxmemory`` lowered, then put back.

Redis and Valkey run ``noeviction``: past ``maxmemory`` every store script fails, the
consumer holds its batch, and the broker keeps the tweets of every 202 only until its
retention deletes them. The round lowers one store's ``maxmemory`` (CONFIG SET) under the
load to just above what it uses (its use is then ``FULL_SHARE`` of the limit, past
``ADMISSION_STORE_MEMORY_RATIO``) for ``HOLD_S``, then puts the old value back. What must
hold: ingest refuses (503 with the ids to retry, ``/health`` naming the store) within a few
seconds; the store never refuses a write for memory (its ``errorstat_OOM`` does not grow:
ingest stopped while there was room for what it had taken); once the limit is back, the
retried requests leave both stores exact.

The old value is written to ``STATE`` first and put back afterwards, also on failure and,
after a killed run, at the next start (:func:`put_back`).
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from devstack.config import stack_config
from loadtest.chaos.core import Context, Fault, health, settings
from serve_app.store.client import StoreClient, connect_store, read_memory

FULL_SHARE = 0.9
"""The store's use as a share of the lowered ``maxmemory``."""
HOLD_S = 8.0
"""How long the limit stays lowered (refused requests are retried for 120 s)."""
REFUSAL_WITHIN_S = 5.0
"""Ingest reads the stores once a second: it must refuse within this."""
STATE = stack_config.state_dir / "chaos-maxmemory.json"


async def oom_errors(client: StoreClient) -> int:
    """Commands (scripts included) the store refused for want of memory since it started."""
    stats = await client.info("errorstats")
    return int(stats.get("errorstat_OOM", {}).get("count", 0))


async def set_maxmemory(store: str, value: str) -> None:
    client = connect_store(settings, store)
    try:
        await client.config_set("maxmemory", value)
    finally:
        await client.aclose()


async def put_back() -> list[str]:
    """Restore what ``STATE`` says was changed (idempotent; nothing without ``STATE``)."""
    if not STATE.exists():
        return []
    saved: dict[str, str] = json.loads(STATE.read_text())
    for store, value in saved.items():
        await set_maxmemory(store, value)
    STATE.unlink()
    return [f"{store} maxmemory {value}" for store, value in saved.items()]


def _refusal(store: str) -> str | None:
    """The store's admission detail while ingest refuses for it, else None."""
    try:
        admission = health().get("admission", {}).get(store, {})
    except Exception:  # noqa: BLE001 - evidence only; the next reading counts
        return None
    return None if admission.get("admitting", True) else str(admission.get("detail"))


async def _hold(ctx: Context, store: str) -> float | None:
    """Watch ingest's admission for ``HOLD_S``; when it first refused for the store."""
    started = time.monotonic()
    first: float | None = None
    while time.monotonic() - started < HOLD_S:  # bounded by HOLD_S
        refusal = await asyncio.to_thread(_refusal, store)
        if refusal and first is None:
            first = time.monotonic() - started
            ctx.notes["refusal_detail"] = refusal
        await asyncio.sleep(0.5)
    return first


def store_maxmemory(store: str) -> Fault:
    """The round for ``store`` (redis, valkey)."""

    async def fault(ctx: Context) -> None:
        client = connect_store(settings, store)
        try:
            original = str((await client.config_get("maxmemory"))["maxmemory"])
            STATE.write_text(json.dumps({store: original}))
            oom_before = await oom_errors(client)
            used = (await read_memory(client)).used_bytes
            lowered = int(used / FULL_SHARE)
            await client.config_set("maxmemory", str(lowered))
            try:
                first_refusal = await _hold(ctx, store)
            finally:
                await put_back()
            notes: dict[str, Any] = {
                "used_memory": used,
                "maxmemory_lowered_to": lowered,
                "maxmemory_restored_to": original,
                "first_refusal_after_s": None if first_refusal is None else round(first_refusal, 1),
                "oom_errors": await oom_errors(client) - oom_before,
            }
            ctx.notes.update(notes)
            ctx.checks["refused_soon"] = (
                first_refusal is not None and first_refusal <= REFUSAL_WITHIN_S
            )
            ctx.checks["no_write_refused_for_memory"] = notes["oom_errors"] == 0
        finally:
            await client.aclose()

    return fault
