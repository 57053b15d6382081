"""The replicated topology's members (`make up TOPOLOGY=replicated`): 3 Kafka brokers, 3
RabbitMQ nodes, and Redis and Valkey each as a primary, a replica and 3 Sentinels.

Every member is a local process of its own (its directory, log, pid file and ports), so a
chaos round can take one away like a lost machine. Ports come from ``StackConfig``
(``kafka_ports``, ``rabbitmq_ports``...); the application learns the member lists from
:func:`devstack.config.topology_settings`.
"""

from __future__ import annotations

import functools
import os
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path

from devstack.config import LOCALHOST, app_settings, stack_config
from devstack.servers.base import Server, StackError, run_async
from devstack.servers.kafka import Kafka, _cluster_id
from devstack.servers.rabbitmq import Epmd, RabbitMQ, rabbitmq_conf
from devstack.servers.resp import Redis, Valkey, _RespServer

KAFKA_REPLICATED = (
    # every partition on all three brokers; a write confirmed (acks=all) by two at least;
    # a replica that missed writes never becomes leader
    "offsets.topic.replication.factor=3",
    "offsets.topic.num.partitions=4",
    "transaction.state.log.replication.factor=3",
    "transaction.state.log.min.isr=2",
    "share.coordinator.state.topic.replication.factor=3",
    "share.coordinator.state.topic.min.isr=2",
    "min.insync.replicas=2",
    "default.replication.factor=3",
    "unclean.leader.election.enable=false",
    "group.initial.rebalance.delay.ms=0",
    "auto.create.topics.enable=false",
)
SENTINEL_DOWN_AFTER_MS = 3000
"""How long a primary may not answer before the Sentinels agree it is down and fail over."""
STORE_SIDE = "127.0.0.2"
"""The address the store members and Sentinels connect out from (``bind-source-addr``);
the application connects from 127.0.0.1. Both are loopback, but a partition rule can tell
the two sides apart (loadtest/chaos/network.py): a primary cut off with its consumers.
They still listen on 127.0.0.1 only, and announce that address."""
STORE_SIDE_LINES = (
    f"bind-source-addr {STORE_SIDE}",
    # protected mode counts 127.0.0.2 as remote and, without a password, refuses it
    "protected-mode no",
)
COOKIE = "weather-devstack-replicated-cookie"
"""The Erlang cookie the RabbitMQ nodes share (loopback-only distribution)."""


def member_name(kind: str, index: int) -> str:
    return f"{kind}-{index}"


# ------------------------------------------------------------------------------- Kafka
class KafkaBroker(Kafka):
    """Broker and KRaft controller ``index`` (1..3) of a three-voter quorum."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.name = member_name("kafka", index)
        super().__init__()

    @property
    def libs(self) -> Path:
        return stack_config.state_dir / "kafka" / "libs"  # the single broker's jars

    @property
    def port(self) -> int:
        return stack_config.members("kafka")[self.index - 1]

    @property
    def controller_port(self) -> int:
        return stack_config.members("kafka_controller")[self.index - 1]

    def ports(self) -> list[int]:
        return [self.port, self.controller_port]

    def fetch(self) -> bool:
        return Kafka().fetch()

    def properties(self) -> str:
        voters = ",".join(
            f"{i}@{LOCALHOST}:{port}"
            for i, port in enumerate(stack_config.members("kafka_controller"), start=1)
        )
        bound = (
            f"PLAINTEXT://{LOCALHOST}:{self.port},CONTROLLER://{LOCALHOST}:{self.controller_port}"
        )
        return "\n".join(
            [
                "process.roles=broker,controller",
                f"node.id={self.index}",
                f"listeners={bound}",
                f"advertised.listeners={bound}",
                "controller.listener.names=CONTROLLER",
                "inter.broker.listener.name=PLAINTEXT",
                "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
                f"controller.quorum.voters={voters}",
                f"log.dirs={self.dir / 'data'}",
                f"num.partitions={app_settings().kafka_partitions}",
                *KAFKA_REPLICATED,
                "log.retention.hours=24",
                "log.retention.bytes=1073741824",
                "log.segment.bytes=134217728",
                "log.roll.hours=12",
                "log.retention.check.interval.ms=300000",
                "",
            ]
        )

    def format_storage(self, props: Path) -> None:
        """Format with the cluster id every broker shares (a static voter set: no
        ``--standalone``); a broker whose directory was wiped is formatted again, empty."""
        cid_file = stack_config.state_dir / "kafka-cluster.id"
        if not cid_file.exists():
            cid_file.write_text(_cluster_id())
        cmd = [*self._java(), "kafka.tools.StorageTool", "format", "--ignore-formatted",
               "-t", cid_file.read_text().strip(), "-c", str(props)]  # fmt: skip
        with open(self.log, "ab") as log:
            result = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT)
        if result.returncode != 0:
            raise StackError(self.failure("storage format failed"))

    def probe(self) -> bool:
        from aiokafka import AIOKafkaClient

        async def metadata() -> bool:
            client = AIOKafkaClient(
                bootstrap_servers=f"{LOCALHOST}:{self.port}", request_timeout_ms=3000
            )
            try:
                await client.bootstrap()
                # ready once it sees the whole quorum's brokers (or all that are up)
                return self.index in {b.nodeId for b in client.cluster.brokers()}
            finally:
                await client.close()

        return bool(run_async(metadata))


# ---------------------------------------------------------------------------- RabbitMQ
class SharedEpmd(Epmd):
    """The one epmd every RabbitMQ node of the replicated topology registers with."""


class RabbitNode(RabbitMQ):
    """Node ``index`` (1..3) of a RabbitMQ cluster formed from a fixed list of nodes (the
    first starts alone, the others join it); the quorum queues get a member on each."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.name = member_name("rabbitmq", index)
        super().__init__()

    @property
    def node(self) -> str:
        return f"weather-{self.index}@localhost"

    @property
    def amqp_port(self) -> int:
        return stack_config.members("rabbitmq")[self.index - 1]

    def ports(self) -> list[int]:
        return [
            self.amqp_port,
            stack_config.members("rabbitmq_management")[self.index - 1],
            stack_config.members("rabbitmq_dist")[self.index - 1],
        ]

    def address(self) -> str:
        return f"amqp://{LOCALHOST}:{self.amqp_port} ({self.node})"

    def endpoints(self) -> list[str]:
        return [f"{self.name}: amqp://{LOCALHOST}:{self.amqp_port} node {self.node}"]

    def env(self) -> dict[str, str]:
        env = super().env()
        env.update(
            RABBITMQ_NODENAME=self.node,
            RABBITMQ_DIST_PORT=str(self.ports()[2]),
        )
        return env

    def blank(self) -> bool:
        """Whether this node has never run (or lost its data): it must join a cluster."""
        mnesia = self.dir / "mnesia"
        return not mnesia.exists() or not any(mnesia.iterdir())

    def launch(self) -> bool:
        if self.index > 1 and self.blank() and not self.is_running():
            # a blank node joins the first one (no race of three blank nodes each forming
            # a cluster of their own). Nodes that were clustered start together instead:
            # each waits at boot for the one that stopped last, whichever that is.
            first = RabbitNode(1)
            if first.is_running():
                first.wait_ready()
        return super().launch()

    def prepare(self) -> None:
        super().prepare()
        cookie = self.dir / "home" / ".erlang.cookie"
        if not cookie.exists():
            cookie.write_text(COOKIE)
        os.chmod(cookie, 0o400)
        (self.dir / "rabbitmq.conf").write_text(self.conf())

    def conf(self) -> str:
        management = stack_config.members("rabbitmq_management")[self.index - 1]
        single = rabbitmq_conf()
        settings = app_settings()
        lines = [
            line
            for line in single.splitlines()
            if not line.startswith(("listeners.tcp.1", "management.tcp.port"))
        ]
        nodes = [
            f"cluster_formation.classic_config.nodes.{i} = weather-{i}@localhost"
            for i in range(1, len(stack_config.members("rabbitmq")) + 1)
        ]
        return "\n".join(
            [
                f"listeners.tcp.1 = {settings.rabbitmq_host}:{self.amqp_port}",
                f"management.tcp.port = {management}",
                "cluster_formation.peer_discovery_backend = classic_config",
                *nodes,
                *lines,
                "",
            ]
        )

    def probe(self) -> bool:
        import aio_pika

        url = app_settings().rabbitmq_urls[self.index - 1]

        async def connect() -> bool:
            conn = await aio_pika.connect(url, timeout=3)
            await conn.close()
            return True

        return bool(run_async(connect))

    def stop(self) -> bool:
        return Server.stop(self)  # the shared epmd is a member of its own


# ------------------------------------------------------------------- Redis and Valkey
class _ReplicatedResp(_RespServer):
    """Member ``index`` of a store: 1 starts as the primary, 2 as its replica. After a
    failover the Sentinels rewrite both configs (CONFIG REWRITE), so a config is written
    only when there is none: a restarted member keeps the role it was given."""

    store = ""

    def __init__(self, index: int) -> None:
        self.index = index
        self.name = member_name(self.store, index)
        Server.__init__(self)  # settings are the store's (redis_*), not the member's
        settings = app_settings()
        self.host = getattr(settings, f"{self.store}_host")
        self.port = stack_config.members(self.store)[index - 1]
        self.password = getattr(settings, f"{self.store}_password").get_secret_value()

    def prepare(self) -> None:
        conf = self.dir / f"{self.name}.conf"
        if conf.exists():
            (self.dir / "data").mkdir(parents=True, exist_ok=True)
            return
        super().prepare()
        lines = conf.read_text()
        # a consumer's WAITAOF for a replica ends on the primary's next wake-up (the
        # replica's first answer often predates its fsync): every 10 ms, not Redis's 100
        # (measured on a primary + replica: 1,200-1,500 -> 15,600 tweets/s; idle 0.005 cores)
        extra = ["hz 100", *STORE_SIDE_LINES, f"replica-announce-ip {self.host}"]
        if self.password:
            extra.append(f"masterauth {self.password}")
        if self.index > 1:
            primary = stack_config.members(self.store)[0]
            extra.append(f"replicaof {self.host} {primary}")
        conf.write_text(lines + "".join(f"{line}\n" for line in extra))

    def role(self) -> str:
        """``master`` or ``slave`` as the member says (``?`` when it does not answer)."""
        try:
            with socket.create_connection((self.host, self.port), timeout=2) as sock:
                if self.password:
                    sock.sendall(f"AUTH {self.password}\r\n".encode())
                    sock.recv(64)
                sock.sendall(b"ROLE\r\n")
                reply = sock.recv(256).decode(errors="replace").split("\r\n")
        except OSError:
            return "?"
        return reply[2] if len(reply) > 2 else "?"

    def status(self) -> str:
        line = super().status()
        return f"{line}  {self.role() if self.pid() else ''}".rstrip()


class RedisMember(_ReplicatedResp):
    store = "redis"
    binary = Redis.binary


class ValkeyMember(_ReplicatedResp):
    store = "valkey"
    binary = Valkey.binary


class _Sentinel(Server):
    """Sentinel ``index`` (1..3) watching one store's primary; two agree on a failover."""

    store = ""
    start_timeout = 20.0

    def __init__(self, index: int) -> None:
        self.index = index
        self.name = member_name(f"{self.store}-sentinel", index)
        super().__init__()
        self.port = stack_config.members(f"{self.store}_sentinel")[index - 1]

    def ports(self) -> list[int]:
        return [self.port]

    def master_name(self) -> str:
        return getattr(app_settings(), f"{self.store}_sentinel_master")

    def prepare(self) -> None:
        """The Sentinel rewrites its config with what it learnt (the current primary):
        written only when there is none."""
        conf = self.dir / "sentinel.conf"
        if conf.exists():
            return
        primary = stack_config.members(self.store)[0]
        password = getattr(app_settings(), f"{self.store}_password").get_secret_value()
        name = self.master_name()
        lines = [
            f"bind {LOCALHOST}",
            f"port {self.port}",
            *STORE_SIDE_LINES,
            f"sentinel announce-ip {LOCALHOST}",
            "daemonize no",
            'logfile ""',
            f"dir {self.dir}",
            f"sentinel monitor {name} {LOCALHOST} {primary} 2",
            f"sentinel down-after-milliseconds {name} {SENTINEL_DOWN_AFTER_MS}",
            f"sentinel failover-timeout {name} 20000",
            f"sentinel parallel-syncs {name} 1",
        ]
        if password:
            lines.append(f"sentinel auth-pass {name} {password}")
        conf.write_text("\n".join(lines) + "\n")

    def binary(self) -> str:
        raise NotImplementedError

    def command(self) -> list[str]:
        return [self.binary(), str(self.dir / "sentinel.conf"), "--sentinel"]

    def primary(self) -> str:
        """host:port of the primary this Sentinel names (``?`` when it does not answer)."""
        try:
            with socket.create_connection((LOCALHOST, self.port), timeout=2) as sock:
                sock.sendall(f"SENTINEL get-master-addr-by-name {self.master_name()}\r\n".encode())
                reply = sock.recv(256).decode(errors="replace").split("\r\n")
        except OSError:
            return "?"
        return f"{reply[2]}:{reply[4]}" if len(reply) > 4 else "?"

    def probe(self) -> bool:
        return self.primary() != "?"

    def status(self) -> str:
        line = super().status()
        return f"{line}  primary {self.primary()}" if self.pid() else line


class RedisSentinel(_Sentinel):
    store = "redis"
    binary = Redis.binary


class ValkeySentinel(_Sentinel):
    store = "valkey"
    binary = Valkey.binary


def replicated_servers() -> dict[str, Callable[[], Server]]:
    """Every member of the replicated topology by name, in start order (epmd last: each
    RabbitMQ node starts it when it is not running, and it is stopped after them)."""
    members: dict[str, Callable[[], Server]] = {}
    kinds: list[tuple[str, Callable[[int], Server], int]] = [
        ("kafka", KafkaBroker, len(stack_config.members("kafka"))),
        ("rabbitmq", RabbitNode, len(stack_config.members("rabbitmq"))),
        ("redis", RedisMember, 2),
        ("redis-sentinel", RedisSentinel, 3),
        ("valkey", ValkeyMember, 2),
        ("valkey-sentinel", ValkeySentinel, 3),
    ]
    for kind, member, count in kinds:
        for index in range(1, count + 1):
            members[member_name(kind, index)] = functools.partial(member, index)
    members["epmd"] = SharedEpmd
    return members
