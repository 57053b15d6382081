"""What every stage shares: the tweet schema, the broker message codec, metric names, health."""
