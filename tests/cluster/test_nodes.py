"""Three real nodes on this machine: the first in the host's network namespace
(devstack/cluster/node.py), two more each in a namespace of its own with its own containerd,
kubelet, kube-proxy and pod network (devstack/cluster/nodes.py).

Checked: every node Ready; a pod on each node; each pod reaches every other node's pod by
its IP, and a Service by its DNS name (CoreDNS) with endpoints on all three nodes (kube-proxy
in every namespace); the host reaches the Service by cluster IP. Then one node is lost
outright (kubelet, containerd, shims and containers killed by pid): the node turns
NotReady, its pod is evicted and a Deployment's replica runs again on a node left, and the
Service answers from the nodes left only.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from devstack.cluster import build
from devstack.cluster.control_plane import NODE_NAMES, ControlPlane
from devstack.cluster.node import NODE_NAME, Node
from devstack.cluster.nodes import NetnsNode, extra_nodes

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(1800)]

NAMESPACE = "nodes"
IMAGE = "weather-pipeline:0.1.0"
FIGURES = build.HOME / "node" / "nodes-figures.json"
# Pods of a lost node are evicted this long after it turns NotReady (default: 300 s).
EVICT_AFTER_S = 10
ECHO_SERVER = """
import http.server, os
class Echo(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = os.environ["NODE_NAME"].encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("", 8080), Echo).serve_forever()
"""
CLIENT = """
import json, socket, sys, urllib.request
ips = json.loads(sys.argv[1])
def get(url):
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read().decode()
by_ip = {ip: get(f"http://{ip}:8080/") for ip in ips}
name = "echo.nodes.svc.cluster.local"
resolved = socket.gethostbyname(name)
via_service = sorted({get(f"http://{name}:8080/") for _ in range(60)})
print(json.dumps({"by_ip": by_ip, "resolved": resolved, "via_service": via_service}))
"""


@dataclass
class Nodes:
    plane: ControlPlane
    first: Node
    extra: list[NetnsNode]
    figures: dict[str, Any] = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        return [NODE_NAME, *(n.name for n in self.extra)]

    def kubectl(self, *args: str, stdin: str | None = None) -> str:
        return self.plane.kubectl(*args, stdin=stdin)

    def get(self, *args: str) -> dict[str, Any]:
        return self.plane.get_json("-n", NAMESPACE, *args)

    def apply(self, obj: dict[str, Any]) -> None:
        self.kubectl("apply", "--server-side", "-f", "-", stdin=json.dumps(obj))

    def record(self, name: str, value: Any) -> None:
        self.figures[name] = value
        FIGURES.write_text(json.dumps(self.figures, indent=1))
        print(f"figure {name}: {value}")


def wait_for(check, what: str, timeout: float, interval: float = 2.0) -> float:
    """Poll ``check`` (bounded in time); seconds it took."""
    started = time.monotonic()
    last: Any = None
    while time.monotonic() < started + timeout:
        try:
            last = check()
            if last:
                return time.monotonic() - started
        except (RuntimeError, httpx.HTTPError, OSError) as error:
            last = error
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}; last: {last!r}")


@pytest.fixture(scope="module")
def nodes() -> Iterator[Nodes]:
    """Control plane, the host's node and two namespace nodes, all Ready; everything stopped
    by pid and removed by name afterwards, whatever happened."""
    first = Node(log=print)
    extra = extra_nodes(first, 2)
    plane = first.control_plane()
    plane.extra_tokens += [n.token_line() for n in extra]
    cluster = Nodes(plane, first, extra)
    try:
        started = time.monotonic()
        plane.up()
        plane.kubectl("delete", "node", *NODE_NAMES)
        first.up(plane)
        cluster.record("first_node_ready_s", round(time.monotonic() - started, 1))
        for node in extra:
            started = time.monotonic()
            node.up(plane)
            cluster.record(f"{node.name}_ready_s", round(time.monotonic() - started, 1))
        cluster.kubectl("create", "namespace", NAMESPACE)
        yield cluster
    finally:
        for node in reversed(extra):
            node.down()
        first.down()
        plane.stop()


def node_conditions(cluster: Nodes) -> dict[str, str]:
    items = cluster.plane.get_json("nodes")["items"]
    return {
        n["metadata"]["name"]: next(
            (c["status"] for c in n["status"].get("conditions", []) if c["type"] == "Ready"), "?"
        )
        for n in items
    }


def echo_pod(name: str, node: str, labels: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": NAMESPACE, "labels": labels},
        "spec": {
            "nodeName": node,
            "enableServiceLinks": False,
            "containers": [echo_container()],
        },
    }


def echo_container() -> dict[str, Any]:
    node_name = {"fieldRef": {"fieldPath": "spec.nodeName"}}
    return {
        "name": "echo",
        "image": IMAGE,
        "imagePullPolicy": "IfNotPresent",
        "command": ["python", "-c", ECHO_SERVER],
        "env": [{"name": "NODE_NAME", "valueFrom": node_name}],
        "ports": [{"containerPort": 8080}],
        "readinessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 2},
        "resources": {"requests": {"cpu": "10m", "memory": "32Mi"}},
    }


def running_pods(cluster: Nodes, selector: str) -> dict[str, tuple[str, str]]:
    """Pod name -> (node, IP) of the Ready pods matching ``selector``."""
    items = cluster.get("pods", "-l", selector)["items"]
    return {
        p["metadata"]["name"]: (p["spec"].get("nodeName", ""), p["status"].get("podIP", ""))
        for p in items
        if not p["metadata"].get("deletionTimestamp")
        and any(
            c["type"] == "Ready" and c["status"] == "True"
            for c in p["status"].get("conditions", [])
        )
    }


def echo_service(cluster: Nodes) -> str:
    """The Service ``echo`` over every echo pod; its cluster IP."""
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "echo", "namespace": NAMESPACE},
        "spec": {"selector": {"app": "echo"}, "ports": [{"port": 8080, "targetPort": 8080}]},
    }
    cluster.apply(service)
    return cluster.get("service", "echo")["spec"]["clusterIP"]


def answering_nodes(url: str, tries: int = 60) -> set[str]:
    """Node names a Service's endpoints answered with, over ``tries`` new connections."""
    found = set()
    for _ in range(tries):
        found.add(httpx.get(url, timeout=5).text)
    return found


def test_three_nodes_ready(nodes: Nodes) -> None:
    assert node_conditions(nodes) == {name: "True" for name in nodes.names}


def test_pods_on_every_node_reach_each_other_by_ip_and_by_dns(nodes: Nodes) -> None:
    for index, node in enumerate(nodes.names):
        nodes.apply(echo_pod(f"echo-{index}", node, {"app": "echo", "pinned": "yes"}))
    cluster_ip = echo_service(nodes)
    took = wait_for(lambda: len(running_pods(nodes, "pinned=yes")) == 3, "echo pods", 300)
    nodes.record("echo_pods_ready_s", round(took, 1))
    pods = running_pods(nodes, "pinned=yes")
    assert {node for node, _ in pods.values()} == set(nodes.names)
    ips = {ip: node for node, ip in pods.values()}
    # every pod CIDR its own: the host's 10.244.0.0/24, node i's 10.244.i.0/24
    assert len({ip.rsplit(".", 1)[0] for ip in ips}) == 3, ips
    wait_for(
        lambda: answering_nodes(f"http://{cluster_ip}:8080/") == set(nodes.names),
        "the Service answering from every node, from the host",
        60,
    )
    for index, node in enumerate(nodes.names):
        client = echo_pod(f"client-{index}", node, {"app": "client"})
        container = client["spec"]["containers"][0]
        container |= {"name": "client", "command": ["python", "-c", CLIENT, json.dumps(list(ips))]}
        container.pop("readinessProbe")
        container.pop("ports")
        client["spec"]["restartPolicy"] = "Never"
        nodes.apply(client)
    for index, node in enumerate(nodes.names):
        name = f"client-{index}"
        wait_for(
            lambda n=name: nodes.get("pod", n)["status"]["phase"] in ("Succeeded", "Failed"),
            f"{name} to finish",
            180,
        )
        logs = nodes.kubectl("-n", NAMESPACE, "logs", name)
        assert nodes.get("pod", name)["status"]["phase"] == "Succeeded", logs
        result = json.loads(logs.strip().splitlines()[-1])
        assert result["by_ip"] == ips, (node, result)
        assert result["resolved"] == cluster_ip, (node, result)
        assert result["via_service"] == sorted(nodes.names), (node, result)


def test_lost_node_pods_rescheduled(nodes: Nodes) -> None:
    """A Deployment of three replicas spread one per node; the last node lost outright:
    NotReady, its replica evicted (tolerations of EVICT_AFTER_S) and run again on a node
    left, the Service answering from the nodes left only."""
    lost = nodes.extra[-1]
    tolerations = [
        {"key": f"node.kubernetes.io/{taint}", "operator": "Exists", "effect": "NoExecute",
         "tolerationSeconds": EVICT_AFTER_S}
        for taint in ("not-ready", "unreachable")
    ]  # fmt: skip
    labels = {"app": "echo", "replica": "yes"}
    spread = {
        "maxSkew": 1,
        "topologyKey": "kubernetes.io/hostname",
        "whenUnsatisfiable": "ScheduleAnyway",
        "labelSelector": {"matchLabels": labels},
    }
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "echo", "namespace": NAMESPACE},
        "spec": {
            "replicas": 3,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "enableServiceLinks": False,
                    "tolerations": tolerations,
                    "topologySpreadConstraints": [spread],
                    "terminationGracePeriodSeconds": 2,
                    "containers": [echo_container()],
                },
            },
        },
    }
    for index in range(3):  # the pinned pods of the test before would keep the lost node
        nodes.kubectl("-n", NAMESPACE, "delete", "pod", f"echo-{index}", "--ignore-not-found")
    nodes.apply(deployment)
    wait_for(
        lambda: {n for n, _ in running_pods(nodes, "replica=yes").values()} == set(nodes.names),
        "one replica per node",
        300,
    )
    cluster_ip = echo_service(nodes)
    url = f"http://{cluster_ip}:8080/"
    wait_for(lambda: answering_nodes(url) == set(nodes.names), "every replica answering", 60)
    started = time.monotonic()
    killed = lost.kill()
    nodes.record("lost_node_killed_pids", len(killed))
    left = set(nodes.names) - {lost.name}
    took = wait_for(lambda: node_conditions(nodes)[lost.name] != "True", "NotReady", 180)
    nodes.record("lost_node_not_ready_s", round(took, 1))

    def rescheduled() -> bool:
        pods = running_pods(nodes, "replica=yes")
        return len(pods) == 3 and {n for n, _ in pods.values()} <= left

    wait_for(rescheduled, "three replicas Ready on the nodes left", 300)
    wait_for(lambda: answering_nodes(url) == left, "the Service on the nodes left only", 60)
    nodes.record("lost_node_full_service_s", round(time.monotonic() - started, 1))
