"""The consumer stage against the real stack (Kafka, RabbitMQ, Redis, Valkey, Ray).

Tweets are put straight on the brokers in the writers' wire format (chunks, see
serve_app/codec.py; and the version 1 one-tweet messages, which must still count), so these
tests exercise only the consumers. Counts are global: every test compares deltas.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import aio_pika
import httpx
import pytest
import ray
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from ray import serve

from devstack.config import app_settings, stack_config
from serve_app.brokers.base import POISON_REASON_HEADER
from serve_app.brokers.kafka import (
    ORIGINAL_OFFSET_HEADER,
    ORIGINAL_PARTITION_HEADER,
    ensure_kafka_topics,
    kafka_lag,
)
from serve_app.brokers.rabbitmq import declare_rabbit_topology, rabbit_depth
from serve_app.consume.actors import (
    NAMESPACE,
    ConsumerConfigError,
    kafka_actor_name,
    rabbit_actor_name,
    validate_consumer_counts,
)
from serve_app.consume.deployment import ConsumerSupervisor
from serve_app.model.codec import EncodedBatch
from serve_app.model.schema import Tweet
from serve_app.store.client import TweetStore, connect_redis, connect_valkey
from tests.support.counting import (
    COUNTRIES,
    WAIT_S,
    delta,
    expected_delta,
    make_tweets,
    wait_until,
)

settings = app_settings()

APP_NAME = "consumers"


# --- fixtures ---------------------------------------------------------------------------


@pytest.fixture(scope="session")
def ray_cluster(devstack_serve: Any) -> Iterable[None]:
    if not ray.is_initialized():
        ray.init(
            address="auto",
            namespace=NAMESPACE,
            log_to_driver=False,
        )
    yield


@pytest.fixture(scope="session")
def consumers_app(ray_cluster: None) -> Any:
    """The running ``consumers`` app (deployed from serve_config.yaml, or run here)."""
    apps = serve.status().applications
    if APP_NAME not in apps or apps[APP_NAME].status != "RUNNING":
        serve.run(
            ConsumerSupervisor.bind(settings),
            name=APP_NAME,
            route_prefix="/consumers",
            blocking=False,
        )
        deadline = time.monotonic() + WAIT_S
        while serve.status().applications[APP_NAME].status != "RUNNING":
            assert time.monotonic() < deadline, serve.status().applications[APP_NAME]
            time.sleep(0.5)
    return serve.get_app_handle(APP_NAME)


class Brokers:
    """Publishes tweets exactly as KafkaWriter and RabbitWriter do."""

    def __init__(self) -> None:
        self.producer: AIOKafkaProducer | None = None
        self.connection: aio_pika.abc.AbstractRobustConnection | None = None
        self.channel: aio_pika.abc.AbstractChannel | None = None
        self.exchange: aio_pika.abc.AbstractExchange | None = None

    async def start(self) -> None:
        await ensure_kafka_topics(settings)
        self.producer = AIOKafkaProducer(
            bootstrap_servers=settings.kafka_bootstrap_servers, acks="all", linger_ms=5
        )
        await self.producer.start()
        self.connection = await aio_pika.connect_robust(settings.rabbitmq_url)
        self.channel = await self.connection.channel(publisher_confirms=True)
        self.exchange, _ = await declare_rabbit_topology(self.channel, settings)

    async def stop(self) -> None:
        if self.producer:
            await self.producer.stop()
        if self.connection:
            await self.connection.close()

    async def kafka_raw(self, payloads: list[tuple[bytes | None, bytes]]) -> list[Any]:
        assert self.producer
        futures = [
            await self.producer.send(settings.kafka_topic, key=key, value=value)
            for key, value in payloads
        ]
        return await asyncio.gather(*futures)

    async def rabbit_raw(self, payloads: list[tuple[str, bytes]]) -> None:
        assert self.exchange
        for start in range(0, len(payloads), 1000):
            await asyncio.gather(
                *(
                    self.exchange.publish(
                        aio_pika.Message(
                            body=body,
                            message_id=message_id,
                            content_type="application/json",
                            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                        ),
                        routing_key="",
                    )
                    for message_id, body in payloads[start : start + 1000]
                )
            )

    async def publish(self, tweets: list[Tweet], chunk_bytes: int = 16_384) -> None:
        """Both brokers, in the writers' wire format (chunks), confirmed."""
        encoded = EncodedBatch(tweets, chunk_bytes)
        await asyncio.gather(
            self.kafka_raw([(c.country.encode(), c.body) for c in encoded.chunks(True)]),
            self.rabbit_raw([(c.ids[0], c.body) for c in encoded.chunks(False)]),
        )

    async def publish_v1(self, tweets: list[Tweet]) -> None:
        """Both brokers, one bare tweet per message: what earlier releases published."""
        bodies = [t.to_json() for t in tweets]
        await asyncio.gather(
            self.kafka_raw([(t.country.encode(), b) for t, b in zip(tweets, bodies, strict=True)]),
            self.rabbit_raw([(t.id, b) for t, b in zip(tweets, bodies, strict=True)]),
        )


@pytest.fixture(scope="session")
async def brokers() -> Any:
    b = Brokers()
    await b.start()
    yield b
    await b.stop()


@pytest.fixture(scope="session")
def redis_store() -> TweetStore:
    return TweetStore(connect_redis(settings), settings)


@pytest.fixture(scope="session")
def valkey_store() -> TweetStore:
    return TweetStore(connect_valkey(settings), settings)


@pytest.fixture(scope="session")
def stores(redis_store: TweetStore, valkey_store: TweetStore) -> dict[str, TweetStore]:
    return {"redis": redis_store, "valkey": valkey_store}


# --- helpers ----------------------------------------------------------------------------


async def _is_drained() -> bool:
    return await kafka_lag(settings) == 0 and await rabbit_depth(settings) == 0


async def snapshot(stores: dict[str, TweetStore]) -> dict[str, dict[str, Any]]:
    return {name: await store.read_stats() for name, store in stores.items()}


async def assert_counts_grow(
    stores: dict[str, TweetStore],
    before: dict[str, dict[str, Any]],
    expected: dict[str, Any],
    timeout: float = WAIT_S,
) -> None:
    """Each store's delta reaches ``expected`` in time, and stays there once drained."""
    for name, store in stores.items():
        last: dict[str, Any] = {}

        async def reached(store: TweetStore = store, name: str = name) -> bool:
            nonlocal last
            last = delta(before[name], await store.read_stats())
            return last["total"] >= expected["total"]

        try:
            await wait_until(reached, f"{name} total +{expected['total']}", timeout)
        except AssertionError:
            raise AssertionError(f"{name}: delta {last['total']} != {expected['total']}") from None
    await asyncio.sleep(2.0)  # anything still in flight would over-count now
    for name, store in stores.items():
        assert delta(before[name], await store.read_stats()) == expected, name


async def supervisor_health(app: Any) -> dict[str, Any]:
    return await app.health.remote()


# --- tests ------------------------------------------------------------------------------


def test_more_kafka_consumers_than_partitions_is_refused() -> None:
    too_many = settings.model_copy(update={"kafka_consumers": settings.kafka_partitions + 1})
    with pytest.raises(ConsumerConfigError, match="KAFKA_PARTITIONS"):
        validate_consumer_counts(too_many)
    validate_consumer_counts(settings.model_copy(update={"kafka_consumers": 1}))


async def test_supervisor_reports_every_actor_running(consumers_app: Any) -> None:
    async def all_running() -> bool:
        return (await supervisor_health(consumers_app))["healthy"]

    await wait_until(all_running, "all consumer actors running")
    report = await supervisor_health(consumers_app)
    names = set(report["actors"])
    assert {kafka_actor_name(i) for i in range(settings.kafka_consumers)} <= names
    assert {rabbit_actor_name(i) for i in range(settings.rabbit_consumers)} <= names
    for status in report["actors"].values():
        assert status["running"] and status["connected"], status
        assert {"batches", "last_error"} <= set(status)
    async with httpx.AsyncClient(timeout=30) as client:
        response = await client.get(f"{stack_config.serve_http_url}/consumers")
    assert response.status_code == 200, response.text
    assert set(response.json()["actors"]) == names


async def test_counts_exact_for_a_mixed_stream(
    consumers_app: Any, brokers: Brokers, stores: dict[str, TweetStore]
) -> None:
    tweets = make_tweets(2500, "mix")
    expected = expected_delta(tweets)
    assert len(expected["by_country_weather"]) == len(COUNTRIES) * len(settings.weathers)
    before = await snapshot(stores)
    await brokers.publish(tweets)
    await assert_counts_grow(stores, before, expected)
    # Everything read and committed/acked: the lag helpers agree.
    await wait_until(_is_drained, "kafka lag 0 and rabbit depth 0")


async def test_killing_consumers_mid_stream_keeps_counts_exact(
    consumers_app: Any, brokers: Brokers, stores: dict[str, TweetStore]
) -> None:
    tweets = make_tweets(6000, "kill")
    before = await snapshot(stores)
    chunks = [tweets[i : i + 500] for i in range(0, len(tweets), 500)]

    async def stream() -> None:
        for chunk in chunks:
            await brokers.publish(chunk)
            await asyncio.sleep(0.1)

    producing = asyncio.create_task(stream())
    await asyncio.sleep(0.5)
    for name in (kafka_actor_name(0), rabbit_actor_name(0)):
        ray.kill(ray.get_actor(name, namespace=NAMESPACE), no_restart=False)
    await producing
    await assert_counts_grow(stores, before, expected_delta(tweets), timeout=90)
    report = await supervisor_health(consumers_app)
    assert report["healthy"], report


async def test_version_1_messages_already_in_a_broker_still_count(
    consumers_app: Any, brokers: Brokers, stores: dict[str, TweetStore]
) -> None:
    tweets = make_tweets(300, "v1")
    before = await snapshot(stores)
    await brokers.publish_v1(tweets[:150])
    await brokers.publish(tweets[150:])
    await assert_counts_grow(stores, before, expected_delta(tweets))


async def test_redelivered_ids_do_not_count_twice(
    consumers_app: Any, brokers: Brokers, stores: dict[str, TweetStore]
) -> None:
    tweets = make_tweets(1000, "dup")
    before = await snapshot(stores)
    await brokers.publish(tweets)
    await assert_counts_grow(stores, before, expected_delta(tweets))

    # The same ids again, then new ids behind them (same keys, so same partitions):
    # once the new ones are counted the old ones have been read, and changed nothing.
    again = await snapshot(stores)
    fresh = make_tweets(321, "fresh")
    await brokers.publish(tweets)
    await brokers.publish(fresh + tweets[:100])
    await assert_counts_grow(stores, again, expected_delta(fresh))


async def _dead_letters_after(offsets: dict[TopicPartition, int], marker: bytes) -> list[Any]:
    reader = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap_servers, enable_auto_commit=False
    )
    await reader.start()
    found: list[Any] = []
    try:
        reader.assign(list(offsets))
        for tp, offset in offsets.items():
            reader.seek(tp, offset)
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline and len(found) < 2:
            for records in (await reader.getmany(timeout_ms=500)).values():
                found.extend(r for r in records if marker in (r.value or b""))
    finally:
        await reader.stop()
    return found


async def test_poison_goes_to_dead_letters_and_stream_flows(
    consumers_app: Any, brokers: Brokers, stores: dict[str, TweetStore]
) -> None:
    marker = uuid.uuid4().hex.encode()
    not_json = b"\xff\xfe not json " + marker
    bad_schema = json.dumps(
        {
            "id": f"poison-{marker.decode()}",
            "description": marker.decode(),
            "country": "XX",
            "weather": "Granizo",
            "accepted_at": datetime.now(UTC).isoformat(),
        }
    ).encode()

    # Where the Kafka dead letters will land, and a private copy of RabbitMQ's.
    probe = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap_servers)
    await probe.start()
    try:
        cluster = await probe._client.fetch_all_metadata()
        dlq_parts = cluster.partitions_for_topic(settings.kafka_dead_letter_topic) or {0}
        tps = [TopicPartition(settings.kafka_dead_letter_topic, p) for p in dlq_parts]
        dlq_offsets = await probe.end_offsets(tps)
    finally:
        await probe.stop()
    channel = await brokers.connection.channel()
    dlx = await channel.get_exchange(settings.rabbitmq_dead_letter_exchange)
    copy = await channel.declare_queue(exclusive=True, auto_delete=True)
    await copy.bind(dlx)

    good = make_tweets(400, "after-poison")
    # A chunk holding one bad tweet among good ones: the bad one alone is dead-lettered.
    neighbours = make_tweets(5, "poison-neighbours")
    items = [json.loads(t.to_json()) for t in neighbours]
    mixed = json.dumps({"v": 2, "tweets": [*items[:2], json.loads(bad_schema), *items[2:]]})
    before = await snapshot(stores)
    sent = await brokers.kafka_raw([(b"ES", not_json), (b"AQ", mixed.encode())])
    await brokers.rabbit_raw([("poison-1", not_json), ("poison-2", mixed.encode())])
    await brokers.publish(good)
    await assert_counts_grow(stores, before, expected_delta(good + neighbours))

    kafka_dead = await _dead_letters_after(dlq_offsets, marker)
    assert sorted(json.loads(r.value)["id"] if r.value != not_json else "" for r in kafka_dead) == [
        "",
        f"poison-{marker.decode()}",
    ]
    assert all("country" in dict(r.headers)[POISON_REASON_HEADER].decode() for r in kafka_dead
               if r.value != not_json)  # fmt: skip
    origin = {(m.partition, m.offset) for m in sent}
    for record in kafka_dead:
        headers = dict(record.headers)
        assert headers[POISON_REASON_HEADER], headers
        origin.discard(
            (int(headers[ORIGINAL_PARTITION_HEADER]), int(headers[ORIGINAL_OFFSET_HEADER]))
        )
    assert not origin, "dead letters must name their original partition and offset"

    rabbit_dead: list[aio_pika.abc.AbstractIncomingMessage] = []
    deadline = time.monotonic() + WAIT_S
    while len(rabbit_dead) < 2 and time.monotonic() < deadline:
        message = await copy.get(fail=False, no_ack=True)
        if message is None:
            await asyncio.sleep(0.2)
        elif marker in message.body:
            rabbit_dead.append(message)
    await channel.close()
    assert sorted(m.body for m in rabbit_dead if m.body == not_json) == [not_json]
    assert [json.loads(m.body) for m in rabbit_dead if m.body != not_json] == [
        json.loads(bad_schema)
    ]
    for message in rabbit_dead:
        assert message.headers.get(POISON_REASON_HEADER), message.headers


@pytest.mark.parametrize("store_name", ["redis", "valkey"])
async def test_store_outage_mid_stream_keeps_counts_exact(
    consumers_app: Any, brokers: Brokers, stores: dict[str, TweetStore], store_name: str
) -> None:
    from devstack import stack

    tweets = make_tweets(4000, f"outage-{store_name}")
    before = await snapshot(stores)
    chunks = [tweets[i : i + 250] for i in range(0, len(tweets), 250)]

    async def stream() -> None:
        for chunk in chunks:
            await brokers.publish(chunk)
            await asyncio.sleep(0.25)

    producing = asyncio.create_task(stream())
    await asyncio.sleep(1.0)
    await asyncio.to_thread(stack.stop, store_name)
    try:
        await asyncio.sleep(4.0)
        report = await supervisor_health(consumers_app)
        assert all(s["running"] for s in report["actors"].values()), report
    finally:
        await asyncio.to_thread(stack.start, store_name)
    await producing
    await assert_counts_grow(stores, before, expected_delta(tweets), timeout=90)


async def test_latest_list_is_capped(stores: dict[str, TweetStore]) -> None:
    for store in stores.values():
        length = await store.latest_length()
        assert 0 < length <= settings.latest_tweets_length
        latest = (await store.read_stats(latest=3))["latest"]
        assert latest and {"id", "country", "weather"} <= set(latest[0])


@pytest.mark.slow
async def test_burst_drains_quickly(
    consumers_app: Any, brokers: Brokers, stores: dict[str, TweetStore]
) -> None:
    """20k tweets on each broker: report the drain time (throughput) and the final lag."""
    tweets = make_tweets(20_000, "burst")
    before = await snapshot(stores)
    started = time.monotonic()
    await brokers.publish(tweets)
    published = time.monotonic() - started
    drained_at: dict[str, float] = {}
    for name, store in stores.items():

        async def done(store: TweetStore = store, name: str = name) -> bool:
            return (await store.read_stats())["total"] - before[name]["total"] >= len(tweets)

        await wait_until(done, f"{name} drained the burst", timeout=120)
        drained_at[name] = time.monotonic() - started
    lag, depth = await kafka_lag(settings), await rabbit_depth(settings)
    print(
        f"\nburst of {len(tweets)}: published in {published:.1f}s; "
        + ", ".join(
            f"{n} drained in {t:.1f}s ({len(tweets) / t:.0f}/s)" for n, t in drained_at.items()
        )
        + f"; kafka lag {lag}, rabbit depth {depth}"
    )
    await assert_counts_grow(stores, before, expected_delta(tweets))


async def test_hostile_messages_are_dead_lettered_and_good_tweets_still_count(
    consumers_app: Any, brokers: Brokers, stores: dict[str, TweetStore]
) -> None:
    """Values a dead-letter publish cannot carry as they are (an id longer than an AMQP
    shortstr, lone surrogates in the id and in a field name, odd and huge AMQP header
    values): each message is dead-lettered, and nothing stops the good tweets."""
    marker = uuid.uuid4().hex
    hostile = (
        '{"v":2,"tweets":[{"id":"' + "h" * 300 + marker + '\\ud800","description":"x",'
        '"country":"GT","weather":"Soleado","\\udfff":1}]}'
    ).encode()
    odd_headers = {
        "huge": "y" * 60_000,
        "when": datetime.now(UTC).replace(microsecond=0),
        "nested": {"list": [1, "\u00e9", 2.5]},
    }
    good = make_tweets(300, "after-hostile")
    before = await snapshot(stores)
    await brokers.kafka_raw([(b"\xff" * 2000, hostile)])
    assert brokers.exchange
    await brokers.exchange.publish(
        aio_pika.Message(body=hostile, headers=odd_headers, message_id="m" * 255),  # type: ignore[arg-type]
        routing_key="",
    )
    await brokers.publish(good)
    await assert_counts_grow(stores, before, expected_delta(good))
    await wait_until(_is_drained, "kafka lag 0 and rabbit depth 0")
    report = await supervisor_health(consumers_app)
    for status in report["actors"].values():
        assert status["running"] and not status["retrying"], status
        assert status["parked_dead_letters"] == 0, status


async def _consumer_report() -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=30) as client:
        response = await client.get(f"{stack_config.serve_http_url}/consumers")
    return response.json()


async def _all_on_version(changed_from: str | None = None) -> bool:
    report = await _consumer_report()
    version = report.get("config_version")
    return (
        version is not None
        and version != changed_from
        and report["healthy"]
        and all(s.get("config_version") == version and s["connected"]
                for s in report["actors"].values())
    )  # fmt: skip


async def test_a_redeploy_with_other_settings_replaces_the_consumers(
    consumers_app: Any, brokers: Brokers, stores: dict[str, TweetStore], tmp_path: Any
) -> None:
    """Consumers run what was deployed: other ``args:`` reach the actors (replaced, no lost
    progress: every tweet published across both redeploys counts exactly once)."""
    import yaml

    from devstack import stack

    await wait_until(_all_on_version, "consumers on the deployed version", timeout=90)
    deployed = (await _consumer_report())["config_version"]
    ray_stack = stack.get("ray")
    config = yaml.safe_load(ray_stack.deployed_config().read_text())  # type: ignore[attr-defined]
    [app] = [a for a in config["applications"] if a["name"] == "consumers"]
    app["args"] = {**(app.get("args") or {}), "consumer_batch_size": 77}
    variant = tmp_path / "consumers-variant.yaml"
    variant.write_text(yaml.safe_dump(config, sort_keys=False))

    tweets = make_tweets(3000, "redeploy")
    before = await snapshot(stores)

    async def stream() -> None:
        for i in range(0, len(tweets), 100):
            await brokers.publish(tweets[i : i + 100])
            await asyncio.sleep(0.2)

    producing = asyncio.create_task(stream())
    try:
        await asyncio.to_thread(ray_stack.deploy, variant)  # type: ignore[attr-defined]
        await wait_until(
            lambda: _all_on_version(changed_from=deployed), "actors replaced", timeout=120
        )
        report = await _consumer_report()
        replaced = {r["name"]: r for r in report["replacements"]}
        assert set(replaced) == set(report["actors"]), report["replacements"]
        assert all(r["connected"] and r["pause_s"] < 30 for r in replaced.values()), replaced
        print("\nreplacement pauses:", {n: r["pause_s"] for n, r in replaced.items()})
    finally:
        await asyncio.to_thread(ray_stack.deploy)  # type: ignore[attr-defined]
        await producing
    await wait_until(_all_on_version, "consumers back on the deployed version", timeout=120)
    assert (await _consumer_report())["config_version"] == deployed
    await assert_counts_grow(stores, before, expected_delta(tweets), timeout=90)


async def test_kafka_records_deleted_before_they_were_read_are_found_not_skipped_silently(
    brokers: Brokers,
) -> None:
    """The real broker, on a topic and group of the test's own: the group committed offset 2,
    then records before 8 were deleted (what retention does during a long store outage).
    The source reports offsets 2-7 as skipped and goes on from 8 (aiokafka alone would reset
    to the earliest offset and say nothing)."""
    from aiokafka.admin import AIOKafkaAdminClient, RecordsToDelete

    from serve_app.brokers.base import Skipped
    from serve_app.brokers.kafka import open_kafka_source

    topic = f"test-skip-{uuid.uuid4().hex[:8]}"
    own = settings.model_copy(
        update={"kafka_topic": topic, "kafka_consumer_group": f"{topic}-group",
                "kafka_partitions": 1}
    )  # fmt: skip
    tp = TopicPartition(topic, 0)
    await ensure_kafka_topics(own)
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers)
    await admin.start()
    try:
        assert brokers.producer
        for i in range(10):
            await (await brokers.producer.send(topic, value=b"x%d" % i, partition=0))
        committer = AIOKafkaConsumer(
            bootstrap_servers=settings.kafka_bootstrap_servers,
            group_id=own.kafka_consumer_group,
            enable_auto_commit=False,
        )
        await committer.start()
        try:
            committer.assign([tp])
            await committer.commit({tp: 2})
        finally:
            await committer.stop()
        await admin.delete_records({tp: RecordsToDelete(before_offset=8)})

        skipped: list[Skipped] = []
        offsets: list[int] = []
        async with open_kafka_source(own, "skip-test", lambda exc, what: None) as source:
            deadline = time.monotonic() + WAIT_S
            while len(offsets) < 2 and time.monotonic() < deadline:
                offsets += [d.origin.offset for d in await source.fetch()]
                skipped += source.take_skipped()
        assert skipped == [Skipped(f"{topic}/0", 2, 7)]
        assert offsets == [8, 9]
    finally:
        await admin.delete_topics([topic])
        await admin.close()


async def test_dead_letters_that_cannot_be_published_are_parked_and_sent_later(
    consumers_app: Any, brokers: Brokers, stores: dict[str, TweetStore]
) -> None:
    """The dead-letter exchange is gone (every dead-letter publish fails, as under a
    broker alarm): the good tweets still count and the batch is acked, the poison is parked
    in Valkey; once the exchange is back, the parked letter reaches the dead-letter queue."""
    from serve_app.brokers.rabbitmq import RabbitProbe

    marker = uuid.uuid4().hex
    poison = b"\xff parked poison " + marker.encode()
    good = make_tweets(200, "parked")
    assert brokers.connection
    channel = await brokers.connection.channel()
    probe = RabbitProbe(settings)
    try:
        dead_before = (await probe.read())["dead_letters"]
        await channel.exchange_delete(settings.rabbitmq_dead_letter_exchange)
        before = await snapshot(stores)
        await brokers.rabbit_raw([("parked-poison", poison)])
        await brokers.publish(good)
        await assert_counts_grow(stores, before, expected_delta(good))

        async def parked() -> bool:
            return (await stores["valkey"].read_stats())["parked_dead_letters"] > 0

        await wait_until(parked, "the poison parked in Valkey")
    finally:
        await declare_rabbit_topology(channel, settings)
        await channel.close()

    async def published() -> bool:
        return (await stores["valkey"].read_stats())["parked_dead_letters"] == 0

    await wait_until(published, "parked dead letters published", timeout=WAIT_S)
    assert (await probe.read())["dead_letters"] >= dead_before + 1
    await probe.close()
