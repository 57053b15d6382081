"""Settings of the local stack only (`make up`): ports and names the application never uses.

Environment variables carry the ``DEVSTACK_`` prefix (``DEVSTACK_RABBITMQ_EPMD_PORT=4371``),
so they can never be mistaken for the application's own settings or Ray's ``RAY_*``
variables. Broker and store addresses stay in :mod:`serve_app.settings`: the stack binds
what the application connects to.
"""

from __future__ import annotations

import functools
import os
import secrets
from pathlib import Path
from typing import Literal

import yaml
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from serve_app.settings import Settings

LOCALHOST = "127.0.0.1"
REPO = Path(__file__).resolve().parents[1]
SERVE_CONFIG = REPO / "serve_config.yaml"
RAY_ENV = REPO / "ray-env.yaml"
"""The Ray/Serve environment of every Ray node: read when a node starts, so it is not part of
the Serve config (which ``serve deploy`` takes as it is)."""


class StackConfig(BaseSettings):
    """Defaults avoid the well-known ports of system services (4369 epmd, 6379 Redis...)
    wherever the application does not pin them."""

    model_config = SettingsConfigDict(env_prefix="DEVSTACK_", case_sensitive=False)

    dir: str = ""  # where servers keep data/config/logs/pids; "" = <repo>/.devstack
    kafka_controller_port: int = 9093
    rabbitmq_node_name: str = "weather@localhost"
    rabbitmq_management_port: int = 15672
    rabbitmq_dist_port: int = 25672
    # Our own epmd, never the system's 4369: installing Debian's rabbitmq-server leaves an
    # `epmd -daemon` there, and other Erlang services on the machine may use it.
    rabbitmq_epmd_port: int = 4370
    ray_gcs_port: int = 6385  # 6379 is Redis
    ray_dashboard_port: int = 8265
    ray_num_cpus: int = Field(default=4, ge=1)
    # `make up NODES=3`: a head plus two worker nodes on this machine (the head then takes
    # no replicas, as in Kubernetes); each worker node has these logical CPUs.
    ray_nodes: int = Field(default=1, ge=1)
    ray_worker_num_cpus: int = Field(default=4, ge=1)
    ray_worker_node_manager_port: int = 6390  # worker i: this + i (identifies its raylet)
    ray_worker_agent_port: int = 52365  # dashboard agent of worker i: this + i (head: this)
    serve_http_port: int = 8000  # as in serve_config.yaml
    serve_grpc_port: int = 9000
    # `make up TOPOLOGY=replicated` (docs/local-stack.md): "" = the topology the stack was
    # last started with (kept in <dir>/topology), else "single".
    topology: Literal["", "single", "replicated"] = ""
    # The replicated topology's members, one port per member, in member order.
    kafka_ports: str = "9092,9094,9096"
    kafka_controller_ports: str = "9093,9095,9097"
    rabbitmq_ports: str = "5672,5682,5692"
    rabbitmq_management_ports: str = "15672,15682,15692"
    rabbitmq_dist_ports: str = "25672,25682,25692"
    redis_ports: str = "6379,6389"  # primary, replica
    valkey_ports: str = "6380,6390"
    redis_sentinel_ports: str = "26379,26380,26381"
    valkey_sentinel_ports: str = "26382,26383,26384"

    def members(self, name: str) -> list[int]:
        """The ports of the replicated topology's ``name`` members (``kafka``, ``redis``...)."""
        return [int(port) for port in getattr(self, f"{name}_ports").split(",")]

    @property
    def state_dir(self) -> Path:
        """Where every server of the stack keeps its files (git-ignored)."""
        return Path(self.dir).resolve() if self.dir else REPO / ".devstack"

    @property
    def serve_http_url(self) -> str:
        return f"http://{LOCALHOST}:{self.serve_http_port}"

    @property
    def serve_grpc_target(self) -> str:
        return f"{LOCALHOST}:{self.serve_grpc_port}"

    @property
    def ray_dashboard_url(self) -> str:
        return f"http://{LOCALHOST}:{self.ray_dashboard_port}"


stack_config = StackConfig()


def topology() -> str:
    """The topology the stack runs (or starts): ``DEVSTACK_TOPOLOGY`` when given, else the
    one it was last started with, else ``single``."""
    if stack_config.topology:
        return stack_config.topology
    try:
        return (stack_config.state_dir / "topology").read_text().strip() or "single"
    except OSError:
        return "single"


def topology_settings(name: str | None = None) -> dict[str, str]:
    """What the application's settings are on ``name`` (default: the stack's topology),
    as environment variables: the member lists of the replicated topology, nothing on the
    single one (the defaults are its addresses)."""
    if (name or topology()) != "replicated":
        return {}

    def listed(ports: list[int]) -> str:
        return ",".join(f"{LOCALHOST}:{port}" for port in ports)

    config = stack_config
    return {
        "KAFKA_BOOTSTRAP_SERVERS": listed(config.members("kafka")),
        "KAFKA_REPLICATION_FACTOR": "3",
        "KAFKA_MIN_INSYNC_REPLICAS": "2",
        "RABBITMQ_PORT": str(config.members("rabbitmq")[0]),
        "RABBITMQ_ADDRESSES": listed(config.members("rabbitmq")),
        "RABBITMQ_MANAGEMENT_URL": ",".join(
            f"http://{LOCALHOST}:{port}" for port in config.members("rabbitmq_management")
        ),
        "REDIS_PORT": str(config.members("redis")[0]),
        "REDIS_SENTINELS": listed(config.members("redis_sentinel")),
        "VALKEY_PORT": str(config.members("valkey")[0]),
        "VALKEY_SENTINELS": listed(config.members("valkey_sentinel")),
        "STORE_WAIT_REPLICAS": "1",
    }


FINGERPRINT_KEY_BYTES = 32


def local_fingerprint_key() -> str:
    """The local stack's ``fingerprint_key``: made once per checkout (random, like Ray's
    token) in ``<state_dir>/secrets/fingerprint-key``, readable by its owner only, so no
    tracked file holds it. Created atomically: every process reads the same key."""
    path = stack_config.state_dir / "secrets" / "fingerprint-key"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        draft = path.with_name(f".fingerprint-key.{os.getpid()}")
        fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_hex(FINGERPRINT_KEY_BYTES))
        try:
            os.link(draft, path)  # fails if another process made it first: keep theirs
        except FileExistsError:
            pass
        finally:
            draft.unlink()
    return path.read_text().strip()


def local_secrets() -> dict[str, str]:
    """Settings the local stack makes secret values for (unless the environment gives them)."""
    if "FINGERPRINT_KEY" in {name.upper() for name in os.environ}:
        return {}
    return {"fingerprint_key": local_fingerprint_key()}


@functools.cache
def app_settings() -> Settings:
    """The application's settings as the tooling sees them (environment and defaults, and
    the replicated topology's member lists when it runs): the stack binds what the
    application connects to. Built on first use, never at import."""
    overrides = {k: v for k, v in topology_settings().items() if k not in os.environ}
    members = {k.lower(): v for k, v in overrides.items()}
    return Settings(**local_secrets(), **members)  # type: ignore[arg-type]


def stack_env() -> dict[str, str]:
    """Our environment plus the state directory, which marks every process of the stack
    (what tests/stack/test_exposure.py looks for), and the topology's settings (so Ray's
    processes, and the Serve applications in them, connect to every member)."""
    return {
        **topology_settings(),
        **os.environ,
        "DEVSTACK_DIR": str(stack_config.state_dir),
    }


def ray_env_settings(path: Path = RAY_ENV) -> dict[str, str]:
    """The Ray/Serve environment of ray-env.yaml: one source for the local Ray and the
    RayService's containers (kuberay/render.py). Values must be quoted strings, as an
    environment holds them: YAML would read ``0.5`` or ``yes`` as something else."""
    settings = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(settings, dict):
        kind = type(settings).__name__
        raise ValueError(f'{path.name}: expected NAME: "value" lines, got a {kind}')
    wrong = sorted(str(name) for name, value in settings.items() if not isinstance(value, str))
    if wrong:
        raise ValueError(f"{path.name}: quote the value of {', '.join(wrong)} (a string)")
    return dict(settings)
