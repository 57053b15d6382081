"""Brokers and stores "running elsewhere" for the real pods (the k8s/external overlay): the
local stack's servers, reachable from pods on the bridge address only, for the test only.

* RabbitMQ, Redis and Valkey: a TCP forwarder each (socat) from ``NODE_IP:<port>`` to the
  stack's loopback server. Their clients connect to the address they are given, so that is
  enough.
* Kafka: a forwarder is not enough. A Kafka client bootstraps, then connects to the broker's
  *advertised* listener, which for the stack's broker is 127.0.0.1:9092 (a pod's own
  loopback). So the pods get a Kafka broker of their own: same jars and version as the
  stack's (``.devstack/kafka/libs``), KRaft, one node, its client listener on
  ``NODE_IP:21092`` (advertised as such) and its controller on loopback, data under
  ``.devstack/cluster/node/kafka``, started and stopped by pid. The test stops and restarts
  it to take the Gateway's /health down and up without touching the shared stack.
* The GCS Redis of the RayService's GCS fault tolerance: the node has no Redis image for
  kuberay/gcs-redis.yaml, so the host's redis-server stands in for it on
  ``NODE_IP:21390`` (AOF under ``.devstack/cluster/node/external/gcs-redis``), behind a
  Service without selector named as the manifest's.

Nothing here listens beyond the bridge address or loopback.
"""

from __future__ import annotations

import base64
import os
import shutil
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from devstack.cluster import build
from devstack.cluster.node import NODE_IP, Node
from devstack.config import stack_config
from devstack.servers.kafka import ONE_BROKER

REPO = build.ROOT
# Service name -> (port in the cluster, port on NODE_IP). Not the stack's own port numbers,
# so a stack restart never finds one of its ports taken.
PORTS = {
    "kafka": (9092, 21092),
    "rabbitmq": (5672, 21672),
    "rabbitmq-management": (15672, 21673),
    "redis": (6379, 21379),
    "valkey": (6379, 21380),
}
KAFKA_CONTROLLER_PORT = 21093
GCS_REDIS_PORT = 21390
KAFKA_HEAP = "384m"
START_TIMEOUT_S = 120.0


def slice_port(name: str) -> tuple[str, str]:
    """The Service of k8s/external/external.yaml that the forwarder ``name`` of PORTS stands
    behind, and the name of its port there (``rabbitmq-management``: ``rabbitmq``'s
    ``management``)."""
    service, _, port = name.partition("-")
    return service, port or service


def accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


@dataclass
class External:
    """The forwarders and the pods' Kafka, as processes of the node's home."""

    node: Node

    @property
    def home(self) -> Path:
        return self.node.home / "external"

    # -- forwarders -------------------------------------------------------------------------
    def start_forwarders(self, targets: dict[str, int]) -> None:
        """socat NODE_IP:<bridge port> -> 127.0.0.1:<stack port>, one per service."""
        for name, target in targets.items():
            bridge_port = PORTS[name][1]
            self.node.allow_host_port(bridge_port)
            listen = f"TCP-LISTEN:{bridge_port},bind={NODE_IP},fork,reuseaddr"
            self.node.start(f"forward-{name}", ["socat", listen, f"TCP:127.0.0.1:{target}"])
            self.node.wait(f"forward-{name}", lambda p=bridge_port: accepts(NODE_IP, p))

    # -- Kafka ------------------------------------------------------------------------------
    def kafka_properties(self) -> str:
        port = PORTS["kafka"][1]
        data = self.home / "kafka" / "data"
        lines = [
            "process.roles=broker,controller",
            "node.id=1",
            f"listeners=PLAINTEXT://{NODE_IP}:{port},CONTROLLER://127.0.0.1:{KAFKA_CONTROLLER_PORT}",
            f"advertised.listeners=PLAINTEXT://{NODE_IP}:{port}",
            "controller.listener.names=CONTROLLER",
            "inter.broker.listener.name=PLAINTEXT",
            "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            f"controller.quorum.bootstrap.servers=127.0.0.1:{KAFKA_CONTROLLER_PORT}",
            f"log.dirs={data}",
            *ONE_BROKER,
        ]
        return "\n".join(lines) + "\n"

    def java(self) -> list[str]:
        """The stack's Kafka jars and logging config (read only)."""
        libs = stack_config.state_dir / "kafka" / "libs"
        java = shutil.which("java")
        if not java or not libs.exists():
            raise FileNotFoundError("Kafka jars or java missing: run `make up` once")
        log4j = REPO / "devstack" / "kafka" / "log4j2.xml"
        return [java, "-cp", f"{libs}/*", f"-Dlog4j2.configurationFile={log4j}",
                f"-Dkafka.logs.dir={self.home / 'kafka'}", "-Djava.awt.headless=true"]  # fmt: skip

    def prepare_kafka(self) -> Path:
        """Properties, and storage formatted once (a restart keeps topics and offsets)."""
        directory = self.home / "kafka"
        directory.mkdir(parents=True, exist_ok=True)
        props = directory / "server.properties"
        props.write_text(self.kafka_properties())
        if not (directory / "data" / "meta.properties").exists():
            cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
            cluster_id = "A" + cluster_id[1:]  # never a leading '-'
            argv = [*self.java(), "kafka.tools.StorageTool", "format", "--standalone"]
            argv += ["-t", cluster_id, "-c", str(props)]
            result = subprocess.run(argv, capture_output=True, text=True, timeout=180)
            if result.returncode != 0:
                raise RuntimeError(f"Kafka storage format failed:\n{result.stdout}{result.stderr}")
        return props

    def start_kafka(self) -> None:
        """The pods' broker, answering on NODE_IP:21092 (waits for a metadata answer)."""
        port = PORTS["kafka"][1]
        self.node.allow_host_port(port)
        props = self.prepare_kafka()
        java = self.java()
        argv = [java[0], f"-Xmx{KAFKA_HEAP}", f"-Xms{KAFKA_HEAP}", "-XX:+UseG1GC", *java[1:]]
        argv += ["kafka.Kafka", str(props)]
        self.node.start("kafka", argv)
        self.node.wait("kafka", lambda: accepts(NODE_IP, port), timeout=START_TIMEOUT_S)

    def stop_kafka(self) -> None:
        self.node.stop_process("kafka", timeout=30)

    def kafka_running(self) -> bool:
        return self.node.pid_file("kafka").live_pid() is not None

    # -- the GCS Redis ----------------------------------------------------------------------
    def start_gcs_redis(self, password: str) -> None:
        """The RayService's GCS Redis: the host's redis-server on NODE_IP:21390, its password
        in a config file only its owner reads (never on a command line), AOF on."""
        server = shutil.which("redis-server")
        if not server:
            raise FileNotFoundError("redis-server not installed: run `make apt`")
        directory = self.home / "gcs-redis"
        directory.mkdir(parents=True, exist_ok=True)
        lines = [f"bind {NODE_IP}", f"port {GCS_REDIS_PORT}", "appendonly yes", 'save ""']
        lines += [f"dir {directory}", *([f"requirepass {password}"] if password else [])]
        # Without a password Redis answers only loopback (protected mode), and the pods come
        # from the bridge: it listens on the bridge address only, which only pods reach.
        lines += [] if password else ["protected-mode no"]
        conf = directory / "redis.conf"
        conf.unlink(missing_ok=True)
        with os.fdopen(os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as f:
            f.write("\n".join(lines) + "\n")
        self.node.allow_host_port(GCS_REDIS_PORT)
        self.node.start("gcs-redis", [server, str(conf)])
        self.node.wait("gcs-redis", lambda: accepts(NODE_IP, GCS_REDIS_PORT))

    # -- all --------------------------------------------------------------------------------
    def up(self, targets: dict[str, int]) -> None:
        """Forwarders to ``targets`` (service -> stack port on loopback) and the pods' Kafka."""
        self.start_forwarders(targets)
        self.start_kafka()

    def down(self) -> None:
        for name in ("gcs-redis", "kafka", *(f"forward-{n}" for n in PORTS)):
            self.node.stop_process(name)


def wait_port_closed(host: str, port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and accepts(host, port):
        time.sleep(0.2)
