"""After `make up`, nothing of the stack listens beyond loopback (`ss -ltnp`, see
tests/support/listeners.py for what counts as the stack's), and Ray refuses callers without this
checkout's token."""

from __future__ import annotations

import json
import re
import stat
import subprocess
import urllib.error
import urllib.request

import grpc
import pytest
from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc

from devstack import ray_access
from devstack.config import REPO, stack_config
from tests.support.listeners import exposed_stack_listeners, stack_listeners, stack_servers

pytestmark = pytest.mark.usefixtures("devstack_serve")


def test_nothing_of_the_stack_listens_beyond_loopback():
    listeners = stack_listeners()
    ports = {lsn.port for lsn in listeners}
    # every port devstack knows (servers, epmd, Ray's GCS and dashboard, Serve through
    # HAProxy) is among those recognised as the stack's
    expected = {port for server in stack_servers() for port in server.ports()}
    assert expected <= ports, f"not seen as the stack's: {sorted(expected - ports)}"
    exposed = exposed_stack_listeners()
    assert exposed == [], "listening beyond loopback:\n" + "\n".join(exposed)


def test_serve_listeners_that_ignore_the_host_are_on_loopback_too():
    """Serve's gRPC replica ports and HAProxy's stats and metrics have no host setting:
    devstack/ray_site binds them to loopback. They exist, and are not exposed."""
    serve = [lsn for lsn in stack_listeners() if "haproxy" in lsn.users or "Serve" in lsn.users]
    haproxy_ports = {lsn.port for lsn in serve if "haproxy" in lsn.users}
    assert {8404, 9101} <= haproxy_ports  # Serve's HAProxy stats and metrics
    assert any(lsn.port >= 40000 for lsn in serve)  # replicas' direct-ingress gRPC
    assert [str(lsn) for lsn in serve if not lsn.loopback] == []


def test_ray_dashboard_api_refuses_a_caller_without_the_token():
    url = f"{stack_config.ray_dashboard_url}/api/serve/applications/"
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(url, timeout=5)
    assert refused.value.code == 401
    wrong = urllib.request.Request(url, headers={"Authorization": "Bearer " + "0" * 64})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(wrong, timeout=5)
    assert refused.value.code == 403
    assert "ingest" in ray_access.dashboard_json("/api/serve/applications/")["applications"]


def test_ray_gcs_refuses_a_grpc_caller_without_the_token():
    target = f"127.0.0.1:{stack_config.ray_gcs_port}"
    request = gcs_service_pb2.GetClusterIdRequest()
    with grpc.insecure_channel(target) as channel:
        stub = gcs_service_pb2_grpc.NodeInfoGcsServiceStub(channel)
        with pytest.raises(grpc.RpcError) as refused:
            stub.GetClusterId(request, timeout=10)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        token = [("authorization", f"Bearer {ray_access.token()}")]
        reply = stub.GetClusterId(request, timeout=10, metadata=token)
    assert reply.cluster_id


def test_the_token_is_this_checkouts_own_and_private():
    path = ray_access.token_path()
    assert re.fullmatch(r"[0-9a-f]{64}", ray_access.token())
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    ignored = subprocess.run(["git", "check-ignore", "-q", str(path)], cwd=REPO, timeout=30)
    assert ignored.returncode == 0, f"{path} is not git-ignored"


def stats_sections(headers: dict[str, str]) -> dict[str, dict]:
    """``GET /stats?latest=1`` through Serve's proxy, as ``headers`` make it look."""
    url = f"{stack_config.serve_http_url}/stats?latest=1"
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            body = json.loads(resp.read())
    except urllib.error.HTTPError as answer:  # 503: a store down, the other's numbers still
        body = json.loads(answer.read())
    return {name: section for name, section in body.items() if "latest" in section}


def test_recent_ids_only_on_this_machine_or_with_the_token():
    """A caller from elsewhere (a proxy header says so) gets the counts without ids, and a
    note saying why; with the Ray cluster's token it gets them, as a local caller does."""
    elsewhere = {"X-Forwarded-For": "198.51.100.7"}
    hidden = stats_sections(elsewhere)
    assert hidden and all("id" not in t for s in hidden.values() for t in s["latest"])
    assert all(s["latest_ids"].startswith("ids hidden") for s in hidden.values())
    token = {"Authorization": f"Bearer {ray_access.token()}"}
    for shown in (stats_sections({}), stats_sections({**elsewhere, **token})):
        assert shown and not any("latest_ids" in s for s in shown.values())
    wrong = stats_sections({**elsewhere, "Authorization": "Bearer " + "0" * 64})
    assert all("latest_ids" in s for s in wrong.values())
