"""Stage 1: ingest. REST and gRPC faces over a Ray-free core; the Gateway deployment."""
