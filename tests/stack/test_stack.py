"""The local stack itself: each server does a real round trip, keeps data across a
restart, and `down` leaves nothing behind. Runs against the servers devstack starts."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
import uuid
from collections import defaultdict

import aio_pika
import pytest
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from devstack import procs, stack
from devstack.config import app_settings, stack_config

settings = app_settings()

STORES = {
    "redis": (settings.redis_host, settings.redis_port, settings.redis_password.get_secret_value()),
    "valkey": (
        settings.valkey_host,
        settings.valkey_port,
        settings.valkey_password.get_secret_value(),
    ),
}


def _store(name: str) -> aioredis.Redis:
    host, port, password = STORES[name]
    return aioredis.Redis(host=host, port=port, password=password or None)


async def test_kafka_round_trip_in_order_per_partition():
    topic = f"devstack-test-{uuid.uuid4().hex[:12]}"
    partitions, n = 3, 90
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers)
    await admin.start()
    try:
        await admin.create_topics(
            [NewTopic(topic, num_partitions=partitions, replication_factor=1)]
        )
        producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers, acks="all")
        await producer.start()
        try:
            for i in range(n):
                await producer.send(topic, key=f"k{i % 7}".encode(), value=str(i).encode())
            await producer.flush()
        finally:
            await producer.stop()

        consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=settings.kafka_bootstrap_servers,
            group_id=None,
            auto_offset_reset="earliest",
        )
        await consumer.start()
        got: dict[int, list[int]] = defaultdict(list)
        try:
            async with asyncio.timeout(60):
                while sum(map(len, got.values())) < n:
                    batch = await consumer.getmany(timeout_ms=1000)
                    for tp, records in batch.items():
                        got[tp.partition].extend(int(r.value) for r in records)
        finally:
            await consumer.stop()
        assert sorted(v for vs in got.values() for v in vs) == list(range(n))
        for values in got.values():
            assert values == sorted(values)  # produced in order -> consumed in order
    finally:
        await admin.delete_topics([topic])
        await admin.close()


async def test_rabbitmq_confirms_and_redelivery():
    queue_name = f"devstack-test-{uuid.uuid4().hex[:12]}"
    conn = await aio_pika.connect_robust(settings.rabbitmq_url)
    try:
        channel = await conn.channel(publisher_confirms=True)
        queue = await channel.declare_queue(queue_name, durable=True)
        for i in range(3):
            confirm = await channel.default_exchange.publish(
                aio_pika.Message(str(i).encode(), delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                routing_key=queue_name,
            )
            assert confirm is not None  # broker confirmed (publish raises on nack)

        first = await queue.get(no_ack=False, timeout=10)
        assert first.body == b"0" and not first.redelivered
        await channel.close()  # unacked -> back to the queue

        channel = await conn.channel()
        queue = await channel.get_queue(queue_name)
        seen = []
        for _ in range(3):
            msg = await queue.get(no_ack=False, timeout=10)
            seen.append((msg.body, msg.redelivered))
            await msg.ack()
        assert (b"0", True) in seen
        assert sorted(b for b, _ in seen) == [b"0", b"1", b"2"]
        await queue.delete(if_unused=False, if_empty=False)
    finally:
        await conn.close()


@pytest.mark.parametrize("name", ["redis", "valkey"])
async def test_store_round_trip_and_survives_restart(name):
    key, value = f"devstack-test:{uuid.uuid4().hex}", uuid.uuid4().hex
    client = _store(name)
    try:
        assert await client.set(key, value)
        assert (await client.get(key)).decode() == value
        info = await client.info("server")
        if name == "valkey":
            assert "valkey_version" in info
    finally:
        await client.aclose()

    await asyncio.to_thread(stack.stop, name)
    assert not stack.is_running(name)
    assert not procs.port_listening(STORES[name][1])
    await asyncio.to_thread(stack.start, name)
    assert stack.is_running(name)

    client = _store(name)
    try:
        assert (await client.get(key)).decode() == value  # AOF brought it back
        await client.delete(key)
    finally:
        await client.aclose()


def _owned_servers() -> list[stack.Server]:
    """The infra servers and the helper processes they own (RabbitMQ's epmd)."""
    servers = [stack.get(n) for n in stack.INFRA]
    return servers + [h for s in servers for h in s.helpers()]


def _stack_pids() -> list[int]:
    """Every live pid the stack recorded for the infra servers (incl. epmd and beam)."""
    pids = []
    for server in _owned_servers():
        for pidfile in server.dir.glob("*.pid"):
            entry = procs.PidFile(pidfile).read()
            if entry and procs.alive(*entry):
                pids.append(entry[0])
    return pids


def test_down_frees_everything_and_up_again():
    servers = _owned_servers()
    ports = [p for s in servers for p in s.ports()]
    assert stack_config.rabbitmq_epmd_port in ports
    pids = _stack_pids()
    assert pids
    try:
        stack.down(stack.INFRA, log=lambda *_: None)
        assert [p for p in pids if procs.alive(p)] == []
        assert [s.name for s in servers if s.is_running()] == []
        assert [p for p in ports if procs.port_listening(p)] == []
    finally:
        stack.up(stack.INFRA, log=lambda *_: None)  # leave the stack up for later tests
    assert all(stack.is_running(n) for n in stack.INFRA)


def test_erlang_ports_listen_on_loopback_only():
    """epmd, AMQP, management and distribution: nothing of RabbitMQ beyond 127.0.0.1."""
    rabbitmq = stack.get("rabbitmq")
    ours = {p for s in [rabbitmq, *rabbitmq.helpers()] for p in s.ports()}
    owned_pids = set(procs.session_members(_stack_pids()))
    owned = [lsn for lsn in procs.listeners() if lsn.pid in owned_pids]
    exposed = [
        f"{lsn.address}:{lsn.port} (pid {lsn.pid})" for lsn in owned if not lsn.loopback_only
    ]
    assert exposed == []
    assert {lsn.port for lsn in owned} >= ours


SYSTEM_EPMD_PORT = 4369


def test_rabbitmq_ignores_a_foreign_epmd_on_4369(tmp_path):
    """A machine already running Erlang services (an epmd on the standard port) works too:
    the stack neither uses nor stops it."""
    if procs.port_listening(SYSTEM_EPMD_PORT):
        foreign, started_here = procs.port_owner(SYSTEM_EPMD_PORT), False
    else:
        epmd = shutil.which("epmd") or "/usr/lib/erlang/bin/epmd"
        foreign = subprocess.Popen(
            [epmd, "-port", str(SYSTEM_EPMD_PORT)], start_new_session=True
        ).pid
        started_here = True
        deadline = time.monotonic() + 10
        while not procs.port_listening(SYSTEM_EPMD_PORT) and time.monotonic() < deadline:
            time.sleep(0.05)
    try:
        stack.stop("rabbitmq")
        stack.start("rabbitmq")
        assert stack.is_running("rabbitmq")
        assert foreign is None or foreign < 0 or procs.alive(foreign)
        assert procs.port_owner(SYSTEM_EPMD_PORT) == foreign
        epmd_owner = procs.port_owner(stack_config.rabbitmq_epmd_port)
        assert epmd_owner == stack.get("rabbitmq").epmd.pid()
    finally:
        if started_here and foreign:
            procs.terminate([foreign], timeout=5)
