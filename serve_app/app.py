"""The Serve applications of serve_config.yaml, in the order data flows, and their builders.

- ``ingest`` (route ``/``, gRPC :9000): the ``Gateway`` (REST + gRPC faces) over the
  ``KafkaWriter`` and ``RabbitWriter`` deployments (:mod:`serve_app.brokers.deployment`),
  passed in with ``.bind()``.
- ``consumers`` (route ``/consumers``): ``ConsumerSupervisor``, which runs the consumer actors.
- ``dashboard`` (route ``/dashboard``): the live page over both stores.

Each builder takes the typed :class:`~serve_app.settings.Settings` (``args:`` in
serve_config.yaml override the environment) and passes that one object to every deployment.
No ``from __future__ import annotations`` here: Serve reads the builders' annotation to turn
``args`` into ``Settings``.
"""

from ray.serve import Application

from serve_app.brokers.deployment import KafkaWriter, RabbitWriter
from serve_app.consume.deployment import ConsumerSupervisor
from serve_app.dashboard.deployment import Dashboard
from serve_app.ingest.deployment import Gateway
from serve_app.settings import Settings


def build_ingest_app(config: Settings) -> Application:
    return Gateway.bind(KafkaWriter.bind(config), RabbitWriter.bind(config), config)


def build_consumers_app(config: Settings) -> Application:
    return ConsumerSupervisor.bind(config)


def build_dashboard_app(config: Settings) -> Application:
    return Dashboard.bind(config)
