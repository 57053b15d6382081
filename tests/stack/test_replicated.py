"""The replicated topology's short form (the rounds under load are in `make chaos` on
`make up TOPOLOGY=replicated`): its infrastructure started on ports and in a directory of
its own, beside the shared stack and without Ray; a store primary lost with its AOF
(Redis, then Valkey), the Redis primary partitioned away with its writer, and a Kafka
broker lost with its data, under writes; every write the store or broker acknowledged is
still there afterwards, counted once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PORTS = {
    "DEVSTACK_KAFKA_PORTS": "21092,21094,21096",
    "DEVSTACK_KAFKA_CONTROLLER_PORTS": "21093,21095,21097",
    "DEVSTACK_RABBITMQ_PORTS": "21672,21682,21692",
    "DEVSTACK_RABBITMQ_MANAGEMENT_PORTS": "21673,21683,21693",
    "DEVSTACK_RABBITMQ_DIST_PORTS": "21674,21684,21694",
    "DEVSTACK_RABBITMQ_EPMD_PORT": "21670",
    "DEVSTACK_REDIS_PORTS": "21379,21389",
    "DEVSTACK_VALKEY_PORTS": "21380,21390",
    "DEVSTACK_REDIS_SENTINEL_PORTS": "21400,21401,21402",
    "DEVSTACK_VALKEY_SENTINEL_PORTS": "21410,21411,21412",
}
"""Ports of this test's members: none of the shared stack's (nor Ray's worker range)."""
MEMBERS = [
    *(f"kafka-{i}" for i in (1, 2, 3)),
    *(f"{store}-{i}" for store in ("redis", "valkey") for i in (1, 2)),
    *(f"{store}-sentinel-{i}" for store in ("redis", "valkey") for i in (1, 2, 3)),
]
"""What the short form needs: the RabbitMQ cluster's node loss is a `make chaos` round."""


def devstack(env: dict[str, str], *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "devstack", *args],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


@pytest.fixture(scope="module")
def replicated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    state = tmp_path_factory.mktemp("replicated")
    jars = REPO / ".devstack" / "kafka" / "libs"
    (state / "kafka").mkdir()
    (state / "kafka" / "libs").symlink_to(jars)  # the shared stack's jars, not fetched again
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("DEVSTACK_")},
        **PORTS,
        "DEVSTACK_DIR": str(state),
        "DEVSTACK_TOPOLOGY": "replicated",
    }
    try:
        started = devstack(env, "up", *MEMBERS, timeout=240)
        assert started.returncode == 0, started.stderr[-3000:]
        yield env
    finally:
        devstack(env, "down", *MEMBERS, timeout=180)


@pytest.mark.timeout(400)
def test_a_lost_primary_or_broker_loses_nothing_acknowledged(replicated: dict[str, str]) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "loadtest.replicated_smoke"],
        cwd=REPO, env=replicated, capture_output=True, text=True, timeout=360,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(run.stdout.strip().splitlines()[-1])
    for store in ("redis", "valkey"):
        seen = report[store]
        assert seen["new_primary"] != seen["old_primary"], seen
        assert seen["counted"] == seen["acknowledged"] > 0, seen
    assert report["kafka"]["read_back"] == report["kafka"]["acknowledged"] > 0, report
    cut = report["redis_partition"]
    assert cut["new_primary"] != cut["old_primary"] and cut["old_primary_role"] == "slave", cut
    assert cut["only_on_the_old_primary"] > 0, f"the partition lost nothing to replay: {cut}"
    assert cut["counted"] == cut["acknowledged"] > 0, cut
