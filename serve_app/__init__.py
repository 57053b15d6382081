"""Weather-tweet ingestion pipeline on Ray Serve.

Data flows one way, one module per stage:
gateway (REST + gRPC faces over the ingest core) -> writers (Kafka, RabbitMQ) -> consumers
(core + broker adapters) -> store -> dashboards.
"""
