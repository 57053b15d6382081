"""Stage 2: the brokers. Everything that speaks Kafka or AMQP lives here, one module per broker.

* :mod:`.base`: what every broker shares, no client library in it: the writer's connection
  and deadline handling, the message and dead-letter shapes the consumers work on.
* :mod:`.kafka`: topics, producer, chunk writer, consumer source, dead letters, probe.
* :mod:`.rabbitmq`: topology, connections, chunk writer, consumer source, dead letters, probe.
* :mod:`.deployment`: the two writers as Serve deployments.
"""
