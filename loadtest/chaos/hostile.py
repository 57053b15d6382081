"""Hostile messages published straight onto both brokers under load: huge, binary, deeply
nested, invalid UTF-8 header values, absurd ids (AMQP message id at its 255-byte limit, tweet
ids far too long, lone surrogates, not strings), and valid tweets whose id another tweet
already holds with other content. Each is exactly one dead letter with a reason; the good
tweets around them are all counted; consumption never stops."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import aio_pika
import httpx
from aiokafka import AIOKafkaConsumer

from devstack.config import stack_config
from loadtest import retrying
from loadtest.chaos.core import Context, settings, topic_partitions
from loadtest.chaos.processes import publish_kafka, publish_rabbitmq
from loadtest.counters import Counters
from loadtest.tweets import TweetFactory
from serve_app.brokers.base import POISON_REASON_HEADER
from serve_app.store.core import fingerprint

HUGE_BYTES = 800 * 1024
"""Below Kafka's default 1 MiB message limit, far above anything the writers publish."""
MAX_TRIES = 10_000


def chunk(*items: Any) -> bytes:
    """A version-2 chunk holding ``items`` as they are (valid tweets or not)."""
    return json.dumps({"v": 2, "tweets": list(items)}, ensure_ascii=True).encode()


def colliding(tweet: dict[str, str], smaller: bool, key: bytes) -> dict[str, str]:
    """A valid tweet with ``tweet``'s id, country and weather but another description whose
    fingerprint is ``smaller`` (it wins the id) or larger (it loses) than ``tweet``'s, so the
    breakdowns do not move whichever wins; one conflict, one dead letter per store. Only
    who holds the consumers' ``key`` can choose (this round does: it runs the stack)."""
    target = fingerprint(key, tweet["description"], tweet["country"], tweet["weather"])
    for i in range(MAX_TRIES):  # each try succeeds with probability ~1/2
        description = f"hostile collision {i}"
        fp = fingerprint(key, description, tweet["country"], tweet["weather"])
        if (fp < target) == smaller and fp != target:
            return {**tweet, "description": description}
    raise AssertionError("no colliding description found")  # pragma: no cover


def hostile_bodies(victims: list[dict[str, str]], key: bytes) -> dict[str, bytes]:
    """Every hostile body by name; each yields exactly one dead letter."""
    now = datetime.now(UTC).isoformat()
    base = {
        "description": "x",
        "country": "ES",
        "weather": settings.weathers[0],
        "accepted_at": now,
    }
    bodies = {
        "huge": b"\x00hostile" + os.urandom(HUGE_BYTES),
        "binary": os.urandom(4096),
        "deep": b"[" * 100_000 + b"]" * 100_000,
        "id_too_long": chunk({**base, "id": "x" * 100_000}),
        "id_lone_surrogate": chunk({**base, "id": "\ud800abc"}),
        "id_not_a_string": chunk({**base, "id": {"$gt": ""}}),
        "id_control_chars": chunk({**base, "id": "a\x00\n\x1b[31m"}),
        "unknown_version": json.dumps({"v": 99, "tweets": []}).encode(),
    }
    for victim, smaller in zip(victims, (True, False), strict=True):
        collider = {**colliding(victim, smaller, key), "accepted_at": now}
        bodies[f"collision_{'wins' if smaller else 'loses'}"] = chunk(collider)
    return bodies


def kafka_headers() -> list[tuple[str, bytes]]:
    return [
        ("x-invalid-utf8", b"\xff\xfe\xc3\x28"),
        ("x-huge", b"h" * 60_000),
        ("\u00ff-odd-key", b"\x00"),
    ]


class RawText(str):
    """A header value whose wire bytes are ``raw`` (invalid UTF-8): pamqp encodes a string
    with ``.encode("utf-8")``, so this is how another client's bytes are reproduced."""

    raw: bytes

    def __new__(cls, raw: bytes) -> RawText:
        text = super().__new__(cls, raw.decode("latin-1"))
        text.raw = raw
        return text

    def encode(self, encoding: str = "utf-8", errors: str = "strict") -> bytes:
        return self.raw


def amqp_message(body: bytes) -> aio_pika.Message:
    """``body`` with hostile AMQP properties: a 255-byte message id (the shortstr limit),
    invalid UTF-8 and huge header values."""
    return aio_pika.Message(
        body,
        message_id="\u00e9" * 127 + "\x00",  # 255 bytes: the shortstr's limit
        headers={
            "x-invalid-utf8": RawText(b"\xff\xfe\xc3\x28"),
            "x-bytes": bytearray(b"\x00\xff" * 100),
            "x-huge": "h" * 60_000,
            "x-nested": {"a": [1, 2.5, None, bytearray(b"\xff")]},
            "x-tweets": -1,
        },
    )


@contextlib.asynccontextmanager
async def victims(ctx: Context) -> AsyncIterator[None]:
    """Before the round: two good tweets counted in both stores, whose ids the hostile
    collisions will reuse (counted before the round's first snapshot, so the round's load
    is all the round adds)."""
    tweets = TweetFactory("chaos-victim").many(2)
    result = retrying.RetryingResult()
    async with httpx.AsyncClient(base_url=stack_config.serve_http_url, timeout=30) as client:
        await retrying.send_until_accepted(client, tweets, result, time.monotonic() + 120)
    assert result.accepted_ids == {t["id"] for t in tweets}, result.statuses
    counters = Counters()
    try:
        for _ in range(120):  # at most ~60 s
            redis, valkey = await counters.counted([t["id"] for t in tweets])
            if all(redis) and all(valkey):
                break
            await asyncio.sleep(0.5)
    finally:
        await counters.close()
    ctx.notes["victims"] = tweets
    yield


async def dead_letter_reasons(since: dict[int, int]) -> tuple[list[str | None], dict[int, int]]:
    """Reasons of the Kafka dead letters after the offsets ``since`` (partition -> offset);
    returns them and the end offsets read to."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap_servers, enable_auto_commit=False
    )
    await consumer.start()
    try:
        tps = await topic_partitions(settings.kafka_dead_letter_topic)
        ends = await consumer.end_offsets(tps)
        if not since:
            return [], {tp.partition: ends[tp] for tp in tps}
        consumer.assign(tps)
        reasons: list[str | None] = []
        for tp in tps:
            consumer.seek(tp, since.get(tp.partition, 0))
        for _ in range(200):  # bounded reads
            positions = [await consumer.position(tp) for tp in tps]
            if all(at >= ends[tp] for at, tp in zip(positions, tps, strict=True)):
                break
            batch = await consumer.getmany(timeout_ms=1000, max_records=500)
            for records in batch.values():
                for record in records:
                    headers = dict(record.headers or [])
                    reason = headers.get(POISON_REASON_HEADER)
                    reasons.append(reason.decode("utf-8", "replace") if reason else None)
        return reasons, {tp.partition: ends[tp] for tp in tps}
    finally:
        await consumer.stop()


async def hostile_messages(ctx: Context) -> None:
    """Publish every hostile body to both brokers (with hostile headers/properties)."""
    bodies = hostile_bodies(ctx.notes["victims"], settings.content_key())
    _, since = await dead_letter_reasons({})
    await publish_kafka([(body, kafka_headers()) for body in bodies.values()])
    await publish_rabbitmq([amqp_message(body) for body in bodies.values()])
    ctx.add_poison(kafka=len(bodies), rabbitmq=len(bodies))
    ctx.notes["hostile"] = list(bodies)
    ctx.notes["kafka_dead_letters_since"] = since


async def every_hostile_has_a_reason(ctx: Context) -> None:
    """After the round: the Kafka dead letters it caused, each with its reason."""
    reasons, _ = await dead_letter_reasons(ctx.notes["kafka_dead_letters_since"])
    ctx.notes["kafka_dead_letter_reasons"] = sorted({(r or "")[:60] for r in reasons})
    ctx.checks["kafka_dead_letters_have_reasons"] = len(reasons) == ctx.poison["kafka"] and all(
        reasons
    )
