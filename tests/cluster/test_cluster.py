"""The Kubernetes manifests on a real control plane: kube-apiserver with strict server-side
validation, the controller-manager and scheduler, KWOK (a fake node: Pods schedule and
report Running without containers, PVCs bind through its StorageClass) and the KubeRay
operator, all on loopback (devstack/cluster). KWOK runs three fake machines, so the
replicated members' required anti-affinity and the Ray workers' spread are really scheduled.

The commands are the Kubernetes guide's (docs/kubernetes.md): the blocks marked
``<!-- cluster-test: NAME -->`` run verbatim in bash, in a copy of the repository with a
throwaway secrets.env. Without Ray in the pods the RayService stays Initializing (the
operator cannot reach a dashboard), so what is checked is everything up to that point.
"""

from __future__ import annotations

import base64
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devstack.cluster.control_plane import NODE_NAMES, ControlPlane
from kuberay import gen_secrets
from kuberay.kustomize import render

# A cold first run builds the Go binaries inside the fixture (`make` builds them first).
pytestmark = [pytest.mark.cluster, pytest.mark.timeout(1800)]

ROOT = Path(__file__).resolve().parents[2]
GUIDE = ROOT / "docs" / "kubernetes.md"
NAMESPACE = "weather"
RAYSERVICE = "weather-pipeline"
STATEFUL = ("prometheus", "grafana")  # Deployments with a PVC
# Replicated: StatefulSet -> replicas, each member on a machine of its own.
REPLICATED = {
    "kafka": 3,
    "rabbitmq": 3,
    "redis": 2,
    "redis-sentinel": 3,
    "valkey": 2,
    "valkey-sentinel": 3,
}
CREDENTIAL_READERS = (
    "rabbitmq",
    "redis",
    "redis-sentinel",
    "valkey",
    "valkey-sentinel",
    "grafana",
    "ray-gcs-redis",
)
WAIT = "--timeout=180s"


def readme_block(name: str) -> str:
    """The bash block that follows ``<!-- cluster-test: name -->`` in docs/kubernetes.md."""
    text = GUIDE.read_text(encoding="utf-8")
    marker = f"<!-- cluster-test: {name} -->\n```bash\n"
    assert marker in text, f"docs/kubernetes.md has no block {name!r}"
    start = text.index(marker) + len(marker)
    return text[start : text.index("```", start)]


def run_readme(cluster: ControlPlane, name: str, workdir: Path) -> str:
    """Run a block of the guide in ``workdir`` against the test cluster; its whole output."""
    result = subprocess.run(
        ["bash", "-c", "set -euo pipefail\n" + readme_block(name)],
        cwd=workdir,
        env=cluster.env(),
        capture_output=True,
        text=True,
        timeout=1200,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"guide block {name} failed:\n{output}{diagnosis(cluster)}"
    return output


def diagnosis(cluster: ControlPlane) -> str:
    """What a failed block leaves to read: node, workload and pod state, recent events."""
    parts = []
    for args in (
        ("get", "nodes,deploy,pods", "-A", "-o", "wide"),
        ("get", "events", "-A", "--sort-by=.lastTimestamp"),
    ):
        try:
            parts.append(cluster.kubectl(*args))
        except (RuntimeError, subprocess.TimeoutExpired) as error:
            parts.append(f"kubectl {' '.join(args)}: {error}")
    return "\n--- cluster state ---\n" + "\n".join(parts)


@pytest.fixture(scope="module")
def cluster() -> Iterator[ControlPlane]:
    """A fresh control plane for this module, stopped by pid whatever happens."""
    plane = ControlPlane()
    try:
        plane.up()
        yield plane
    finally:
        plane.stop()


def write_secrets(work: Path) -> dict[str, str]:
    """New random credentials in the copy's secrets.env; returns them."""
    text = gen_secrets.generate()
    (work / "k8s/infra/secrets.env").write_text(text, encoding="utf-8")
    return dict(line.split("=", 1) for line in text.splitlines() if not line.startswith("#"))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of k8s/ and kuberay/ with a throwaway secrets.env (never the repo's)."""
    work = tmp_path_factory.mktemp("repo")
    shutil.copytree(ROOT / "k8s", work / "k8s", ignore=shutil.ignore_patterns("secrets.env"))
    shutil.copytree(ROOT / "kuberay", work / "kuberay", ignore=shutil.ignore_patterns("*.py*"))
    write_secrets(work)
    return work


@pytest.fixture(scope="module")
def applied(cluster: ControlPlane, workdir: Path) -> str:
    """The guide's step 4, then the operator's first RayCluster; returns the apply output."""
    output = run_readme(cluster, "apply", workdir)
    # The operator names the cluster in the RayService's status first, then creates it.
    cluster.kubectl(
        "-n", NAMESPACE, "wait", f"rayservice/{RAYSERVICE}", WAIT,
        "--for=jsonpath={.status.pendingServiceStatus.rayClusterName}",
    )  # fmt: skip
    status = cluster.get_json("-n", NAMESPACE, "rayservice", RAYSERVICE)["status"]
    name = status["pendingServiceStatus"]["rayClusterName"]
    cluster.kubectl("-n", NAMESPACE, "wait", "--for=create", f"raycluster/{name}", WAIT)
    return output


@pytest.fixture(scope="module")
def rendered(workdir: Path) -> list[dict[str, Any]]:
    return render(workdir / "k8s/infra") + render(workdir / "kuberay")


def ray_cluster(cluster: ControlPlane) -> dict[str, Any]:
    """The one RayCluster the operator made for the RayService."""
    found = cluster.get_json("-n", NAMESPACE, "raycluster")["items"]
    assert len(found) == 1, [c["metadata"]["name"] for c in found]
    return found[0]


def pods(cluster: ControlPlane, selector: str) -> list[dict[str, Any]]:
    return cluster.get_json("-n", NAMESPACE, "pods", "-l", selector)["items"]


def matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


# --------------------------------------------------------------------------- apply


def test_apply_is_strict_and_silent(applied):
    assert "serverside-applied (server dry run)" in applied
    assert "Warning" not in applied, applied
    assert "rayservice.ray.io/weather-pipeline serverside-applied" in applied


def test_infra_running_with_bound_volumes(cluster, applied):
    deployments = {
        d["metadata"]["name"]: d for d in cluster.get_json("-n", NAMESPACE, "deploy")["items"]
    }
    assert set(deployments) >= set(STATEFUL)
    claims = {c["metadata"]["name"]: c for c in cluster.get_json("-n", NAMESPACE, "pvc")["items"]}
    for name in STATEFUL:
        volumes = deployments[name]["spec"]["template"]["spec"]["volumes"]
        used = [
            v["persistentVolumeClaim"]["claimName"] for v in volumes if "persistentVolumeClaim" in v
        ]
        assert used, f"{name} keeps no data"
        for claim in used:
            assert claims[claim]["status"]["phase"] == "Bound", claim
        running = [p["status"]["phase"] for p in pods(cluster, f"app.kubernetes.io/name={name}")]
        assert running == ["Running"], name


def test_replicated_members_run_on_machines_of_their_own(cluster, applied):
    """Every member Running, on its own node (the scheduler honoured the required
    anti-affinity), each with its own bound volume where it keeps data."""
    sets = {s["metadata"]["name"]: s for s in cluster.get_json("-n", NAMESPACE, "sts")["items"]}
    claims = {c["metadata"]["name"]: c for c in cluster.get_json("-n", NAMESPACE, "pvc")["items"]}
    for name, replicas in REPLICATED.items():
        assert sets[name]["status"].get("readyReplicas") == replicas, name
        members = pods(cluster, f"app.kubernetes.io/name={name}")
        assert sorted(p["metadata"]["name"] for p in members) == [
            f"{name}-{i}" for i in range(replicas)
        ]
        assert all(p["status"]["phase"] == "Running" for p in members), name
        nodes = [p["spec"]["nodeName"] for p in members]
        assert len(set(nodes)) == replicas and set(nodes) <= set(NODE_NAMES), (name, nodes)
        for template in sets[name]["spec"].get("volumeClaimTemplates", []):
            for index in range(replicas):
                claim = f"{template['metadata']['name']}-{name}-{index}"
                assert claims[claim]["status"]["phase"] == "Bound", claim


def test_disruption_budgets_allow_one_member_at_a_time(cluster, applied):
    """The disruption controller's own reading: with every member up, exactly one may be
    evicted (a drain moves on one machine at a time)."""
    budgets = {b["metadata"]["name"]: b for b in cluster.get_json("-n", NAMESPACE, "pdb")["items"]}
    for name, replicas in REPLICATED.items():
        status = budgets[name]["status"]
        assert status["expectedPods"] == replicas, name
        assert status["currentHealthy"] == replicas, name
        assert status["disruptionsAllowed"] == 1, name


def test_infra_services_select_running_pods(cluster, applied):
    for service in cluster.get_json("-n", NAMESPACE, "svc")["items"]:
        selector = service["spec"].get("selector")
        if not selector or "ray.io/cluster" in selector:
            continue  # the operator's Services: checked with the RayCluster
        query = ",".join(f"{k}={v}" for k, v in selector.items())
        assert pods(cluster, query), f"Service {service['metadata']['name']} selects no pod"


def secret_refs(objects: list[dict[str, Any]]) -> set[tuple[str, str | None]]:
    """(Secret name, key) of every reference in the rendered objects (key None: whole), but
    the optional keys (the GCS Redis's REDIS_USERNAME: set only with an ACL user)."""
    refs: set[tuple[str, str | None]] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            ref = node.get("secretKeyRef")
            if isinstance(ref, dict) and not ref.get("optional"):
                refs.add((ref["name"], ref["key"]))
            if isinstance(node.get("secretRef"), dict):
                refs.add((node["secretRef"]["name"], None))
            if isinstance(node.get("secret"), dict) and "secretName" in node["secret"]:
                refs.add((node["secret"]["secretName"], None))
            if node.get("mode") == "token" and node.get("secretName"):
                refs.add((node["secretName"], "auth_token"))  # RayCluster authOptions
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(objects)
    return refs


def test_every_referenced_secret_and_key_exists(cluster, applied, rendered):
    refs = secret_refs(rendered)
    assert ("weather-credentials", "auth_token") in refs
    assert ("weather-credentials", "RABBITMQ_ADMIN_PASSWORD") in refs
    for name, key in sorted(refs, key=str):
        secret = cluster.get_json("-n", NAMESPACE, "secret", name)
        if key is not None:
            assert key in secret["data"], f"Secret {name} has no key {key}"


# --------------------------------------------------------------------------- RayService


def test_operator_builds_the_raycluster_from_kuberay(cluster, applied, rendered):
    made = ray_cluster(cluster)["spec"]
    wanted = next(o for o in rendered if o["kind"] == "RayService")["spec"]["rayClusterConfig"]
    assert made["rayVersion"] == wanted["rayVersion"]
    assert made["authOptions"] == wanted["authOptions"]
    assert made["headGroupSpec"]["rayStartParams"] == wanted["headGroupSpec"]["rayStartParams"]
    groups = {g["groupName"]: g for g in made["workerGroupSpecs"]}
    assert set(groups) == {g["groupName"] for g in wanted["workerGroupSpecs"]}
    for group in wanted["workerGroupSpecs"]:
        for key in ("replicas", "minReplicas", "maxReplicas", "rayStartParams"):
            assert groups[group["groupName"]][key] == group[key], key


def test_ray_pods_run_with_token_auth_shm_and_probes(cluster, applied, rendered):
    name = ray_cluster(cluster)["metadata"]["name"]
    cluster.kubectl(
        "-n", NAMESPACE, "wait", "--for=jsonpath={.status.phase}=Running", "pod",
        "-l", f"ray.io/cluster={name}", WAIT,
    )  # fmt: skip
    head = pods(cluster, f"ray.io/cluster={name},ray.io/node-type=head")
    assert len(head) == 1
    assert {c["name"] for c in head[0]["spec"]["containers"]} == {"ray-head", "autoscaler"}
    workers = pods(cluster, f"ray.io/cluster={name},ray.io/node-type=worker")
    spec = next(o for o in rendered if o["kind"] == "RayService")["spec"]["rayClusterConfig"]
    assert len(workers) == spec["workerGroupSpecs"][0]["replicas"]
    # GCS fault tolerance: the head's GCS keeps its state in the GCS Redis; the workers
    # spread over the machines.
    head_env = {e["name"]: e for e in head[0]["spec"]["containers"][0]["env"]}
    assert head_env["RAY_REDIS_ADDRESS"]["value"] == "ray-gcs-redis:6379"
    assert pods(cluster, "app.kubernetes.io/name=ray-gcs-redis")[0]["status"]["phase"] == "Running"
    assert len({w["spec"]["nodeName"] for w in workers}) == len(workers) >= 2
    budget = cluster.get_json("-n", NAMESPACE, "pdb", "ray-workers")["status"]
    assert budget["expectedPods"] == len(workers)
    assert budget["disruptionsAllowed"] == len(workers) - 1
    for pod in head + workers:
        assert pod["status"]["phase"] == "Running"
        volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
        ray = pod["spec"]["containers"][0]
        mount = next(m for m in ray["volumeMounts"] if m["mountPath"] == "/dev/shm")
        assert volumes[mount["name"]]["emptyDir"]["medium"] == "Memory"
        for container in pod["spec"]["containers"]:  # the autoscaler talks to GCS too
            env = {e["name"]: e for e in container["env"]}
            assert env["RAY_AUTH_MODE"]["value"] == "token", container["name"]
            ref = env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]
            assert (ref["name"], ref["key"]) == ("weather-credentials", "auth_token")
    for worker in workers:
        probe = worker["spec"]["containers"][0]["readinessProbe"]["httpGet"]
        assert (probe["path"], probe["port"]) == ("/health", "serve")


def test_head_service_selects_the_head_pod_only(cluster, applied):
    name = ray_cluster(cluster)["metadata"]["name"]
    service = cluster.get_json("-n", NAMESPACE, "svc", f"{name}-head-svc")
    selector = service["spec"]["selector"]
    assert selector.get("ray.io/cluster") == name
    members = pods(cluster, f"ray.io/cluster={name}")
    selected = [p for p in members if matches(selector, p["metadata"]["labels"])]
    assert [p["metadata"]["labels"]["ray.io/node-type"] for p in selected] == ["head"]
    ports = {p["name"]: p["port"] for p in service["spec"]["ports"]}
    assert {"dashboard": 8265, "serve": 8000, "serve-grpc": 9000}.items() <= ports.items()
    # No Service of ours selects Ray pods across clusters (gRPC goes through the operator's
    # Serve Service, created once Serve runs).
    for other in cluster.get_json("-n", NAMESPACE, "svc")["items"]:
        chosen = [
            p
            for p in members
            if matches(other["spec"].get("selector") or {"-": "-"}, p["metadata"]["labels"])
        ]
        if chosen:
            assert other["spec"]["selector"].get("ray.io/cluster") == name, other["metadata"][
                "name"
            ]


def test_reapplying_succeeds_and_keeps_the_cluster(cluster, applied, workdir):
    """The guide's apply after a change: no field-manager conflict with the operator, and an
    unchanged spec does not make the operator start a new cluster."""
    before = ray_cluster(cluster)["metadata"]["uid"]
    live = cluster.get_json("-n", NAMESPACE, "rayservice", RAYSERVICE)
    output = run_readme(cluster, "apply", workdir)
    assert "conflict" not in output.lower() and "Warning" not in output, output
    after = cluster.get_json("-n", NAMESPACE, "rayservice", RAYSERVICE)
    assert after["metadata"]["generation"] == live["metadata"]["generation"]
    assert ray_cluster(cluster)["metadata"]["uid"] == before


def test_rotation_rolls_every_credential_reader(cluster, applied, workdir):
    """The guide's step 7: a new secrets.env reaches the Secret, the pods whose init containers
    write it into RabbitMQ, Redis, Valkey and Grafana are replaced, the RayService is
    changed (new cluster), and the guide's apply still works afterwards."""
    old = cluster.get_json("-n", NAMESPACE, "secret", "weather-credentials")["data"]
    before = {
        n: {p["metadata"]["uid"] for p in pods(cluster, f"app.kubernetes.io/name={n}")}
        for n in CREDENTIAL_READERS
    }
    generation = cluster.get_json("-n", NAMESPACE, "rayservice", RAYSERVICE)["metadata"][
        "generation"
    ]
    new = write_secrets(workdir)
    run_readme(cluster, "rotate", workdir)
    data = cluster.get_json("-n", NAMESPACE, "secret", "weather-credentials")["data"]
    for key in (
        "RABBITMQ_PASSWORD",
        "RABBITMQ_ADMIN_PASSWORD",
        "GRAFANA_ADMIN_PASSWORD",
        "REDIS_REPLICATION_PASSWORD",
    ):
        assert base64.b64decode(data[key]).decode() == new[key] and data[key] != old[key]
    for name in CREDENTIAL_READERS:
        now = [
            p
            for p in pods(cluster, f"app.kubernetes.io/name={name}")
            if "deletionTimestamp" not in p["metadata"]
        ]
        assert len(now) == REPLICATED.get(name, 1), name
        assert not {p["metadata"]["uid"] for p in now} & before[name], f"{name}: not replaced"
        for pod in now:
            assert pod["status"]["phase"] == "Running"
            init = pod["spec"]["initContainers"]
            assert any(
                "secretKeyRef" in e.get("valueFrom", {}) for c in init for e in c.get("env", [])
            ), f"{name}: no init container reads the Secret"
    live = cluster.get_json("-n", NAMESPACE, "rayservice", RAYSERVICE)
    assert live["metadata"]["generation"] == generation + 1
    template = live["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]
    assert "weather-pipeline/credentials-rotated" in template["metadata"]["annotations"]
    run_readme(cluster, "apply", workdir)


def test_fake_node_never_went_not_ready(cluster, applied):
    """KWOK renewed the nodes' Leases throughout: a lapse makes a node NotReady and its
    pods not ready for good (KWOK only readies Pending pods), which once failed CI."""
    for name in NODE_NAMES:
        node = cluster.get_json("node", name)
        ready = next(c for c in node["status"]["conditions"] if c["type"] == "Ready")
        assert ready["status"] == "True", (name, ready)
    events = cluster.get_json("events", "-A")["items"]
    assert not [e for e in events if e.get("reason") == "NodeNotReady"]


def test_deleting_the_rayservice_removes_its_cluster_and_pods(cluster, applied, workdir):
    name = ray_cluster(cluster)["metadata"]["name"]
    run_readme(cluster, "delete-rayservice", workdir)
    cluster.kubectl("-n", NAMESPACE, "wait", "--for=delete", f"raycluster/{name}", WAIT)
    cluster.kubectl(
        "-n", NAMESPACE, "wait", "--for=delete", "pod", "-l", f"ray.io/cluster={name}", WAIT
    )
    assert cluster.get_json("-n", NAMESPACE, "raycluster")["items"] == []
    assert pods(cluster, f"ray.io/cluster={name}") == []
    assert pods(cluster, "app.kubernetes.io/name=kafka"), "only the RayService's objects go"


def test_deleting_infra_removes_the_namespace(cluster, applied, workdir):
    run_readme(cluster, "delete-infra", workdir)
    namespaces = {n["metadata"]["name"] for n in cluster.get_json("namespaces")["items"]}
    assert NAMESPACE not in namespaces


def test_stop_leaves_nothing_running(cluster, applied):
    """Last: every server stops by its recorded pid and frees its port (the fixture's
    teardown stops again, a no-op, also when a test failed)."""
    from devstack import procs
    from devstack.cluster.control_plane import ORDER, PORTS

    pids = [cluster.pid_file(name).live_pid() for name in ORDER]
    assert all(pids), dict(zip(ORDER, pids, strict=True))
    cluster.stop()
    assert not [pid for pid in pids if procs.alive(pid)]
    assert not [port for port in PORTS.values() if procs.port_listening(port)]


# --------------------------------------------------------------------------- the build


@pytest.mark.offline
def test_wrapper_module_replaces_every_published_staging_module():
    from devstack.cluster import build

    kubernetes_go_mod = (
        "module k8s.io/kubernetes\n\ngo 1.26.0\n\nreplace (\n"
        "\tk8s.io/api => ./staging/src/k8s.io/api\n"
        "\tk8s.io/client-go => ./staging/src/k8s.io/client-go\n"
        "\tk8s.io/sample-cli-plugin => ./staging/src/k8s.io/sample-cli-plugin\n)\n"
    )
    wrapper = build.wrapper_go_mod(kubernetes_go_mod, "v1.36.3")
    assert "require k8s.io/kubernetes v1.36.3" in wrapper
    assert "\tk8s.io/api => k8s.io/api v0.36.3\n" in wrapper
    assert "\tk8s.io/client-go => k8s.io/client-go v0.36.3\n" in wrapper
    assert "sample-cli-plugin" not in wrapper and "go 1.26.0" in wrapper


@pytest.mark.offline
def test_binaries_are_stamped_with_their_version():
    from devstack.cluster import build

    flags = build.version_ldflags("v1.36.3")
    for package in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        assert f"-X {package}.gitVersion=v1.36.3" in flags
        assert f"-X {package}.gitMinor=36" in flags
    assert build.binary("kubectl").name == "kubectl-v1.36.3"
