"""Stage 3: consume (generic loop and batch logic in core, Ray actors, the supervisor)."""
