"""Shared stack fixtures. Servers come from devstack (see README "Local stack").

Test modules add their own fixtures in their own files; only stack plumbing lives here.
"""

from __future__ import annotations

import os

import pytest

from devstack import ray_access, stack

# Ray on the stack runs with token authentication: `ray.init` in any test authenticates
os.environ.update(ray_access.client_env())


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
    """Every test gets the real servers, except those marked ``offline`` or ``cluster``
    (the Kubernetes cluster test runs its own servers, see devstack/cluster)."""
    marked = (request.node.get_closest_marker(m) for m in ("offline", "cluster"))
    if not any(marked):
        request.getfixturevalue("devstack_infra")
