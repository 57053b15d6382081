"""Shared fixtures and the test layout. Servers come from devstack (see docs/local-stack.md).

The folders say what a test needs, so no marker is needed to pick them:

* ``tests/unit/``: no server and no Ray (``make unit``); marked ``offline`` here.
* ``tests/stack/``: the local stack of ``make up``, started for them if it is not running.
* ``tests/fuzz/``: property-based fuzzing; offline tests say so, the others get the stack.
* ``tests/cluster/``: a Kubernetes control plane of their own (``make cluster-test``).
* ``tests/support/``: helpers, no tests.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from devstack import ray_access, stack

# Ray on the stack runs with token authentication: `ray.init` in any test authenticates
os.environ.update(ray_access.client_env())

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test by its folder, so ``-m offline`` / ``-m cluster`` keep working; the
    long node fault rounds run only in ``make node-chaos``."""
    for item in items:
        folder = Path(str(item.fspath)).resolve().relative_to(HERE).parts[0]
        if folder == "unit":
            item.add_marker(pytest.mark.offline)
        elif folder == "cluster":
            item.add_marker(pytest.mark.cluster)
        if item.get_closest_marker("node_faults") and os.environ.get("NODE_FAULTS") != "1":
            item.add_marker(pytest.mark.skip(reason="a node fault round: `make node-chaos`"))


@pytest.fixture(scope="session")
def devstack_infra():
    """Kafka, RabbitMQ, Redis and Valkey answering (started if needed, left running)."""
    stack.up(stack.INFRA, log=lambda *_: None)
    return stack


@pytest.fixture(scope="session")
def devstack_serve(devstack_infra):
    """Also Ray with every Serve application of serve_config.yaml RUNNING."""
    stack.up(["ray"], log=lambda *_: None)
    return stack


@pytest.fixture(autouse=True)
def _servers_unless_offline(request: pytest.FixtureRequest) -> None:
    """Every test outside ``unit`` and ``cluster`` gets the real servers, unless marked
    ``offline`` (the offline fuzz tests)."""
    marked = (request.node.get_closest_marker(m) for m in ("offline", "cluster"))
    if not any(marked):
        request.getfixturevalue("devstack_infra")
