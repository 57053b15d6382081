"""One module per local-stack server; every address, port and credential comes from settings.

``base`` holds what they share (pid file, log, ports, readiness), ``kafka``, ``rabbitmq``
(with its epmd), ``resp`` (Redis and Valkey) and ``ray`` one server each.
"""

from devstack.errors import StackError
from devstack.procs import venv_bin
from devstack.servers.base import Server, run_async
from devstack.servers.kafka import Kafka
from devstack.servers.rabbitmq import Epmd, RabbitMQ
from devstack.servers.ray import Ray
from devstack.servers.resp import Redis, Valkey

__all__ = [
    "INFRA",
    "SERVERS",
    "Epmd",
    "Kafka",
    "RabbitMQ",
    "Ray",
    "Redis",
    "Server",
    "StackError",
    "Valkey",
    "run_async",
    "venv_bin",
]

SERVERS: dict[str, type[Server]] = {
    "kafka": Kafka,
    "rabbitmq": RabbitMQ,
    "redis": Redis,
    "valkey": Valkey,
    "ray": Ray,
}
INFRA = ("kafka", "rabbitmq", "redis", "valkey")
