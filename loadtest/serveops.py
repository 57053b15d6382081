"""Serve and store plumbing for the load test and the benchmark.

Generates config variants of ``serve_config.yaml`` (plus the no-op app, replica counts),
deploys them with ``serve deploy`` and waits for RUNNING, reads replica counts from the
dashboard's Serve REST API, and reads counters and consumer lag. Every address comes
from :mod:`serve_app.settings`.
"""

from __future__ import annotations

import asyncio
import copy
import json
import os
import subprocess
import tempfile
import time
import urllib.request
from typing import Any

import yaml

from devstack import ray_access, stack
from devstack.config import REPO, stack_config
from devstack.servers import venv_bin
from serve_app.settings import settings
from serve_app.store import KEYS, connect_redis, connect_valkey

HTTP_BASE = stack_config.serve_http_url
GRPC_TARGET = stack_config.serve_grpc_target
DASHBOARD = stack_config.ray_dashboard_url

NOOP_APP = "noop"
NOOP_ROUTE = "/noop"
SCALED = (("ingest", "Gateway"),)
"""The deployments the replica sweep varies: (application, deployment)."""


# --- config variants -------------------------------------------------------------------
def base_config() -> dict[str, Any]:
    """serve_config.yaml as the local stack deploys it (see devstack's Ray.deployed_config)."""
    return yaml.safe_load(stack.get("ray").deployed_config().read_text())


def with_noop(config: dict[str, Any]) -> dict[str, Any]:
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


def _deployment(config: dict[str, Any], app: str, name: str) -> dict[str, Any]:
    for application in config["applications"]:
        if application["name"] == app:
            for deployment in application.get("deployments", []):
                if deployment["name"] == name:
                    return deployment
    raise KeyError(f"{app}/{name} is not in the Serve config")


def replica_variant(
    config: dict[str, Any],
    replicas: int | None,
    autoscaling: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
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


# --- dashboard -----------------------------------------------------------------------
def applications(timeout: float = 5.0) -> dict[str, dict[str, Any]]:
    return ray_access.dashboard_json("/api/serve/applications/", timeout).get("applications") or {}


def replica_counts(apps: dict[str, dict[str, Any]] | None = None) -> dict[str, int]:
    """RUNNING replicas per ``app/deployment``."""
    apps = applications() if apps is None else apps
    counts = {}
    for app_name, app in apps.items():
        for dep_name, dep in (app.get("deployments") or {}).items():
            running = [r for r in dep.get("replicas") or [] if r.get("state") == "RUNNING"]
            counts[f"{app_name}/{dep_name}"] = len(running)
    return counts


def _ready(
    config: dict[str, Any], apps: dict[str, dict[str, Any]], allow_deleting: bool = False
) -> bool:
    """Every application of ``config`` RUNNING with its fixed replica counts, and no other
    application (``allow_deleting``: others may still be DELETING)."""
    wanted = {a["name"] for a in config["applications"]}
    others = {n: a for n, a in apps.items() if n not in wanted}
    if not wanted <= set(apps):
        return False
    if others and not (
        allow_deleting and all(a.get("status") == "DELETING" for a in others.values())
    ):
        return False
    if any(apps[n].get("status") != "RUNNING" for n in wanted):
        return False
    counts = replica_counts(apps)
    for application in config["applications"]:
        for deployment in application.get("deployments", []):
            key = f"{application['name']}/{deployment['name']}"
            n = deployment.get("num_replicas")
            status = apps[application["name"]]["deployments"].get(deployment["name"], {})
            if status.get("status") != "HEALTHY":
                return False
            if isinstance(n, int) and counts.get(key) != n:
                return False
    return True


def deploy(
    config: dict[str, Any],
    timeout: float = 240.0,
    label: str = "bench",
    allow_deleting: bool = False,
) -> float:
    """``serve deploy`` ``config`` and wait until it runs as asked; returns seconds taken.

    ``allow_deleting``: do not wait for applications dropped from the config to be gone
    (deleting one takes Serve ~30 s)."""
    started = time.monotonic()
    with tempfile.NamedTemporaryFile(
        "w", prefix=f"serve-{label}-", suffix=".yaml", delete=False
    ) as handle:
        yaml.safe_dump(config, handle, sort_keys=False)
        path = handle.name
    try:
        result = subprocess.run(
            [venv_bin("serve"), "deploy", path, "-a", DASHBOARD],
            cwd=REPO,
            env=stack.get("ray").env(),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        os.unlink(path)
    if result.returncode != 0:
        raise RuntimeError(f"serve deploy ({label}) failed:\n{result.stdout}{result.stderr}")
    time.sleep(1.0)  # let the controller take the new config before polling
    deadline = time.monotonic() + timeout
    apps: dict[str, dict[str, Any]] = {}
    while time.monotonic() < deadline:
        try:
            apps = applications()
        except OSError:
            apps = {}
        if _ready(config, apps, allow_deleting):
            return time.monotonic() - started
        if any(a.get("status") == "DEPLOY_FAILED" for a in apps.values()):
            break
        time.sleep(0.5)
    summary = {n: (a.get("status"), a.get("message", "")[:300]) for n, a in apps.items()}
    raise RuntimeError(f"Serve config '{label}' not RUNNING after {timeout:.0f}s: {summary}")


def restore(timeout: float = 240.0) -> float:
    """Deploy ``serve_config.yaml`` itself again (drops the no-op app and any variant)."""
    return deploy(base_config(), timeout=timeout, label="restore")


# --- counters and lag ----------------------------------------------------------------
class Counters:
    """``tweets:total`` of Redis and Valkey, read directly (cheap to poll)."""

    def __init__(self) -> None:
        self.redis = connect_redis(settings)
        self.valkey = connect_valkey(settings)

    async def totals(self) -> tuple[int, int]:
        r, v = await asyncio.gather(self.redis.get(KEYS.total), self.valkey.get(KEYS.total))
        return int(r or 0), int(v or 0)

    async def counted(self, ids: list[str]) -> tuple[list[bool], list[bool]]:
        """Whether each id is counted in Redis and in Valkey (its seen-marker exists)."""
        keys = [f"{KEYS.seen_prefix}{i}" for i in ids]

        async def check(client: Any) -> list[bool]:
            async with client.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.exists(key)
                return [bool(x) for x in await pipe.execute()]

        r, v = await asyncio.gather(check(self.redis), check(self.valkey))
        return r, v

    async def close(self) -> None:
        await self.redis.aclose()
        await self.valkey.aclose()


async def lag() -> dict[str, int | None]:
    """Kafka consumer-group lag and RabbitMQ ready depth (None if unreadable)."""
    from serve_app.monitor import kafka_lag, rabbit_depth

    async def safe(fn: Any) -> int | None:
        try:
            return int(await asyncio.wait_for(fn(settings), timeout=15))
        except Exception:  # noqa: BLE001 - reported as unknown, not fatal
            return None

    kafka, rabbit = await asyncio.gather(safe(kafka_lag), safe(rabbit_depth))
    return {"kafka_lag": kafka, "rabbitmq_depth": rabbit}


def http_stats(timeout: float = 10.0) -> dict[str, Any]:
    """``GET /stats`` of the Gateway."""
    with urllib.request.urlopen(f"{HTTP_BASE}/stats", timeout=timeout) as resp:
        return json.loads(resp.read())


def stats_totals(stats: dict[str, Any]) -> tuple[int, int]:
    return int(stats["redis"]["total"]), int(stats["valkey"]["total"])


async def wait_counted(
    counters: Counters, target_redis: int, target_valkey: int, timeout: float, poll: float = 0.05
) -> tuple[float | None, float | None, tuple[int, int]]:
    """Poll until Redis reaches ``target_redis`` and Valkey ``target_valkey``.

    Returns the wall-clock time (``time.time()``) each store got there (None if not
    within ``timeout``) and the last totals read.
    """
    deadline = time.time() + timeout
    done_r = done_v = None
    totals = await counters.totals()
    while True:
        now = time.time()
        if done_r is None and totals[0] >= target_redis:
            done_r = now
        if done_v is None and totals[1] >= target_valkey:
            done_v = now
        if (done_r is not None and done_v is not None) or now >= deadline:
            return done_r, done_v, totals
        await asyncio.sleep(poll)
        totals = await counters.totals()
