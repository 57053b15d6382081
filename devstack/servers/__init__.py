"""One module per local-stack server; every address, port and credential comes from settings.

``base`` holds what they share (pid file, log, ports, readiness), ``kafka``, ``rabbitmq``
(with its epmd), ``resp`` (Redis and Valkey) and ``ray`` one server each.
"""

from collections.abc import Callable

from devstack.config import topology
from devstack.errors import StackError
from devstack.procs import venv_bin
from devstack.servers.base import Server, run_async
from devstack.servers.kafka import Kafka
from devstack.servers.rabbitmq import Epmd, RabbitMQ
from devstack.servers.ray import Ray
from devstack.servers.replicated import replicated_servers
from devstack.servers.resp import Redis, Valkey

__all__ = [
    "INFRA",
    "SERVERS",
    "SINGLE",
    "Epmd",
    "Kafka",
    "RabbitMQ",
    "Ray",
    "Redis",
    "Server",
    "StackError",
    "Valkey",
    "run_async",
    "servers_of",
    "venv_bin",
]

SINGLE: dict[str, Callable[[], Server]] = {
    "kafka": Kafka,
    "rabbitmq": RabbitMQ,
    "redis": Redis,
    "valkey": Valkey,
    "ray": Ray,
}


def servers_of(name: str) -> dict[str, Callable[[], Server]]:
    """The servers of topology ``name`` (single, replicated) by name, Ray last."""
    if name == "replicated":
        return {**replicated_servers(), "ray": Ray}
    return SINGLE


SERVERS = servers_of(topology())
INFRA = tuple(name for name in SERVERS if name != "ray")
