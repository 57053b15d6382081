"""A store outage longer than Kafka keeps records (retention shortened for the round).

For the round the tweet topic keeps records ``RETENTION_MS`` (segments roll every
``SEGMENT_MS``, so closed ones can go). Ingest is not told: it reads the topic's retention
from the broker and refuses once the oldest unread record is ``STALL_S`` old
(``ADMISSION_BROKER_LIMIT_RATIO`` of it, as in production). Redis is stopped for
``RETENTION_MS`` + 15 s while the load keeps sending. What must hold: admission control
refuses (503) before the first unread record is old enough to be deleted; any record Kafka
deletes unread anyway is reported (``tweets:skipped``), never silent; Valkey counts every
202, and Redis every 202 not reported skipped.

The broker deletes by a periodic check (``log.retention.check.interval.ms``, 5 min on the
local stack, not a dynamic setting), so whether a check falls inside the 45 s outage of
``redis_outage_retention`` is chance; it records the unread records Kafka deleted (the log
start past the group's committed offset). ``redis_outage_past_retention_check`` keeps Redis
down until such a deletion happened (at most one check interval past the retention), under
a short load that ends well before admission refuses (:data:`SHORT_LOAD_S`): then Redis
must report exactly the deleted records as skipped (``tweets:skipped``), short by their
tweets, while Valkey has them all.

Everything changed is written to ``STATE`` first and put back afterwards, also on failure
and, after a killed run, at the next start.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from devstack import stack
from devstack.config import stack_config
from loadtest.chaos.core import FAULT_AT_S, Context, Setup, health, settings, topic_partitions
from loadtest.counters import Counters
from serve_app.store.core import KEYS
from serve_app.store.repair import RepairPlan, open_marker_stores, repair

RETENTION_MS = 30_000
SEGMENT_MS = 3_000
STALL_S = RETENTION_MS / 1000 * settings.admission_broker_limit_ratio
"""Age of the oldest unread record at which admission refuses during the round."""
DOWN_S = RETENTION_MS / 1000 + 15
CHECK_INTERVAL_S = 300
"""log.retention.check.interval.ms of the local Kafka (devstack/servers/kafka.py)."""
LONG_DOWN_S = RETENTION_MS / 1000 + CHECK_INTERVAL_S + 30
SHORT_LOAD_S = FAULT_AT_S + STALL_S / 2
"""The load of ``redis_outage_past_retention_check``: it ends half the age limit after
Redis stopped, so no request meets the refusal (the oldest unread record may be a little
older than the stop: a batch the consumer held when Redis went; requests refused there are
retried while Redis is down for minutes, and give up)."""
STATE = stack_config.state_dir / "chaos-retention.json"
DYNAMIC_TOPIC_CONFIG = 1
"""DescribeConfigs' config_source of a topic's own override."""


# --- the topic's overrides ------------------------------------------------------------------
def overrides(entries: list[tuple[Any, ...]]) -> dict[str, str]:
    """A topic's own settings from DescribeConfigs (v1+) entries: (name, value, read_only,
    source, ...); everything else is a broker setting or a default."""
    return {e[0]: e[1] for e in entries if e[3] == DYNAMIC_TOPIC_CONFIG and e[1] is not None}


def shortened(current: dict[str, str]) -> dict[str, str]:
    """The overrides for the round: the topic's own plus short retention and segments."""
    return {**current, "retention.ms": str(RETENTION_MS), "segment.ms": str(SEGMENT_MS)}


async def _admin() -> AIOKafkaAdminClient:
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers)
    await admin.start()
    return admin


async def topic_overrides() -> dict[str, str]:
    admin = await _admin()
    try:
        resource = ConfigResource(ConfigResourceType.TOPIC, settings.kafka_topic)
        [response] = await admin.describe_configs([resource])
        [(error, message, _, _, entries)] = response.resources
        assert error == 0, message
        return overrides(entries)
    finally:
        await admin.close()


async def set_overrides(configs: dict[str, str]) -> None:
    """Replace the topic's overrides with ``configs`` (AlterConfigs is not incremental)."""
    admin = await _admin()
    try:
        resource = ConfigResource(ConfigResourceType.TOPIC, settings.kafka_topic, configs)
        [response] = await admin.alter_configs([resource])
        for error, message, *_ in response.resources:
            assert error == 0, message
    finally:
        await admin.close()


async def put_back() -> list[str]:
    """Restore what ``STATE`` says was changed (idempotent; nothing without ``STATE``)."""
    if not STATE.exists():
        return []
    saved = json.loads(STATE.read_text())
    await set_overrides(saved["topic_overrides"])
    if not stack.is_running("redis"):
        await asyncio.to_thread(stack.start, "redis")
    STATE.unlink()
    return [f"topic overrides {saved['topic_overrides']}"]


@contextlib.asynccontextmanager
async def short_retention(ctx: Context) -> AsyncIterator[None]:
    """The round runs with the topic's retention shortened on the broker; put back after."""
    ctx.notes["leftover_restored"] = await put_back()
    current = await topic_overrides()
    STATE.write_text(json.dumps({"topic_overrides": current}))
    try:
        await set_overrides(shortened(current))
        yield
    finally:
        ctx.notes["restored"] = await put_back()
        ctx.checks["topic_restored"] = await topic_overrides() == current


# --- putting the shared stack back after a skip ------------------------------------------
async def repair_skipped(prefix: str) -> dict[str, Any]:
    """After a round whose Kafka deleted unread records, make Redis equal to Valkey again for
    the round's tweets (ids starting ``prefix``), as ``weather repair --into redis --prefix
    <tag> --clear-skip-report --apply`` does (:mod:`serve_app.store.repair`): each marker
    Redis lacks is set and its tweet counted, once. The skip report is the round's own (the
    setup refuses to start with one there), so it goes once every id of the round is
    repaired. Other agents share the stack, and a permanent difference would fail every
    later `make verify`."""
    stores = open_marker_stores(settings)
    plan = RepairPlan(into=("redis",), prefix=prefix, apply=True, clear_skip_report=True)
    try:
        report = await repair(stores, plan)
    finally:
        await asyncio.gather(*(store.aclose() for store in stores.values()))
    [into_redis] = report.directions
    return {
        "markers_copied_from_valkey": into_redis.missing,
        "conflicts": into_redis.conflicts,
        "skip_report_cleared": into_redis.skip_report_cleared,
        "left_alone": into_redis.left_alone(),
    }


def short_retention_repaired(round_name: str) -> Setup:
    """:func:`short_retention`, and Redis repaired from Valkey afterwards for the round's ids
    (``chaos-<round>-``, see :func:`repair_skipped`); refuses to start if a skip report is
    already there (it would not be the round's to clear)."""

    @contextlib.asynccontextmanager
    async def setup(ctx: Context) -> AsyncIterator[None]:
        stats = await counters_http_stats()
        assert not stats, f"Redis already reports skipped records {stats}: not ours to drop"
        async with short_retention(ctx):
            try:
                yield
            finally:
                ctx.notes["repaired"] = await repair_skipped(f"chaos-{round_name}-")

    return setup


async def counters_http_stats() -> dict[str, int]:
    """Redis's skip report (``tweets:skipped``) as it is now."""
    counters = Counters()
    try:
        return {k: int(v) for k, v in (await counters.redis.hgetall(KEYS.skipped)).items()}
    finally:
        await counters.close()


# --- evidence during the outage ------------------------------------------------------------
async def unread_deleted() -> int:
    """Records Kafka deleted before the group committed them: log start past the committed
    offset, summed over the tweet topic's partitions."""
    admin = await _admin()
    offsets = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap_servers)
    await offsets.start()
    try:
        tps = await topic_partitions(settings.kafka_topic)
        committed = await admin.list_consumer_group_offsets(
            settings.kafka_consumer_group, partitions=tps
        )
        starts = await offsets.beginning_offsets(tps)
        return sum(
            max(0, starts[tp] - committed[tp].offset)
            for tp in tps
            if tp in committed and committed[tp].offset >= 0
        )
    finally:
        await offsets.stop()
        await admin.close()


def _kafka_refusal() -> str | None:
    """The Kafka admission detail while ingest refuses, else None."""
    try:
        kafka = health().get("admission", {}).get("kafka", {})
    except Exception:  # noqa: BLE001 - evidence only; the next reading counts
        return None
    return None if kafka.get("admitting", True) else str(kafka.get("detail"))


async def _outage(ctx: Context, down_s: float, until_deleted: bool) -> None:
    """Redis stopped for ``down_s`` (or, ``until_deleted``, until Kafka deleted unread records
    and 5 s more, at most ``down_s``), watching ingest's admission and Kafka's log start."""
    stopped_at = time.monotonic()
    await asyncio.to_thread(stack.stop, "redis")
    first_refusal: float | None = None
    deleted, deleted_at = 0, None
    try:
        while time.monotonic() - stopped_at < down_s:  # bounded by down_s
            refusal = await asyncio.to_thread(_kafka_refusal)
            if refusal and first_refusal is None:
                first_refusal = time.monotonic() - stopped_at
                ctx.notes["refusal_detail"] = refusal
            with contextlib.suppress(Exception):
                deleted = max(deleted, await asyncio.wait_for(unread_deleted(), 10))
            if deleted and deleted_at is None:
                deleted_at = time.monotonic() - stopped_at
            if (
                until_deleted
                and deleted_at is not None
                and time.monotonic() - stopped_at > deleted_at + 5
            ):
                break
            await asyncio.sleep(1)
    finally:
        await asyncio.to_thread(stack.start, "redis")
    ctx.notes.update(
        redis_down_s=round(time.monotonic() - stopped_at, 1),
        first_refusal_after_s=None if first_refusal is None else round(first_refusal, 1),
        unread_deleted_records=deleted,
        unread_deleted_after_s=None if deleted_at is None else round(deleted_at, 1),
        retention_s=RETENTION_MS / 1000,
        stall_s=STALL_S,
    )
    ctx.checks["refused_before_retention"] = (
        first_refusal is not None and first_refusal < RETENTION_MS / 1000
    )


async def redis_outage_retention(ctx: Context) -> None:
    """Redis stopped for longer than the shortened retention while the load goes on."""
    await _outage(ctx, DOWN_S, until_deleted=False)


async def redis_outage_past_retention_check(ctx: Context) -> None:
    """Redis stopped until Kafka's retention check has deleted records nobody read (at most
    one check interval past the retention): the skip must be reported, not silent."""
    await _outage(ctx, LONG_DOWN_S, until_deleted=True)
    ctx.checks["unread_records_deleted"] = ctx.notes["unread_deleted_records"] > 0
