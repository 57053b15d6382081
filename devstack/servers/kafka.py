"""Kafka in KRaft mode (broker and controller in one JVM), from jars Maven fetches once."""

from __future__ import annotations

import base64
import shutil
import subprocess
import uuid
from pathlib import Path

from devstack.config import LOCALHOST, REPO, app_settings, stack_config
from devstack.servers.base import Server, StackError, run_async


def listeners(port: int) -> dict[str, str]:
    """Listener name -> host:port, each advertised as it binds. CONTROLLER is the KRaft
    quorum's; another client listener (e.g. on a bridge address) is one more entry."""
    return {
        "PLAINTEXT": f"{LOCALHOST}:{port}",
        "CONTROLLER": f"{LOCALHOST}:{stack_config.kafka_controller_port}",
    }


ONE_BROKER = (
    # what a cluster of one broker needs: no replication, topics created by the app only
    "offsets.topic.replication.factor=1",
    "offsets.topic.num.partitions=4",
    "transaction.state.log.replication.factor=1",
    "transaction.state.log.min.isr=1",
    "share.coordinator.state.topic.replication.factor=1",
    "share.coordinator.state.topic.min.isr=1",
    "min.insync.replicas=1",
    "default.replication.factor=1",
    "group.initial.rebalance.delay.ms=0",
    "auto.create.topics.enable=false",
)


def _cluster_id() -> str:
    """Same shape as Kafka's Uuid.randomUuid(): url-safe base64, no padding, no leading '-'."""
    for _ in range(1000):  # a leading '-' comes once in 64 draws
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not cid.startswith("-"):
            return cid
    raise StackError("no Kafka cluster id without a leading '-' in 1000 draws")


class Kafka(Server):
    name = "kafka"
    heap = "512m"

    @property
    def libs(self) -> Path:
        return self.dir / "libs"

    @property
    def port(self) -> int:
        return int(app_settings().kafka_bootstrap_servers.split(",")[0].rsplit(":", 1)[1])

    def ports(self) -> list[int]:
        return [int(a.rsplit(":", 1)[1]) for a in listeners(self.port).values()]

    def fetch(self) -> bool:
        """Download the broker jars with Maven (once; ~/.m2 caches them too)."""
        pom = REPO / "devstack" / "kafka" / "pom.xml"
        stamp = self.libs / ".fetched"
        if stamp.exists() and stamp.stat().st_mtime >= pom.stat().st_mtime:
            return False
        if self.libs.exists():
            shutil.rmtree(self.libs)
        self.libs.mkdir(parents=True)
        mvn = shutil.which("mvn")
        if not mvn:
            raise StackError("mvn not found: run `make install` (installs maven)")
        cmd = [mvn, "-q", "-B", "-f", str(pom), "dependency:copy-dependencies",
               f"-DoutputDirectory={self.libs}"]  # fmt: skip
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            raise StackError(f"mvn failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
        stamp.touch()
        return True

    def properties(self) -> str:
        named = listeners(self.port)
        bound = ",".join(f"{name}://{address}" for name, address in named.items())
        return "\n".join(
            [
                "process.roles=broker,controller",
                "node.id=1",
                f"listeners={bound}",
                f"advertised.listeners={bound}",
                "controller.listener.names=CONTROLLER",
                "inter.broker.listener.name=PLAINTEXT",
                "listener.security.protocol.map=" + ",".join(f"{name}:PLAINTEXT" for name in named),
                f"controller.quorum.bootstrap.servers={named['CONTROLLER']}",
                f"log.dirs={self.dir / 'data'}",
                f"num.partitions={app_settings().kafka_partitions}",
                *ONE_BROKER,
                # oldest record: 24 h + a 12 h segment roll + the 5 min check < the 48 h
                # dedup window (only closed segments are deleted; README "Dedup window")
                "log.retention.hours=24",
                "log.retention.bytes=1073741824",
                "log.segment.bytes=134217728",
                "log.roll.hours=12",
                "log.retention.check.interval.ms=300000",
                "",
            ]
        )

    def prepare(self) -> None:
        self.fetch()
        props = self.dir / "server.properties"
        props.write_text(self.properties())
        if not (self.dir / "data" / "meta.properties").exists():
            self.format_storage(props)

    def format_storage(self, props: Path) -> None:
        cid_file = self.dir / "cluster.id"
        if not cid_file.exists():
            cid_file.write_text(_cluster_id())
        cmd = [*self._java(), "kafka.tools.StorageTool", "format", "--standalone",
               "-t", cid_file.read_text().strip(), "-c", str(props)]  # fmt: skip
        with open(self.log, "ab") as log:
            result = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT)
        if result.returncode != 0:
            raise StackError(self.failure("storage format failed"))

    def _java(self) -> list[str]:
        java = shutil.which("java")
        if not java:
            raise StackError("java not found: run `make install` (installs a JRE)")
        log4j = REPO / "devstack" / "kafka" / "log4j2.xml"
        return [java, "-cp", f"{self.libs}/*", f"-Dlog4j2.configurationFile={log4j}",
                f"-Dkafka.logs.dir={self.dir}", "-Djava.awt.headless=true"]  # fmt: skip

    def command(self) -> list[str]:
        java = self._java()
        return [java[0], f"-Xmx{self.heap}", f"-Xms{self.heap}", "-XX:+UseG1GC",
                "-XX:MaxGCPauseMillis=20", *java[1:], "kafka.Kafka",
                str(self.dir / "server.properties")]  # fmt: skip

    def probe(self) -> bool:
        from aiokafka import AIOKafkaClient

        async def metadata() -> bool:
            client = AIOKafkaClient(
                bootstrap_servers=f"{LOCALHOST}:{self.port}", request_timeout_ms=3000
            )
            try:
                await client.bootstrap()  # a MetadataRequest round trip
                return bool(client.cluster.brokers())
            finally:
                await client.close()

        return bool(run_async(metadata))
