"""The RayService in real pods: the project's image (built from the Dockerfile on a local
stand-in of the Ray base image), run by real kubelets on a three-node Kubernetes next to the
loopback control plane (devstack/cluster: node.py, nodes.py, images.py, external.py): the
first node in the host's network namespace, two more each in a namespace of its own with its
own containerd, kubelet, kube-proxy and pod network.

The pods use the k8s/external overlay: Services without selectors + EndpointSlices under the
names the RayService uses, pointing at the bridge address 10.244.0.1, where the local stack's
RabbitMQ, Redis and Valkey are forwarded for this test only and a Kafka broker of the test
listens (a Kafka client needs the broker's advertised address, see external.py). Credentials
come from the Secret, as in production.

Checked, in order: the RayService Ready and weather-pipeline-serve-svc created; POST /input
through that Service by cluster IP (from the node) and by DNS name (from a client pod), each
tweet counted exactly once in Redis and in Valkey; gRPC Publish and the WebSocket
``/input/stream`` through the Service; the /health readiness probe taking the worker out of
the Service while Kafka is down and back after; the workers, Gateway replicas and consumer
actors spread over the nodes; under load a worker's node drained (the PodDisruptionBudget
respected) and then a node lost outright, each time every 202 counted once in both stores.
"""

from __future__ import annotations

import contextlib
import json
import random
import re
import shutil
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import httpx
import pytest
import yaml

from devstack.cluster import build
from devstack.cluster.control_plane import NODE_NAMES, ControlPlane
from devstack.cluster.external import GCS_REDIS_PORT, PORTS, External, slice_port
from devstack.cluster.node import NODE_IP, Node
from devstack.cluster.nodes import NetnsNode, extra_nodes
from devstack.config import app_settings, stack_config
from kuberay import render as serve_render
from serve_app.settings import Settings

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(3600)]

ROOT = build.ROOT
NAMESPACE = "weather"
RAYSERVICE = "weather-pipeline"
SERVE_SVC = f"{RAYSERVICE}-serve-svc"
READY_TIMEOUT_S = 900.0
COUNT_TIMEOUT_S = 120.0
# Countries no other test sends, so store deltas are this test's tweets only.
COUNTRIES = ("NU", "NF", "PN", "TK", "CX", "CC")
# Serve's gRPC proxy routes by this metadata (several applications are deployed).
GRPC_METADATA = (("application", "ingest"),)
FIGURES = build.HOME / "node" / "figures.json"
# Each node's kubelet offers the machine's 2 CPUs; the pods, two RayClusters at once during an
# upgrade, fit: CPU requests scaled down, limits (what Ray sizes itself from) unchanged.
CPU_REQUESTS = {
    "headGroupSpec/template/spec/containers/0": "100m",
    "workerGroupSpecs/0/template/spec/containers/0": "300m",
    "autoscalerOptions": "100m",
}
# GCS fault tolerance stays on, but the nodes have no Redis image for kuberay/gcs-redis.yaml:
# the host's redis-server stands in for it (External.start_gcs_redis), behind a Service
# without selector of the same name.
GCS_REDIS = "gcs-redis.yaml"
EXTRA_NODES = 2  # besides the host's: three in all
# The pods of a lost node are evicted this long after it turns NotReady (Kubernetes' default
# toleration is 300 s): the Ray pods of the test tolerate a lost node for 10 s only.
EVICT_AFTER_S = 10
# Kubernetes' taint for a node that is shut down for good: the pod garbage collector then
# deletes the pods it held at once (non-graceful node shutdown).
OUT_OF_SERVICE = "node.kubernetes.io/out-of-service=nodeshutdown"


SHORT_TOLERATIONS = [
    {"key": f"node.kubernetes.io/{taint}", "operator": "Exists", "effect": "NoExecute",
     "tolerationSeconds": EVICT_AFTER_S}
    for taint in ("not-ready", "unreachable")
]  # fmt: skip
TOLERATE_BRIEFLY = [
    {"op": "add", "path": f"/spec/rayClusterConfig/{group}/template/spec/tolerations",
     "value": SHORT_TOLERATIONS}
    for group in ("headGroupSpec", "workerGroupSpecs/0")
]  # fmt: skip
WORKER_GROUP = yaml.safe_load((ROOT / "kuberay" / "rayservice.yaml").read_text())["spec"][
    "rayClusterConfig"
]["workerGroupSpecs"][0]
MIN_WORKERS = WORKER_GROUP["minReplicas"]
# Ray sizes each worker at 1 CPU (its pod's limit is 2): the two workers then hold what one
# did before, so the autoscaler test's load still needs a worker more.
WORKER_RAY_CPUS = [
    {"op": "add", "path": "/spec/rayClusterConfig/workerGroupSpecs/0/rayStartParams/num-cpus",
     "value": "1"},
]  # fmt: skip


def gcs_redis_outside() -> list[dict[str, Any]]:
    """The Service ray-gcs-redis (the address gcsFaultToleranceOptions names) without a
    selector, and its EndpointSlice: the test's redis-server on the bridge address."""
    labels = {
        "app.kubernetes.io/name": "ray-gcs-redis",
        "app.kubernetes.io/part-of": "weather-pipeline",
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "ray-gcs-redis", "namespace": NAMESPACE, "labels": labels},
        "spec": {"ports": [{"name": "redis", "port": 6379, "targetPort": GCS_REDIS_PORT}]},
    }
    endpoints = {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": "ray-gcs-redis-external",
            "namespace": NAMESPACE,
            "labels": {"kubernetes.io/service-name": "ray-gcs-redis", **labels},
        },
        "addressType": "IPv4",
        "ports": [{"name": "redis", "port": GCS_REDIS_PORT, "protocol": "TCP"}],
        "endpoints": [{"addresses": [NODE_IP], "conditions": {"ready": True}}],
    }
    return [service, endpoints]


@dataclass
class RealCluster:
    plane: ControlPlane
    node: Node
    external: External
    extra: list[NetnsNode] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)

    def kubectl(self, *args: str, stdin: str | None = None) -> str:
        return self.plane.kubectl(*args, stdin=stdin)

    def get(self, *args: str) -> dict[str, Any]:
        return self.plane.get_json("-n", NAMESPACE, *args)

    def record(self, name: str, value: Any) -> None:
        """Keep a measured figure (printed and written to .devstack/cluster/node/)."""
        self.figures[name] = value
        FIGURES.write_text(json.dumps(self.figures, indent=1))
        print(f"figure {name}: {value}")


# ---------------------------------------------------------------------------- set-up


def copy_manifests(work: Path, settings: Settings) -> Path:
    """kuberay/ (serveConfigV2 rendered from the current serve_config.yaml) and
    k8s/external/ with a secrets.env holding the local stack's credentials, plus the test's
    overlay: endpoints on the bridge, the stack's vhost, CPU requests that fit the nodes,
    short tolerations of a lost node (TOLERATE_BRIEFLY), the GCS Redis outside the cluster."""
    shutil.copytree(ROOT / "kuberay", work / "kuberay", ignore=shutil.ignore_patterns("*.py*"))
    (work / "kuberay" / "serve-config.patch.yaml").write_text(serve_patch())
    kustomization = work / "kuberay" / "kustomization.yaml"
    text = kustomization.read_text()
    assert f"  - {GCS_REDIS}\n" in text, "kuberay/ no longer lists the GCS Redis"
    kustomization.write_text(text.replace(f"  - {GCS_REDIS}\n", ""))
    shutil.copytree(ROOT / "k8s" / "external", work / "external")
    secrets_env = {
        "RABBITMQ_USER": settings.rabbitmq_user,
        "RABBITMQ_PASSWORD": settings.rabbitmq_password.get_secret_value(),
        "REDIS_PASSWORD": settings.redis_password.get_secret_value(),
        "VALKEY_PASSWORD": settings.valkey_password.get_secret_value(),
        # the pods' consumers share the stores with the local ones: one key for all
        "FINGERPRINT_KEY": settings.fingerprint_key.get_secret_value(),
        "auth_token": uuid.uuid4().hex + uuid.uuid4().hex,
    }
    (work / "external" / "secrets.env").write_text(
        "".join(f"{k}={v}\n" for k, v in secrets_env.items())
    )
    patches: list[dict[str, Any]] = []
    slices: dict[str, list[dict[str, Any]]] = {}
    for name, (_, bridge_port) in PORTS.items():
        service, port = slice_port(name)
        port_entry = {"name": port, "port": bridge_port, "protocol": "TCP"}
        slices.setdefault(service, []).append(port_entry)
    for service, ports in slices.items():
        ops = [
            {"op": "replace", "path": "/endpoints/0/addresses/0", "value": NODE_IP},
            {"op": "replace", "path": "/ports", "value": ports},
        ]
        target = {"kind": "EndpointSlice", "name": f"{service}-external"}
        patches.append({"target": target, "patch": json.dumps(ops)})
    vhost = [{"op": "replace", "path": "/data/RABBITMQ_VHOST", "value": settings.rabbitmq_vhost}]
    target = {"kind": "ConfigMap", "name": "weather-pipeline-config"}
    patches.append({"target": target, "patch": json.dumps(vhost)})
    spec = "/spec/rayClusterConfig"
    cpu = [
        {"op": "replace", "path": f"{spec}/{where}/resources/requests/cpu", "value": value}
        for where, value in CPU_REQUESTS.items()
    ]
    ray_patch = cpu + TOLERATE_BRIEFLY + WORKER_RAY_CPUS
    patches.append({"target": {"kind": "RayService"}, "patch": json.dumps(ray_patch)})
    overlay = work / "overlay"
    overlay.mkdir()
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": ["../external", "../kuberay", "gcs-redis.yaml"],
        "patches": patches,
    }
    (overlay / "gcs-redis.yaml").write_text(yaml.safe_dump_all(gcs_redis_outside()))
    (overlay / "kustomization.yaml").write_text(yaml.safe_dump(kustomization, sort_keys=False))
    return overlay


def serve_patch() -> str:
    """The RayService's serveConfigV2 from the current serve_config.yaml (kuberay.render),
    with the test's autoscaling knobs: targets low enough that a few dozen connections from
    this 2-core machine make Serve add replicas beyond one worker's 2 CPUs, and short delays
    so the rise and fall fit in a test (as the bench's overrides do)."""
    patch = yaml.safe_load(serve_render.render())
    config = yaml.safe_load(patch["spec"]["serveConfigV2"])
    for app in config["applications"]:
        for deployment in app.get("deployments", []):
            autoscaling = deployment.get("autoscaling_config")
            if autoscaling:
                target = 8 if deployment["name"] == "Gateway" else 1
                autoscaling |= {"target_ongoing_requests": target, "upscale_delay_s": 2}
                autoscaling |= {"downscale_delay_s": 10}
                if deployment["name"] == "Gateway":  # one on each worker's node
                    autoscaling["min_replicas"] = MIN_WORKERS
    patch["spec"]["serveConfigV2"] = yaml.safe_dump(config, sort_keys=False)
    return yaml.safe_dump(patch, sort_keys=False)


def condition(obj: dict[str, Any], kind: str) -> str | None:
    for c in obj.get("status", {}).get("conditions", []):
        if c.get("type") == kind:
            return c.get("status")
    return None


def wait_for(check, what: str, timeout: float, interval: float = 2.0) -> float:
    """Poll ``check`` (bounded in time); seconds it took."""
    started = time.monotonic()
    deadline = started + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
            if last:
                return time.monotonic() - started
        except (RuntimeError, httpx.HTTPError, OSError) as error:
            last = error
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}; last: {last!r}")


def diagnostics(cluster: RealCluster) -> str:
    """What to look at when the RayService does not come up."""
    parts = []
    for args in (["get", "pods", "-o", "wide"], ["get", "rayservice", "-o", "yaml"]):
        try:
            parts.append(cluster.kubectl("-n", NAMESPACE, *args))
        except RuntimeError as error:
            parts.append(str(error))
    parts.append(cluster.plane.tail("ray-operator", 30))
    parts.append(cluster.node.tail("kubelet", 30))
    return "\n".join(parts)


@pytest.fixture(scope="module")
def cluster(devstack_infra, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealCluster]:
    """Control plane + three real nodes + forwarders + the pods' Kafka + the RayService,
    Ready, next to the shared local stack (``devstack_infra``: started if needed, left
    running). Everything of ours stopped by pid and removed by name afterwards, whatever
    happened."""
    node = Node(log=print)
    extra = extra_nodes(node, EXTRA_NODES)
    plane = node.control_plane()
    plane.extra_tokens += [n.token_line() for n in extra]
    real = RealCluster(plane, node, External(node), extra)
    settings = app_settings()  # the local stack's, fingerprint_key included
    try:
        started = time.monotonic()
        plane.up()
        # KWOK's fake nodes would take pods that never run: only the real node stays.
        plane.kubectl("delete", "node", *NODE_NAMES)
        real.record("control_plane_up_s", round(time.monotonic() - started, 1))
        started = time.monotonic()
        node.up(plane)
        for more in extra:
            more.up(plane)
        real.record("nodes_ready_s", round(time.monotonic() - started, 1))
        targets = {
            "rabbitmq": settings.rabbitmq_port,
            "rabbitmq-management": stack_config.rabbitmq_management_port,
            "redis": settings.redis_port,
            "valkey": settings.valkey_port,
        }
        started = time.monotonic()
        real.external.up(targets)
        real.external.start_gcs_redis(settings.redis_password.get_secret_value())
        real.record("external_up_s", round(time.monotonic() - started, 1))
        overlay = copy_manifests(tmp_path_factory.mktemp("pods"), settings)
        strict = ["apply", "--server-side", "--validate=strict"]
        real.kubectl(*strict, "-f", str(overlay.parent / "external" / "namespace.yaml"))
        real.kubectl(*strict, "--dry-run=server", "-k", str(overlay))
        started = time.monotonic()
        real.kubectl(*strict, "-k", str(overlay))
        try:
            took = wait_for(
                lambda: condition(real.get("rayservice", RAYSERVICE), "Ready") == "True",
                "RayService Ready",
                READY_TIMEOUT_S,
                interval=3,
            )
        except AssertionError as error:
            raise AssertionError(f"{error}\n{diagnostics(real)}") from None
        real.record("rayservice_ready_s", round(took, 1))
        # Ready counts serve endpoints; kube-proxy programs the Service a moment later.
        base = f"http://{serve_service(real)['spec']['clusterIP']}:8000"
        took = wait_for(
            lambda: httpx.get(f"{base}/health", timeout=5).status_code == 200,
            "/health through the Serve Service",
            120,
            interval=1,
        )
        real.record("serve_service_answers_after_ready_s", round(took, 1))
        yield real
    finally:
        real.external.down()
        for more in reversed(extra):
            more.down()
        node.down()
        plane.stop()


# ---------------------------------------------------------------------------- helpers


def serve_service(cluster: RealCluster) -> dict[str, Any]:
    return cluster.get("service", SERVE_SVC)


def make_tweets(n: int) -> list[dict[str, str]]:
    """``n`` tweets with unique ids over this test's countries."""
    run = uuid.uuid4().hex[:10]
    rng = random.Random(run)
    weathers = Settings().weather_values.split(",")
    return [
        {
            "id": f"pods-{run}-{i}",
            "description": f"real pod test {i} ☂",
            "country": rng.choice(COUNTRIES),
            "weather": rng.choice(weathers),
        }
        for i in range(n)
    ]


def stats(base: str) -> dict[str, Any]:
    response = httpx.get(f"{base}/stats", timeout=10)
    response.raise_for_status()
    return response.json()


def our_counts(snapshot: dict[str, Any]) -> dict[str, dict[str, int]]:
    """Per store: this test's countries' counts."""
    return {
        store: {c: snapshot[store]["by_country"].get(c, 0) for c in COUNTRIES}
        for store in ("redis", "valkey")
    }


def markers(tweets: list[dict[str, str]]) -> dict[str, list[str | None]]:
    """Per store, each tweet's ``tweets:seen:<id>`` marker (``fingerprint:CC:weather``),
    read from the local stack's Redis and Valkey on loopback (None: not counted)."""
    import redis

    from serve_app.store.core import KEYS

    settings = Settings()
    keys = [f"{KEYS.seen_prefix}{t['id']}" for t in tweets]
    stores = {
        "redis": (settings.redis_port, settings.redis_password.get_secret_value()),
        "valkey": (settings.valkey_port, settings.valkey_password.get_secret_value()),
    }
    found = {}
    for store, (port, password) in stores.items():
        client = redis.Redis(host="127.0.0.1", port=port, password=password or None)
        try:
            found[store] = [v.decode() if v else None for v in client.mget(keys)]
        finally:
            client.close()
    return found


def expect_counted(base: str, before: dict[str, Any], tweets: list[dict[str, str]]) -> None:
    """Every tweet counted exactly once, under its own content, in Redis and in Valkey: its
    ``tweets:seen:<id>`` marker (set NX by the same store script that adds it to the
    counters) names its country and weather, and the counts of this test's countries grew by
    at least these tweets. (Other tests may send the same countries at the same time, so
    the marker, not the counter delta, is the exact per-tweet check.)"""
    expected = [f"{t['country']}:{t['weather']}" for t in tweets]

    def counted() -> bool:
        found = markers(tweets)
        return all(
            [m.split(":", 1)[1] if m else None for m in found[store]] == expected for store in found
        )

    wait_for(counted, "every tweet counted in both stores", COUNT_TIMEOUT_S)
    sent = Counter(t["country"] for t in tweets)
    start, now = our_counts(before), our_counts(stats(base))
    for store in start:
        for country in COUNTRIES:
            grown = now[store][country] - start[store][country]
            assert grown >= sent.get(country, 0), (store, country, grown, sent)


# ---------------------------------------------------------------------------- tests


def test_rayservice_ready_and_serve_service(cluster: RealCluster) -> None:
    rayservice = cluster.get("rayservice", RAYSERVICE)
    assert condition(rayservice, "Ready") == "True"
    service = serve_service(cluster)
    ports = {p["name"]: p["port"] for p in service["spec"]["ports"]}
    assert ports == {"serve": 8000, "serve-grpc": 9000}
    pods = cluster.get("pods", "-l", "ray.io/is-ray-node=yes")["items"]
    assert pods and all(p["status"]["phase"] == "Running" for p in pods)
    images = {c["image"] for p in pods for c in p["spec"]["containers"]}
    assert images == {"weather-pipeline:0.1.0"}


def test_post_through_the_service_by_cluster_ip(cluster: RealCluster) -> None:
    base = f"http://{serve_service(cluster)['spec']['clusterIP']}:8000"
    before = stats(base)
    tweets = make_tweets(60)
    started = time.monotonic()
    for tweet in tweets[:20]:
        response = httpx.post(f"{base}/input", json=tweet, timeout=30)
        assert response.status_code == 202, response.text
    response = httpx.post(f"{base}/input", json=tweets[20:], timeout=30)
    assert response.status_code == 202, response.text
    assert response.json()["ids"] == [t["id"] for t in tweets[20:]]
    cluster.record("post_60_by_cluster_ip_s", round(time.monotonic() - started, 2))
    expect_counted(base, before, tweets)


CLIENT_SCRIPT = """
import json, sys, urllib.request
base = "http://{service}.{namespace}.svc.cluster.local:8000"
tweets = json.loads(sys.argv[1])
statuses = []
for tweet in tweets:
    request = urllib.request.Request(base + "/input", data=json.dumps(tweet).encode(),
                                     headers={{"Content-Type": "application/json"}})
    with urllib.request.urlopen(request, timeout=30) as response:
        statuses.append(response.status)
print(json.dumps({{"statuses": statuses}}))
"""


def test_post_by_dns_name_from_a_client_pod(cluster: RealCluster) -> None:
    base = f"http://{serve_service(cluster)['spec']['clusterIP']}:8000"
    before = stats(base)
    tweets = make_tweets(20)
    script = CLIENT_SCRIPT.format(service=SERVE_SVC, namespace=NAMESPACE)
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "client", "namespace": NAMESPACE},
        "spec": {
            "restartPolicy": "Never",
            "enableServiceLinks": False,
            "securityContext": {"runAsNonRoot": True, "runAsUser": 1000, "runAsGroup": 100},
            "containers": [
                {
                    "name": "client",
                    "image": "weather-pipeline:0.1.0",
                    "imagePullPolicy": "IfNotPresent",
                    "command": ["python", "-c", script, json.dumps(tweets)],
                    "resources": {"requests": {"cpu": "10m", "memory": "64Mi"}},
                    "securityContext": {
                        "allowPrivilegeEscalation": False,
                        "capabilities": {"drop": ["ALL"]},
                    },
                }
            ],
        },
    }
    cluster.kubectl("apply", "--server-side", "-f", "-", stdin=json.dumps(pod))
    try:
        took = wait_for(
            lambda: cluster.get("pod", "client")["status"]["phase"] in ("Succeeded", "Failed"),
            "client pod to finish",
            180,
        )
        cluster.record("client_pod_run_s", round(took, 1))
        logs = cluster.kubectl("-n", NAMESPACE, "logs", "client")
        assert cluster.get("pod", "client")["status"]["phase"] == "Succeeded", logs
        result = json.loads(logs.strip().splitlines()[-1])
        assert result["statuses"] == [202] * len(tweets)
    finally:
        cluster.kubectl("-n", NAMESPACE, "delete", "pod", "client", "--wait=false")
    expect_counted(base, before, tweets)


def test_grpc_publish_through_the_service(cluster: RealCluster) -> None:
    import grpc

    from serve_app.pb.weather.v1 import weather_pb2, weather_pb2_grpc

    cluster_ip = serve_service(cluster)["spec"]["clusterIP"]
    base = f"http://{cluster_ip}:8000"
    before = stats(base)
    tweets = make_tweets(5)
    with grpc.insecure_channel(f"{cluster_ip}:9000") as channel:
        stub = weather_pb2_grpc.PublisherStub(channel)
        for tweet in tweets:
            reply = stub.Publish(weather_pb2.Tweet(**tweet), metadata=GRPC_METADATA, timeout=30)
            assert reply.id == tweet["id"]
    expect_counted(base, before, tweets)


def test_websocket_stream_through_the_service(cluster: RealCluster) -> None:
    """``/input/stream`` through the RayService's Serve proxy: one acknowledgement per frame
    (single tweets and an array), in order, each tweet counted once in both stores."""
    from websockets.sync.client import connect

    base = f"http://{serve_service(cluster)['spec']['clusterIP']}:8000"
    before = stats(base)
    tweets = make_tweets(12)
    frames = [json.dumps(t) for t in tweets[:8]] + [json.dumps(tweets[8:])]
    with connect(base.replace("http://", "ws://", 1) + "/input/stream", open_timeout=30) as ws:
        for frame in frames:
            ws.send(frame)
        acks = [json.loads(ws.recv(timeout=30)) for _ in frames]
    assert [a["frame"] for a in acks] == list(range(len(frames)))
    assert [a["status"] for a in acks] == [202] * len(frames), acks
    assert [a["id"] for a in acks[:8]] + acks[8]["ids"] == [t["id"] for t in tweets]
    expect_counted(base, before, tweets)


def ready_worker_ips(cluster: RealCluster) -> set[str]:
    """Worker pod IPs among the serve Service's ready endpoints."""
    workers = cluster.get("pods", "-l", "ray.io/node-type=worker")["items"]
    worker_ips = {p["status"].get("podIP") for p in workers}
    slices = cluster.get("endpointslices", "-l", f"kubernetes.io/service-name={SERVE_SVC}")
    ready = {
        address
        for s in slices["items"]
        for e in s.get("endpoints") or []
        if e.get("conditions", {}).get("ready")
        for address in e["addresses"]
    }
    return ready & worker_ips


def test_health_readiness_follows_kafka(cluster: RealCluster) -> None:
    """Kafka down: the worker's /health fails its readiness probe and it leaves the Serve
    Service's endpoints; Kafka back: it returns."""
    before = ready_worker_ips(cluster)
    assert before, "no ready worker behind the Serve Service"
    cluster.external.stop_kafka()
    try:
        took = wait_for(lambda: not ready_worker_ips(cluster), "worker out of endpoints", 180)
        cluster.record("worker_out_of_endpoints_after_kafka_stop_s", round(took, 1))
    finally:
        cluster.external.start_kafka()
    took = wait_for(lambda: ready_worker_ips(cluster) == before, "worker back in endpoints", 300)
    cluster.record("worker_back_after_kafka_start_s", round(took, 1))


class RetryingClient:
    """POSTs unique tweets one after another through the Service, retrying each (same id)
    on 503 or a connection error until it is accepted: what a well-behaved client does
    during an upgrade. Records the accepted tweets and the longest wait for a 202."""

    def __init__(self, base: str, retry_on: tuple[int | None, ...] = (None, 503)) -> None:
        self.base = base
        self.retry_on = retry_on
        self.seen: Counter[int | None] = Counter()
        self.accepted: list[dict[str, str]] = []
        self.retries = 0
        self.longest_gap_s = 0.0
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self.run_safely, daemon=True)

    def run_safely(self) -> None:
        try:
            self.run()
        except BaseException as error:  # reported by the test thread (__exit__)
            self.error = error

    def run(self) -> None:
        last_ok = time.monotonic()
        with httpx.Client(timeout=10) as client:
            while not self.stop.is_set():
                tweet = make_tweets(1)[0]
                deadline = time.monotonic() + 600
                while time.monotonic() < deadline:
                    try:
                        status = client.post(f"{self.base}/input", json=tweet).status_code
                    except httpx.HTTPError:
                        status = None
                    self.seen[status] += 1
                    if status == 202:
                        self.accepted.append(tweet)
                        now = time.monotonic()
                        self.longest_gap_s = max(self.longest_gap_s, now - last_ok)
                        last_ok = now
                        break
                    assert status in self.retry_on, f"unexpected status {status}"
                    self.retries += 1
                    time.sleep(0.5)
                else:
                    raise AssertionError(f"tweet {tweet['id']} never accepted")
                time.sleep(0.05)

    def __enter__(self) -> RetryingClient:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=630)
        if self.error is not None:
            raise AssertionError(f"client failed: {self.error!r}")


def active_cluster(cluster: RealCluster) -> str | None:
    status = cluster.get("rayservice", RAYSERVICE).get("status", {})
    return status.get("activeServiceStatus", {}).get("rayClusterName")


@pytest.mark.multi_node
@pytest.mark.node_faults
def test_zero_downtime_upgrade(cluster: RealCluster) -> None:
    """A change to rayClusterConfig under a retrying client: a new RayCluster comes up, the
    Service switches to it, the old one is deleted, and every accepted tweet is counted
    exactly once in both stores."""
    base = f"http://{serve_service(cluster)['spec']['clusterIP']}:8000"
    old = active_cluster(cluster)
    assert old
    before = stats(base)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    patch = {"metadata": {"annotations": {"weather-pipeline/upgrade": stamp}}}
    patch = {"spec": {"rayClusterConfig": {"headGroupSpec": {"template": patch}}}}
    with RetryingClient(base) as client:
        time.sleep(5)
        started = time.monotonic()
        cluster.kubectl(
            "-n", NAMESPACE, "patch", "rayservice", RAYSERVICE, "--type=merge",
            "-p", json.dumps(patch),
        )  # fmt: skip
        wait_for(lambda: active_cluster(cluster) not in (None, old), "the switch", 900, 3)
        cluster.record("upgrade_switch_s", round(time.monotonic() - started, 1))
        clusters = lambda: {c["metadata"]["name"] for c in cluster.get("rayclusters")["items"]}  # noqa: E731
        wait_for(lambda: old not in clusters(), "the old RayCluster deleted", 600, 3)
        cluster.record("upgrade_old_cluster_deleted_s", round(time.monotonic() - started, 1))
        time.sleep(5)
    assert client.thread.is_alive() is False
    cluster.record("upgrade_longest_wait_for_202_s", round(client.longest_gap_s, 1))
    cluster.record("upgrade_retries", client.retries)
    assert client.accepted
    assert condition(cluster.get("rayservice", RAYSERVICE), "Ready") == "True"
    expect_counted(base, before, client.accepted)


def worker_pods(cluster: RealCluster) -> list[str]:
    """The worker pods not being deleted, oldest first."""
    pods = cluster.get("pods", "-l", "ray.io/node-type=worker")["items"]
    return [
        name
        for _, name in sorted(
            (p["metadata"]["creationTimestamp"], p["metadata"]["name"])
            for p in pods
            if not p["metadata"].get("deletionTimestamp")
        )
    ]


def refusal_reason(answer: httpx.Response) -> str:
    """The start of a 503's ``error`` (HAProxy's, the limiter's or admission's), its
    figures as N so that one reason is counted once."""
    try:
        text = str(answer.json().get("error", ""))
    except ValueError:
        text = answer.text
    return re.sub(r"\d+(\.\d+)?", "N", text.split("; retry with")[0])[:120]


def serve_replicas(cluster: RealCluster) -> dict[str, int]:
    """Live Serve replicas per deployment (Ray's state API, read inside the head pod)."""
    placed = actor_nodes(cluster)
    return {name.rsplit(":", 1)[-1]: len(nodes) for name, nodes in placed.items()
            if name.startswith("ServeReplica")}  # fmt: skip


# Serve replicas per deployment with no load (serve_patch: the Gateway's minimum raised).
IDLE_REPLICAS = {
    "Gateway": MIN_WORKERS, "KafkaWriter": 1, "RabbitWriter": 1, "ConsumerSupervisor": 1,
    "Dashboard": 1,
}  # fmt: skip


class Load:
    """``connections`` threads POSTing single tweets through the Service until stopped."""

    def __init__(self, base: str, connections: int = 48) -> None:
        self.base = base
        self.stop = threading.Event()
        self.statuses: Counter[int | None] = Counter()
        self.refusals: Counter[str] = Counter()
        """What the 503s said (the start of their ``error``): which limit refused."""
        self.threads = [threading.Thread(target=self.run, daemon=True) for _ in range(connections)]

    def run(self) -> None:
        with httpx.Client(timeout=10) as client:
            while not self.stop.is_set():
                try:
                    answer = client.post(f"{self.base}/input", json=make_tweets(1)[0])
                except httpx.HTTPError:
                    self.statuses[None] += 1
                    continue
                self.statuses[answer.status_code] += 1
                if answer.status_code == 503:
                    self.refusals[refusal_reason(answer)] += 1

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=30)


@pytest.mark.multi_node
@pytest.mark.node_faults
def test_workers_gateways_and_consumers_spread_over_the_nodes(cluster: RealCluster) -> None:
    """The workers on two nodes, the Gateway replicas (min_replicas 2 in this test) and the
    consumer actors (SPREAD) on both, as Serve and Ray place them. Best effort in Serve and
    Ray (a replica or actor placed while one worker is up stays there), so not in
    ``make test``. Before the autoscaler test: after a scale-down the workers left may share
    a node (a spread constraint acts only when a pod is scheduled) and Serve does not move
    replicas (docs/kubernetes.md, "Scaling")."""
    wait_for(lambda: workers_on_two_nodes(cluster), "workers on two nodes", 300, 3)
    placed = wait_for_spread(cluster)
    cluster.record("placement", placed)


def test_autoscaler_adds_a_worker_under_load_and_removes_it_idle(cluster: RealCluster) -> None:
    """Load: Serve adds replicas beyond the minimum workers' CPUs and the in-tree autoscaler
    adds a worker pod, with no tweet refused for a backlog admission could not read; idle:
    Serve returns to its minimum replicas and the autoscaler removes every worker left
    without work (the added one may keep a replica: Serve does not move running ones)."""
    base = f"http://{serve_service(cluster)['spec']['clusterIP']}:8000"
    first = back_to_the_minimum_of_workers(cluster)
    started = time.monotonic()
    with Load(base) as load:
        seen: dict[str, Any] = {}

        def grown() -> bool:
            with contextlib.suppress(RuntimeError, StopIteration):
                seen["replicas"] = serve_replicas(cluster)
            seen["statuses"], seen["refusals"] = dict(load.statuses), dict(load.refusals)
            return len(worker_pods(cluster)) > MIN_WORKERS

        try:
            wait_for(grown, "a worker pod beyond the minimum", 600, 3)
        except AssertionError as error:
            raise AssertionError(f"{error}; Serve and the load then: {seen}") from None
        cluster.record("autoscaler_serve_replicas_at_growth", seen.get("replicas"))
        cluster.record("autoscaler_worker_added_s", round(time.monotonic() - started, 1))
        added = [p for p in worker_pods(cluster) if p not in first]
        wait_for(
            lambda: ray_pods_serving(cluster, names=added),
            "the new worker in Ray (and Ready if it holds a replica)",
            600,
            3,
        )
        cluster.record("autoscaler_worker_in_ray_s", round(time.monotonic() - started, 1))
        cluster.record(
            "autoscaler_new_worker_ready",
            {p: condition(cluster.get("pod", p), "Ready") for p in added},
        )
    cluster.record("autoscaler_load_statuses", dict(load.statuses))
    cluster.record("autoscaler_load_refusals", dict(load.refusals))
    blind = {reason: n for reason, n in load.refusals.items() if "unknown" in reason}
    assert not blind, f"admission could not read a broker's backlog: {blind}"
    assert load.statuses[202] > 0
    idle = time.monotonic()
    wait_for(lambda: serve_replicas(cluster) == IDLE_REPLICAS, "Serve back at its minimum", 600, 5)
    cluster.record("autoscaler_serve_minimum_s", round(time.monotonic() - idle, 1))
    left: dict[str, Any] = {}
    wait_for(lambda: no_idle_worker(cluster, left), "every idle worker removed", 900, 5)
    cluster.record("autoscaler_idle_workers_removed_s", round(time.monotonic() - idle, 1))
    cluster.record("autoscaler_workers_left", len(left["workers"]))


def no_idle_worker(cluster: RealCluster, seen: dict[str, Any]) -> bool:
    """The minimum of workers, or more each still holding work: Serve's default (spread)
    placement does not move a replica off a worker added earlier, and a worker with a
    replica is not idle (docs/kubernetes.md, "Scaling"). ``seen`` keeps what was found."""
    workers = set(worker_pods(cluster))
    seen["workers"], seen["holding_work"] = sorted(workers), workers_holding_work(cluster)
    return len(workers) == MIN_WORKERS or workers == seen["holding_work"]


def back_to_the_minimum_of_workers(cluster: RealCluster) -> list[str]:
    """The minimum of workers, for a test that needs the autoscaler to add one. A worker
    added earlier (by a load, or while the cluster came up) that still holds a replica is
    never idle, so it stays: the newest such workers are deleted (Serve and the consumer
    supervisor place their replicas and actors on the others; KubeRay's replacement is idle
    and the autoscaler removes it)."""
    wait_for(lambda: no_idle_worker(cluster, {}), "no idle worker", 600, 5)
    extra = worker_pods(cluster)[MIN_WORKERS:]
    cluster.record("workers_deleted_for_the_minimum", extra)
    if extra:
        cluster.kubectl("-n", NAMESPACE, "delete", "pod", "--wait=false", *extra)
        wait_for(lambda: len(worker_pods(cluster)) == MIN_WORKERS, "the minimum of workers", 900, 5)
    first = worker_pods(cluster)
    wait_for(lambda: ray_pods_serving(cluster, names=first), "the workers serving", 600, 3)
    return first


def ray_pods(cluster: RealCluster) -> dict[str, tuple[str, int]]:
    """Ray pod name -> (node type, restarts of its Ray container)."""
    return {
        p["metadata"]["name"]: (
            p["metadata"]["labels"].get("ray.io/node-type", "?"),
            sum(c.get("restartCount", 0) for c in p["status"].get("containerStatuses", [])),
        )
        for p in ray_pod_items(cluster)
    }


HEAD_LOSS_WATCH_S = 150  # past Ray's 60 s GCS reconnect timeout of the workers' raylets


@pytest.mark.multi_node
@pytest.mark.node_faults
def test_head_pod_deletion_under_load(cluster: RealCluster) -> None:
    """The head pod deleted under a retrying client, with GCS fault tolerance (the GCS Redis
    outside the cluster, see gcs_redis_outside): the new head reloads the GCS from it, the
    worker keeps its Ray (no restart) and its Serve proxy keeps answering. The longest wait
    for a 202 is measured over a window longer than Ray's default 60 s GCS reconnect timeout,
    not bounded. What must hold: the worker's Ray was not restarted, nothing accepted is lost
    (every 202 counted exactly once in both stores) and the RayService is Ready again with
    every Ray pod serving (:func:`pod_serving`)."""
    base = f"http://{serve_service(cluster)['spec']['clusterIP']}:8000"
    pods_before = ray_pods(cluster)
    head = next(name for name, (kind, _) in pods_before.items() if kind == "head")
    before = stats(base)
    retry_on = (None, 404, 500, 502, 503, 504)
    with RetryingClient(base, retry_on=retry_on) as client:
        time.sleep(5)
        started = time.monotonic()
        cluster.kubectl("-n", NAMESPACE, "delete", "pod", head, "--wait=false")
        time.sleep(HEAD_LOSS_WATCH_S)

        def recovered() -> bool:
            if head in pod_nodes(cluster) or not ray_pods_serving(cluster, len(pods_before)):
                return False
            return condition(cluster.get("rayservice", RAYSERVICE), "Ready") == "True"

        wait_for(recovered, "every Ray pod serving and the RayService Ready", 900, 3)
        cluster.record("head_deleted_serving_again_s", round(time.monotonic() - started, 1))
        accepted_then = len(client.accepted)
        wait_for(lambda: len(client.accepted) > accepted_then + 20, "202s again", 600, 2)
    cluster.record("head_deleted_pods_before", pods_before)
    cluster.record("head_deleted_pods_after", ray_pods(cluster))
    cluster.record("head_deleted_longest_wait_for_202_s", round(client.longest_gap_s, 1))
    cluster.record("head_deleted_statuses", {str(k): v for k, v in client.seen.items()})
    expect_counted(base, before, client.accepted)
    workers = {n: restarts for n, (kind, restarts) in pods_before.items() if kind == "worker"}
    after = ray_pods(cluster)
    assert {n: after.get(n, ("gone", -1))[1] for n in workers} == workers, (
        "GCS fault tolerance: the worker's Ray must survive the head",
        pods_before,
        after,
    )


# ---------------------------------------------------------------------------- several nodes

PLACEMENT_SCRIPT = """
import json, ray
from ray.util.state import list_actors
ray.init(address="auto", logging_level="ERROR")
ips = {n["NodeID"]: n["NodeManagerAddress"] for n in ray.nodes() if n["Alive"]}
actors = list_actors(filters=[("state", "=", "ALIVE")], limit=2000, raise_on_missing_output=False)
placed = [[a.class_name, a.name, ips.get(a.node_id)] for a in actors]
print("PLACED " + json.dumps({"nodes": sorted(ips.values()), "actors": placed}))
"""
# The driver also prints the autoscaler's events ("(autoscaler +0s) Resized to 3 CPUs.") to
# stdout, before or after that line: the answer is the line with this mark.
PLACED_MARK = "PLACED "


def ray_pod_items(cluster: RealCluster) -> list[dict[str, Any]]:
    """The Ray pods, as the API server has them, but those being deleted."""
    pods = cluster.get("pods", "-l", "ray.io/is-ray-node=yes")["items"]
    return [p for p in pods if not p["metadata"].get("deletionTimestamp")]


def pod_nodes(
    cluster: RealCluster, items: list[dict[str, Any]] | None = None
) -> dict[str, tuple[str, str, str]]:
    """Ray pod name -> (node type, Kubernetes node, pod IP), pods not being deleted (of
    ``items``, if given)."""
    return {
        p["metadata"]["name"]: (
            p["metadata"]["labels"].get("ray.io/node-type", "?"),
            p["spec"].get("nodeName", ""),
            p["status"].get("podIP", ""),
        )
        for p in (ray_pod_items(cluster) if items is None else items)
    }


class RayView(NamedTuple):
    """What the head's Ray knows: the IPs of its live nodes and [class, name, node IP] of
    every live actor."""

    nodes: set[str]
    actors: list[list[str]]


def ray_view(cluster: RealCluster, pods: dict[str, tuple[str, str, str]]) -> RayView:
    """Ray's live nodes and actors (its state API, read inside the head pod of ``pods``, as
    :func:`pod_nodes` returns them)."""
    head = next(name for name, (kind, _, _) in pods.items() if kind == "head")
    out = cluster.kubectl(
        "-n", NAMESPACE, "exec", head, "-c", "ray-head", "--", "python", "-c", PLACEMENT_SCRIPT
    )
    placed = [line for line in out.splitlines() if line.startswith(PLACED_MARK)]
    if not placed:
        raise RuntimeError(f"no placement in the head's answer: {out[-500:]!r}")
    found = json.loads(placed[-1].removeprefix(PLACED_MARK))
    return RayView(set(found["nodes"]), found["actors"])


def actor_nodes(cluster: RealCluster) -> dict[str, list[str]]:
    """Ray actor class -> the Kubernetes nodes its live actors run on."""
    pods = pod_nodes(cluster)
    by_ip = {ip: node for _, node, ip in pods.values()}
    placed: dict[str, list[str]] = {}
    for class_name, _name, ip in ray_view(cluster, pods).actors:
        placed.setdefault(class_name, []).append(by_ip.get(ip, f"? {ip}"))
    return placed


# Serve's per-node proxies: they need no CPU, so a worker holding only them is idle for the
# Ray autoscaler.
PROXY_ACTORS = {"ProxyActor", "HAProxyManager"}


def workers_holding_work(cluster: RealCluster) -> set[str]:
    """Worker pods on which a Serve replica or a consumer actor lives (not only proxies)."""
    pods = pod_nodes(cluster)
    actors = ray_view(cluster, pods).actors
    busy = {ip for class_name, _, ip in actors if class_name not in PROXY_ACTORS}
    return {name for name, (kind, _, ip) in pods.items() if kind == "worker" and ip in busy}


SERVE_REPLICA = "ServeReplica:"


def pod_serving(pod: dict[str, Any], view: RayView) -> bool:
    """A Ray pod up as it should be: the head Ready; a worker a live Ray node, and Ready if
    it holds a Serve replica. A worker holding none has no Serve proxy (Ray starts one only
    where replicas run), so it is unready and out of the Serve Service by design
    (docs/kubernetes.md, "Probes"), yet it is in Ray and runs consumer actors."""
    ready = condition(pod, "Ready") == "True"
    if pod["metadata"]["labels"].get("ray.io/node-type") == "head":
        return ready
    ip = pod["status"].get("podIP", "")
    holds_replica = any(c.startswith(SERVE_REPLICA) and at == ip for c, _, at in view.actors)
    return ip in view.nodes and (ready or not holds_replica)


def ray_pods_serving(
    cluster: RealCluster, at_least: int = 0, names: list[str] | None = None
) -> bool:
    """``at_least`` Ray pods, a head among them, and every one (of ``names``, if given)
    serving as :func:`pod_serving` says."""
    items = ray_pod_items(cluster)
    pods = pod_nodes(cluster, items)
    if len(items) < at_least or not any(kind == "head" for kind, _, _ in pods.values()):
        return False
    view = ray_view(cluster, pods)
    chosen = [p for p in items if names is None or p["metadata"]["name"] in names]
    return bool(chosen) and all(pod_serving(p, view) for p in chosen)


def workers_on_two_nodes(cluster: RealCluster) -> bool:
    """At least the minimum of workers running, on two Kubernetes nodes at least (a worker
    the autoscaler adds beyond the nodes may share one)."""
    pods = cluster.get("pods", "-l", "ray.io/node-type=worker")["items"]
    nodes = [
        p["spec"].get("nodeName")
        for p in pods
        if not p["metadata"].get("deletionTimestamp") and p["status"].get("phase") == "Running"
    ]
    return len(nodes) >= MIN_WORKERS and len(set(nodes)) >= 2


def wait_for_spread(cluster: RealCluster, timeout: float = 300) -> dict[str, list[str]]:
    """Gateway replicas and the consumer actors each on two nodes at least."""
    found: dict[str, list[str]] = {}

    def spread() -> bool:
        found.clear()
        found.update(actor_nodes(cluster))
        wanted = ("ServeReplica:ingest:Gateway", "KafkaConsumer", "RabbitConsumer")
        gateways = set(found.get(wanted[0], []))
        consumers = set(found.get(wanted[1], []) + found.get(wanted[2], []))
        return len(gateways) >= 2 and len(consumers) >= 2

    try:
        wait_for(spread, "Gateways and consumers on two nodes at least", timeout, 5)
    except AssertionError as error:
        raise AssertionError(f"{error}; actors on nodes: {found}") from None
    return dict(found)


def worker_node_without_head(cluster: RealCluster, among: set[str] | None = None) -> str:
    """A node (of ``among``, if given) that runs a worker and not the head: the nodes the
    tests below take away."""
    pods = pod_nodes(cluster).values()
    head_nodes = {node for kind, node, _ in pods if kind == "head"}
    workers = sorted({node for kind, node, _ in pods if kind == "worker"} - head_nodes)
    workers = [w for w in workers if among is None or w in among]
    assert workers, f"no worker without the head on {among or 'any node'}: {list(pods)}"
    return workers[0]


def full_service(cluster: RealCluster, base: str, count: int) -> bool:
    """At least ``count`` Ray pods, every one serving (:func:`ray_pods_serving`: none pending),
    workers on two nodes, the RayService Ready, /health 200. More pods than before are fine:
    the autoscaler may add a worker while replicas wait for a place."""
    if not (ray_pods_serving(cluster, count) and workers_on_two_nodes(cluster)):
        return False
    if condition(cluster.get("rayservice", RAYSERVICE), "Ready") != "True":
        return False
    return httpx.get(f"{base}/health", timeout=5).status_code == 200


RETRY_ON = (None, 404, 500, 502, 503, 504)


@pytest.mark.multi_node
def test_drain_of_a_worker_node_under_load(cluster: RealCluster) -> None:
    """``kubectl drain`` of a worker's node under a retrying client: the eviction goes through
    the workers' PodDisruptionBudget (one worker always available), the worker comes back on
    another node, and every 202 is counted once in both stores."""
    base = f"http://{serve_service(cluster)['spec']['clusterIP']}:8000"
    count = len(pod_nodes(cluster))
    wait_for(lambda: full_service(cluster, base, count), "full service before", 600, 3)
    target = worker_node_without_head(cluster)
    pdb = cluster.get("pdb", "ray-workers")
    assert pdb["status"]["disruptionsAllowed"] >= 1, pdb["status"]
    before = stats(base)
    with RetryingClient(base, retry_on=RETRY_ON) as client:
        time.sleep(5)
        started = time.monotonic()
        try:
            cluster.kubectl(
                "drain", target, "--ignore-daemonsets", "--delete-emptydir-data",
                "--timeout=500s", "--grace-period=60",
            )  # fmt: skip
            cluster.record("drain_s", round(time.monotonic() - started, 1))
            wait_for(lambda: full_service(cluster, base, count), "full service after drain", 900, 3)
            cluster.record("drain_full_service_s", round(time.monotonic() - started, 1))
            accepted_then = len(client.accepted)
            wait_for(lambda: len(client.accepted) > accepted_then + 20, "202s again", 300, 2)
            left_on_target = [
                name for name, (_, node, _) in pod_nodes(cluster).items() if node == target
            ]
        finally:
            cluster.kubectl("uncordon", target)  # the rounds after it need the node
    assert not left_on_target, f"Ray pods still on the drained {target}: {left_on_target}"
    cluster.record("drain_longest_wait_for_202_s", round(client.longest_gap_s, 1))
    cluster.record("drain_statuses", {str(k): v for k, v in client.seen.items()})
    assert client.accepted
    expect_counted(base, before, client.accepted)


@pytest.mark.multi_node
def test_node_lost_under_load(cluster: RealCluster) -> None:
    """A worker's node lost outright under a retrying client: its kubelet, containerd, shims
    and containers killed by pid at once. The node turns NotReady, its pods are evicted after
    EVICT_AFTER_S, the node is marked out of service (the operator's step for a machine lost
    for good), KubeRay starts a new worker on a node left, Serve and the consumer actors
    move there, and every 202 is counted once in both stores. Recorded: the time until full
    service (:func:`full_service`)."""
    base = f"http://{serve_service(cluster)['spec']['clusterIP']}:8000"
    count = len(pod_nodes(cluster))
    wait_for(lambda: full_service(cluster, base, count), "full service before", 600, 3)
    # a namespace node: the host's node holds the bridge, DNS and forwarders of all three
    target = worker_node_without_head(cluster, among={n.name for n in cluster.extra})
    lost = next(n for n in cluster.extra if n.name == target)
    pods_before = pod_nodes(cluster)
    cluster.record("node_lost_pods_before", pods_before)
    doomed = [name for name, (_, node, _) in pods_before.items() if node == target]
    assert doomed, f"no Ray pod on {target}: {pods_before}"
    before = stats(base)
    with RetryingClient(base, retry_on=RETRY_ON) as client:
        time.sleep(5)
        started = time.monotonic()
        killed = lost.kill()
        cluster.record("node_lost_killed_pids", len(killed))
        wait_for(lambda: not ready_on(cluster, target), "the node NotReady", 180, 2)
        cluster.record("node_lost_not_ready_s", round(time.monotonic() - started, 1))
        # Its pods are evicted, yet stay Terminating for as long as the Node exists (no kubelet
        # confirms), and while they do the Ray autoscaler adds no worker. The machine is gone
        # for good: marked out of service, as docs/kubernetes.md ("Losing a machine") says
        # (a cloud's node controller deletes the Node instead).
        wait_for(lambda: all_evicted(cluster, doomed), "the lost node's Ray pods evicted", 120, 2)
        cluster.record("node_lost_evicted_s", round(time.monotonic() - started, 1))
        cluster.kubectl("taint", "node", target, f"{OUT_OF_SERVICE}:NoExecute", "--overwrite")
        cluster.record("node_lost_out_of_service_s", round(time.monotonic() - started, 1))
        wait_for(lambda: full_service(cluster, base, count), "full service on the rest", 900, 3)
        cluster.record("node_lost_full_service_s", round(time.monotonic() - started, 1))
        accepted_then = len(client.accepted)
        wait_for(lambda: len(client.accepted) > accepted_then + 20, "202s again", 300, 2)
    pods_after = pod_nodes(cluster)
    cluster.record("node_lost_pods_after", pods_after)
    assert target not in {node for _, node, _ in pods_after.values()}
    cluster.record("node_lost_longest_wait_for_202_s", round(client.longest_gap_s, 1))
    cluster.record("node_lost_statuses", {str(k): v for k, v in client.seen.items()})
    assert client.accepted
    expect_counted(base, before, client.accepted)


def all_evicted(cluster: RealCluster, names: list[str]) -> bool:
    """Every pod of ``names`` marked for deletion (evicted) or gone."""
    pods = cluster.get("pods", "-l", "ray.io/is-ray-node=yes")["items"]
    left = {p["metadata"]["name"]: p for p in pods if p["metadata"]["name"] in names}
    return all(p["metadata"].get("deletionTimestamp") for p in left.values())


def ready_on(cluster: RealCluster, node: str) -> bool:
    found = cluster.plane.get_json("node", node)
    return condition(found, "Ready") == "True"
