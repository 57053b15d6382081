"""Stage 4: the stores (key schema in core, the Redis-protocol client in client)."""
