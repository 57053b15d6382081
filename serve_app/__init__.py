"""Weather-tweet ingestion pipeline on Ray Serve.

Data flows one way, one module per stage:
ingress (REST) -> publisher (gRPC) -> writers (Kafka, RabbitMQ) -> consumers -> store.
"""
