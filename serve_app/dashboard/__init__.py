"""Stage 5: the live dashboard (Ray-free core, its probes in sources, the Serve deployment)."""
