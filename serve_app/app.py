"""The Serve applications named in serve_config.yaml, in the order data flows.

- ``publisher``: gRPC ingress ``Publisher`` -> ``KafkaWriter`` + ``RabbitWriter``.
- ``ingress``: the REST ``Ingress``, which reaches the publisher app through a handle.
- ``consumers``: ``ConsumerSupervisor``, which runs the consumer actors.
"""

from __future__ import annotations

from serve_app.consumers import ConsumerSupervisor
from serve_app.ingress import Ingress
from serve_app.publisher import Publisher
from serve_app.writers import KafkaWriter, RabbitWriter

publisher_app = Publisher.bind(KafkaWriter.bind(), RabbitWriter.bind())
ingress_app = Ingress.bind()
consumers_app = ConsumerSupervisor.bind()
