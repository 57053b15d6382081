"""Scale out: a head and two worker Ray nodes on this machine, one worker killed mid-load.

Restarts Ray as three nodes (the head takes no replicas, as in Kubernetes), deploys
serve_config.yaml with the Gateway and both writers at two replicas, at most one per node,
and checks they sit on two nodes. A client that retries every non-202 with the same ids
sends for 20 s; 6 s in, one worker node's raylet is killed (-9). Serve must keep answering,
the consumer actors must come back on the surviving node, and every accepted id must be
counted exactly once in Redis and in Valkey. The single-node stack is restored at the end.
Figures go to loadtest/results/multinode.json.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import ray
import yaml

from devstack import serve_ops, servers, stack
from devstack.config import REPO, app_settings, stack_config
from loadtest import retrying
from serve_app.store.client import both_stores
from tests.support.listeners import exposed_stack_listeners

settings = app_settings()

pytestmark = [pytest.mark.usefixtures("devstack_infra"), pytest.mark.timeout(900)]

NODES = 3
KILLED_WORKER = 2
SPREAD = ("Gateway", "KafkaWriter", "RabbitWriter")
RESULTS = REPO / "loadtest" / "results"


def spread_config(ray_stack: servers.Ray, path: Path) -> Path:
    """The multi-node config with the ingest deployments at 2 replicas, 1 per node."""
    config = yaml.safe_load(ray_stack.deployed_config().read_text())
    [ingest] = [a for a in config["applications"] if a["name"] == "ingest"]
    for deployment in ingest["deployments"]:
        if deployment["name"] in SPREAD:
            deployment.pop("autoscaling_config", None)
            deployment["num_replicas"] = 2
            deployment["max_replicas_per_node"] = 1
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def placement() -> dict[str, list[str]]:
    """Node ids of the RUNNING replicas of every ingest deployment."""
    apps = serve_ops.applications()
    deployments = apps["ingest"]["deployments"]
    return {
        name: sorted(r["node_id"] for r in deployments[name]["replicas"] if r["state"] == "RUNNING")
        for name in SPREAD
    }


def consumers() -> dict[str, Any]:
    response = httpx.get(f"{stack_config.serve_http_url}/consumers", timeout=30)
    return {"status": response.status_code, **response.json()}


async def totals() -> tuple[int, int]:
    stores = both_stores(settings)
    r, v = await asyncio.gather(*(s.read_stats() for s in stores.values()))
    return r["total"], v["total"]


async def wait_for(check, what: str, timeout: float) -> float:
    started = time.monotonic()
    while True:
        try:
            if await check():
                return time.monotonic() - started
        except Exception:  # a node or store may be recovering
            pass
        assert time.monotonic() - started < timeout, f"timed out waiting for {what}"
        await asyncio.sleep(0.5)


async def test_three_nodes_survive_a_worker_node_failure(tmp_path: Path) -> None:
    if ray.is_initialized():
        ray.shutdown()  # this process must not hold a connection to the Ray being replaced
    multi = servers.Ray(nodes=NODES)
    report: dict[str, Any] = {"nodes": NODES}
    await asyncio.to_thread(stack.get("ray").stop)
    try:
        await asyncio.to_thread(multi.launch)
        await asyncio.to_thread(multi.wait_ready)
        await asyncio.to_thread(multi.deploy, spread_config(multi, tmp_path / "spread.yaml"))
        before_placement = placement()
        report["placement_before"] = before_placement
        for name, nodes in before_placement.items():
            assert len(set(nodes)) == 2, (name, nodes)
        report["exposed"] = exposed_stack_listeners()  # every node's: loopback only
        assert report["exposed"] == [], report["exposed"]
        before_consumers = consumers()
        assert before_consumers["healthy"], before_consumers
        before = await totals()

        killed: dict[str, float] = {}

        async def kill_worker() -> None:
            await asyncio.sleep(6)
            raylet = multi.worker_raylet(KILLED_WORKER)
            assert raylet, "worker node raylet not found"
            os.kill(raylet, signal.SIGKILL)  # a node failure: no goodbye
            killed["at"] = time.monotonic()

        load = asyncio.create_task(
            retrying.run(duration_s=20, rate_tweets_s=300, batch=10, tag="multinode")
        )
        await kill_worker()
        result = await load
        report["load"] = {
            "accepted": len(result.accepted_ids),
            "requests": result.requests,
            "retries": result.retries,
            "statuses": result.statuses,
            "gave_up": result.gave_up,
        }
        assert result.gave_up == 0, report["load"]
        accepted = len(result.accepted_ids)

        async def counted() -> bool:
            r, v = await totals()
            return r - before[0] >= accepted and v - before[1] >= accepted

        report["drain_s"] = round(await wait_for(counted, "both stores counted", 180), 1)
        await asyncio.sleep(3)  # anything counted twice would show up now
        after = await totals()
        report["redis_delta"], report["valkey_delta"] = after[0] - before[0], after[1] - before[1]

        async def consumers_back() -> bool:
            return consumers()["healthy"]

        await wait_for(consumers_back, "consumers healthy", 120)
        report["consumers_healthy_after_kill_s"] = round(time.monotonic() - killed["at"], 1)
        after_consumers = consumers()
        dead_node = {n for n in before_placement["Gateway"]} - set(placement()["Gateway"])
        report["placement_after"] = placement()
        report["consumer_nodes"] = {
            "before": {k: v["node_id"] for k, v in before_consumers["actors"].items()},
            "after": {k: v["node_id"] for k, v in after_consumers["actors"].items()},
        }
        print(json.dumps(report, indent=1))
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "multinode.json").write_text(json.dumps(report, indent=1) + "\n")

        assert report["redis_delta"] == report["valkey_delta"] == accepted, report
        assert dead_node, "the killed node still hosts a Gateway replica"
        for node in report["consumer_nodes"]["after"].values():
            assert node not in dead_node, report["consumer_nodes"]
        ok = httpx.post(
            f"{stack_config.serve_http_url}/input",
            json={"description": "después", "country": "GT", "weather": "Soleado"},
            timeout=30,
        )
        assert ok.status_code == 202, ok.text
    finally:
        await asyncio.to_thread(multi.stop)
        await asyncio.to_thread(stack.get("ray").start)
