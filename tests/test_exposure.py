"""After `make up`, nothing of the stack listens beyond loopback, and Ray refuses callers
without this checkout's token.

A process belongs to the stack when devstack recorded its pid, or when its environment
carries ``DEVSTACK_DIR`` = this stack's state directory: devstack sets it on every server,
and everything they start (Ray's workers, Serve's HAProxy) inherits it. (Redis and Valkey
overwrite their environment with their process title; their pids are recorded.)
"""

from __future__ import annotations

import ipaddress
import re
import stat
import subprocess
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc

from devstack import ray_auth, stack
from devstack.config import REPO, stack_config


@dataclass(frozen=True)
class SocketListener:
    host: str
    port: int
    pids: tuple[int, ...]
    users: str

    @property
    def loopback(self) -> bool:
        if self.host == "*":
            return False
        address = ipaddress.ip_address(self.host.strip("[]").split("%")[0])
        mapped = getattr(address, "ipv4_mapped", None)
        return (mapped or address).is_loopback

    def __str__(self) -> str:
        return f"{self.host}:{self.port} {self.users}"


def ss_listeners() -> list[SocketListener]:
    """Every listening TCP socket on the machine, as `ss -ltnp` prints it."""
    out = subprocess.run(
        ["ss", "-ltnpH"], capture_output=True, text=True, check=True, timeout=30
    ).stdout
    found = []
    for line in out.splitlines():
        fields = line.split(maxsplit=5)
        host, _, port = fields[3].rpartition(":")
        users = fields[5].strip() if len(fields) > 5 else ""
        pids = tuple(int(p) for p in re.findall(r"pid=(\d+)", users))
        found.append(SocketListener(host, int(port), pids, users))
    return found


def belongs_to_stack(pid: int) -> bool:
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return False
    return f"DEVSTACK_DIR={stack_config.state_dir}".encode() in environ


def stack_servers() -> list[stack.Server]:
    servers = [stack.get(name) for name in [*stack.INFRA, "ray"]]
    return [h for s in servers for h in [s, *s.helpers()]]


def stack_listeners() -> list[SocketListener]:
    recorded = {server.pid() for server in stack_servers()}
    return [
        lsn for lsn in ss_listeners() if any(p in recorded or belongs_to_stack(p) for p in lsn.pids)
    ]


@pytest.fixture(scope="module")
def stack_up(devstack_serve):
    return devstack_serve


def test_nothing_of_the_stack_listens_beyond_loopback(stack_up):
    listeners = stack_listeners()
    ports = {lsn.port for lsn in listeners}
    # every port devstack knows (servers, epmd, Ray's GCS and dashboard, Serve through
    # HAProxy) is among those recognised as the stack's
    expected = {port for server in stack_servers() for port in server.ports()}
    assert expected <= ports, f"not seen as the stack's: {sorted(expected - ports)}"
    exposed = [str(lsn) for lsn in listeners if not lsn.loopback]
    assert exposed == [], "listening beyond loopback:\n" + "\n".join(exposed)


def test_serve_listeners_that_ignore_the_host_are_on_loopback_too(stack_up):
    """Serve's gRPC replica ports and HAProxy's stats and metrics have no host setting:
    devstack/ray_site binds them to loopback. They exist, and are not exposed."""
    serve = [lsn for lsn in stack_listeners() if "haproxy" in lsn.users or "Serve" in lsn.users]
    haproxy_ports = {lsn.port for lsn in serve if "haproxy" in lsn.users}
    assert {8404, 9101} <= haproxy_ports  # Serve's HAProxy stats and metrics
    assert any(lsn.port >= 40000 for lsn in serve)  # replicas' direct-ingress gRPC
    assert [str(lsn) for lsn in serve if not lsn.loopback] == []


def test_ray_dashboard_api_refuses_a_caller_without_the_token(stack_up):
    url = f"{stack_config.ray_dashboard_url}/api/serve/applications/"
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(url, timeout=5)
    assert refused.value.code == 401
    wrong = urllib.request.Request(url, headers={"Authorization": "Bearer " + "0" * 64})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(wrong, timeout=5)
    assert refused.value.code == 403
    assert "ingest" in ray_auth.dashboard_json("/api/serve/applications/")["applications"]


def test_ray_gcs_refuses_a_grpc_caller_without_the_token(stack_up):
    target = f"127.0.0.1:{stack_config.ray_gcs_port}"
    request = gcs_service_pb2.GetClusterIdRequest()
    with grpc.insecure_channel(target) as channel:
        stub = gcs_service_pb2_grpc.NodeInfoGcsServiceStub(channel)
        with pytest.raises(grpc.RpcError) as refused:
            stub.GetClusterId(request, timeout=10)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        token = [("authorization", f"Bearer {ray_auth.token()}")]
        reply = stub.GetClusterId(request, timeout=10, metadata=token)
    assert reply.cluster_id


def test_the_token_is_this_checkouts_own_and_private(stack_up):
    path = ray_auth.token_path()
    assert re.fullmatch(r"[0-9a-f]{64}", ray_auth.token())
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    ignored = subprocess.run(["git", "check-ignore", "-q", str(path)], cwd=REPO, timeout=30)
    assert ignored.returncode == 0, f"{path} is not git-ignored"
