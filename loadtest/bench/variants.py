"""The Serve config variants the bench deploys: the pipeline plus a no-op app (the
ceilings), the Gateway at fixed replica counts or autoscaling, and the consumers at a fixed
number of actors per broker."""

from __future__ import annotations

import copy
from typing import Any

Config = dict[str, Any]

NOOP_APP = "noop"
NOOP_ROUTE = "/noop"
SCALED = (("ingest", "Gateway"),)
"""The deployments the replica sweep varies: (application, deployment)."""
SCALED_KEYS = tuple(f"{app}/{dep}" for app, dep in SCALED)

DEFAULT_AUTOSCALE = {
    # Bench-only overrides of serve_config.yaml's autoscaling_config so that a rise and
    # a fall fit into one run (Serve's defaults: upscale 30 s, downscale 600 s) and so
    # that the benchmark's concurrency is above the per-replica targets.
    "Gateway": {"target_ongoing_requests": 16, "upscale_delay_s": 2, "downscale_delay_s": 10},
}


def with_noop(config: Config) -> Config:
    """``config`` plus the no-op application on ``/noop``."""
    out = copy.deepcopy(config)
    out["applications"] = [a for a in out["applications"] if a["name"] != NOOP_APP]
    out["applications"].append(
        {
            "name": NOOP_APP,
            "route_prefix": NOOP_ROUTE,
            "import_path": "loadtest.noop_app:app",  # the Ray node has the repo on its path
            "deployments": [
                {
                    "name": "Noop",
                    "num_replicas": 1,
                    "max_ongoing_requests": 1000,
                    "graceful_shutdown_timeout_s": 2,
                    "graceful_shutdown_wait_loop_s": 0.5,
                    "ray_actor_options": {"num_cpus": 0.2},
                }
            ],
        }
    )
    return out


def _deployment(config: Config, app: str, name: str) -> dict[str, Any]:
    for application in config["applications"]:
        if application["name"] == app:
            for deployment in application.get("deployments", []):
                if deployment["name"] == name:
                    return deployment
    raise KeyError(f"{app}/{name} is not in the Serve config")


def replica_variant(
    config: Config, replicas: int | None, autoscaling: dict[str, dict[str, Any]] | None = None
) -> Config:
    """The Gateway at a fixed ``replicas`` count, or (``replicas=None``) with
    their own ``autoscaling_config`` updated by ``autoscaling[deployment name]``."""
    out = copy.deepcopy(config)
    for app, name in SCALED:
        deployment = _deployment(out, app, name)
        if replicas is None:
            overrides = (autoscaling or {}).get(name, {})
            merged = {**(deployment.get("autoscaling_config") or {}), **overrides}
            deployment["autoscaling_config"] = merged
            deployment.pop("num_replicas", None)
        else:
            deployment.pop("autoscaling_config", None)
            deployment["num_replicas"] = replicas
    return out


CONSUMER_COUNTS = ("kafka_consumers", "rabbit_consumers")
"""The ``consumers`` application's ``args:`` that set its actors per broker."""


def consumer_variant(config: Config, per_broker: int) -> Config:
    """``config`` with ``per_broker`` consumer actors on each broker (the ``consumers``
    application's ``args:``, which override the settings; the other args are kept)."""
    out = copy.deepcopy(config)
    [app] = [a for a in out["applications"] if a["name"] == "consumers"]
    app["args"] = {**(app.get("args") or {}), **dict.fromkeys(CONSUMER_COUNTS, per_broker)}
    return out
