"""Local stack for development and tests: Kafka (KRaft), RabbitMQ, Redis, Valkey, Ray Serve.

CLI: ``python -m devstack up|down|status|start NAME|stop NAME|fetch|deploy``.
API: ``from devstack import stack; stack.up(); stack.stop("redis"); stack.start("redis")``.
"""
