"""Offline checks of the Kubernetes deployment: k8s/infra (infrastructure) and kuberay/ (the
RayService). Nothing here talks to a cluster; kustomizations are rendered by
kuberay.kustomize (and, where kubectl is installed, compared with `kubectl kustomize`)."""

from __future__ import annotations

import base64
import importlib
import importlib.util
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from kuberay import gen_secrets  # noqa: E402
from kuberay import render as serve_render  # noqa: E402
from kuberay.kustomize import iter_containers, render, split_image  # noqa: E402
from serve_app.settings import Settings  # noqa: E402

pytestmark = pytest.mark.offline

KUBERNETES_VERSION = "1.34.0"
INFRA = ROOT / "k8s" / "infra"
KUBERAY = ROOT / "kuberay"
# In CI a copy of shared/ sits beside the clone.
CRD = ROOT.parent / "shared" / "schemas" / "kuberay-v1.7.0" / "ray.io_rayservices.yaml"
RAY_LABELS = {"app.kubernetes.io/name": "weather-pipeline", "app.kubernetes.io/component": "ray"}
LOCAL_HOSTS = {"", "localhost", "127.0.0.1", "0.0.0.0", "::"}
DEFAULT_SECRETS = {"guest", "admin", "password", "changeme", "change-me", "weather-local", "root"}


# --------------------------------------------------------------------------- rendering


@pytest.fixture(scope="module")
def infra() -> list[dict[str, Any]]:
    return render(INFRA)


@pytest.fixture(scope="module")
def kuberay() -> list[dict[str, Any]]:
    return render(KUBERAY)


@pytest.fixture(scope="module")
def everything(infra, kuberay) -> list[dict[str, Any]]:
    return infra + kuberay


def _one(objects, kind: str, name: str | None = None) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind and name in (None, o["metadata"]["name"])]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


@pytest.fixture(scope="module")
def rayservice(kuberay) -> dict[str, Any]:
    return _one(kuberay, "RayService")


def _ray_pod_specs(rayservice) -> list[dict[str, Any]]:
    cluster = rayservice["spec"]["rayClusterConfig"]
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    return [group["template"] for group in groups]


def _ray_containers(rayservice) -> list[dict[str, Any]]:
    return [c for pod in _ray_pod_specs(rayservice) for c in pod["spec"]["containers"]]


def _pod_templates(objects) -> list[tuple[str, dict[str, Any]]]:
    """(owner name, pod template) of every Deployment and Ray group."""
    out = [
        (o["metadata"]["name"], o["spec"]["template"]) for o in objects if o["kind"] == "Deployment"
    ]
    for o in objects:
        if o["kind"] == "RayService":
            out += [(o["metadata"]["name"], t) for t in _ray_pod_specs(o)]
    return out


def _config_maps(objects) -> dict[str, dict[str, str]]:
    return {o["metadata"]["name"]: o.get("data", {}) for o in objects if o["kind"] == "ConfigMap"}


def _container_env(container, config_maps) -> dict[str, str | None]:
    """Env var name -> literal value (None when it comes from a Secret/ConfigMap key ref)."""
    env: dict[str, str | None] = {}
    for source in container.get("envFrom", []):
        ref = source.get("configMapRef")
        assert ref, f"{container['name']}: only configMapRef envFrom is used"
        env.update(config_maps[ref["name"]])
    for var in container.get("env", []):
        env[var["name"]] = var.get("value")
    return env


def test_both_kustomizations_render(infra, kuberay):
    kinds = {o["kind"] for o in infra}
    assert {"Namespace", "Deployment", "Service", "PersistentVolumeClaim", "Secret"} <= kinds
    assert {"NetworkPolicy", "ConfigMap"} <= kinds
    assert {o["kind"] for o in kuberay} == {"RayService", "ConfigMap", "Service", "NetworkPolicy"}
    namespaces = {
        o["metadata"].get("namespace") for o in infra + kuberay if o["kind"] != "Namespace"
    }
    assert namespaces == {_one(infra, "Namespace")["metadata"]["name"]}
    names = {(o["kind"], o["metadata"]["name"]) for o in infra}
    for app in ("kafka", "rabbitmq", "redis", "valkey", "grafana", "prometheus"):
        assert ("Deployment", app) in names and ("Service", app) in names


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed")
@pytest.mark.parametrize("directory", ["k8s/infra", "kuberay"])
def test_offline_renderer_agrees_with_kubectl_kustomize(directory, tmp_path):
    """kuberay.kustomize renders what `kubectl kustomize` renders (secrets.env from .example)."""
    work = tmp_path / "repo"
    shutil.copytree(ROOT / "k8s", work / "k8s")
    shutil.copytree(KUBERAY, work / "kuberay", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(INFRA / "secrets.env.example", work / "k8s" / "infra" / "secrets.env")
    out = subprocess.run(
        ["kubectl", "kustomize", str(work / directory)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    theirs = [d for d in yaml.safe_load_all(out) if d]
    ours = render(work / directory)

    def normal(objects):
        return sorted(
            (yaml.safe_dump(o, sort_keys=True) for o in objects),
        )

    assert normal(ours) == normal(theirs)


# --------------------------------------------------------------------------- schemas


def test_every_builtin_object_validates_against_kubernetes_schema(everything):
    for obj in everything:
        if obj["apiVersion"].startswith("ray.io/"):
            continue
        try:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            pytest.fail(f"{obj['kind']}/{obj['metadata']['name']}: {e.message} at {list(e.path)}")


def _crd_to_json_schema(node: Any) -> Any:
    """openAPIV3Schema -> JSON Schema: int-or-string, and strict (unknown fields rejected,
    as the API server does with kubectl's default field validation)."""
    if isinstance(node, list):
        return [_crd_to_json_schema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: _crd_to_json_schema(v) for k, v in node.items() if not k.startswith("x-kubernetes")}
    out.pop("nullable", None)
    if node.get("x-kubernetes-int-or-string") and "anyOf" not in node and "type" not in node:
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if (
        node.get("type") == "object"
        and "properties" in node
        and not node.get("x-kubernetes-preserve-unknown-fields")
        and "additionalProperties" not in node
    ):
        out["additionalProperties"] = False
    return out


def test_rayservice_validates_against_kuberay_crd(rayservice):
    assert CRD.exists(), f"KubeRay CRD missing at {CRD} (shared/ must sit beside the repo)"
    crd = yaml.safe_load(CRD.read_text(encoding="utf-8"))
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
    assert version["served"] and version["storage"]
    schema = _crd_to_json_schema(version["schema"]["openAPIV3Schema"])
    assert rayservice["apiVersion"] == f"{crd['spec']['group']}/v1"
    errors = sorted(
        jsonschema.Draft7Validator(schema).iter_errors(rayservice), key=lambda e: list(e.path)
    )
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors)
    # The pod templates are core PodTemplateSpecs: validate them with the Kubernetes schema too.
    for template in _ray_pod_specs(rayservice):
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "ray"}, **template}
        kubernetes_validate.validate(pod, KUBERNETES_VERSION, strict=True)


# --------------------------------------------------------------------------- serveConfigV2


def test_serve_config_v2_is_serve_config_yaml(rayservice):
    assert rayservice["spec"]["serveConfigV2"] == serve_render.serve_config_text()
    assert serve_render.PATCH.read_text(encoding="utf-8") == serve_render.render(), (
        "kuberay/serve-config.patch.yaml is stale: run python -m kuberay.render"
    )
    assert rayservice["metadata"]["name"] == serve_render.RAYSERVICE_NAME


def _import_target(dotted: str, sep: str) -> None:
    module_name, _, attr = dotted.rpartition(sep) if sep == "." else dotted.partition(sep)
    module = importlib.import_module(module_name)
    assert hasattr(module, attr), f"{module_name} has no attribute {attr}"


def test_serve_config_v2_parses_and_its_import_paths_import(rayservice):
    from ray.serve.schema import ServeDeploySchema

    config = yaml.safe_load(rayservice["spec"]["serveConfigV2"])
    schema = ServeDeploySchema.parse_obj(config)
    assert schema.http_options.host == "0.0.0.0", "in a pod Serve must listen on all interfaces"
    assert {a.name for a in schema.applications} >= {"publisher", "ingress", "consumers"}

    if importlib.util.find_spec("serve_app.app") is None:
        pytest.skip("serve_app.app does not exist yet (another change adds it)")
    for app in schema.applications:
        _import_target(app.import_path, ":")
    for servicer in config["grpc_options"]["grpc_servicer_functions"]:
        _import_target(servicer, ".")


def test_serve_ports_match_container_ports(rayservice):
    config = yaml.safe_load(rayservice["spec"]["serveConfigV2"])
    http, grpc = config["http_options"]["port"], config["grpc_options"]["port"]
    for container in _ray_containers(rayservice):
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports.get("serve") == http, f"{container['name']}: port 'serve' must be {http}"
        assert ports.get("grpc") == grpc, f"{container['name']}: port 'grpc' must be {grpc}"


# --------------------------------------------------------------------------- the RayService


def test_rayservice_cluster_layout(rayservice):
    cluster = rayservice["spec"]["rayClusterConfig"]
    assert cluster["enableInTreeAutoscaling"] is True
    assert cluster["autoscalerOptions"]["resources"]["limits"]
    head = cluster["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0", "no Serve replicas on the head"
    workers = cluster["workerGroupSpecs"]
    assert workers
    for group in workers:
        assert 1 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        assert group["maxReplicas"] > group["minReplicas"], "autoscaling needs room to grow"
    for group in [head, *workers]:
        assert group["rayStartParams"]["metrics-export-port"] == "8080"
        for container in group["template"]["spec"]["containers"]:
            ports = {p["name"]: p["containerPort"] for p in container["ports"]}
            assert ports["metrics"] == 8080


def test_ray_versions_agree(rayservice):
    import ray

    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    pins = [d for d in pyproject["project"]["dependencies"] if d.startswith("ray[")]
    assert pins == [f"ray[serve]=={ray.__version__}"]
    assert rayservice["spec"]["rayClusterConfig"]["rayVersion"] == ray.__version__
    froms = re.findall(r"^FROM\s+(\S+)", (ROOT / "Dockerfile").read_text(), flags=re.M)
    assert froms == [f"rayproject/ray:{ray.__version__}-py311"]


def test_ray_containers_env(kuberay, rayservice):
    """Throughput flags on every Ray container; every other var is one settings reads."""
    fields = {name.upper() for name in Settings.model_fields}
    config_maps = _config_maps(kuberay)
    for container in _ray_containers(rayservice):
        env = _container_env(container, config_maps)
        assert env.get("RAY_SERVE_THROUGHPUT_OPTIMIZED") == "1"
        assert env.get("RAY_SERVE_ENABLE_HA_PROXY") == "1"
        unknown = {n for n in env if not n.startswith("RAY_") and n not in fields}
        assert not unknown, f"{container['name']}: settings does not read {sorted(unknown)}"
        for needed in ("KAFKA_BOOTSTRAP_SERVERS", "RABBITMQ_HOST", "REDIS_HOST", "VALKEY_HOST"):
            assert needed in env, f"{container['name']}: {needed} unset"
        for secret in ("RABBITMQ_PASSWORD", "REDIS_PASSWORD", "VALKEY_PASSWORD"):
            assert secret in env and env[secret] is None, f"{secret} must come from a Secret"
    head = _ray_containers(rayservice)[0]
    head_env = _container_env(head, config_maps)
    assert head_env["RAY_GRAFANA_HOST"] == "http://grafana:3000"
    assert head_env["RAY_PROMETHEUS_HOST"] == "http://prometheus:9090"


def test_grpc_is_exposed_by_a_service(kuberay, rayservice):
    config = yaml.safe_load(rayservice["spec"]["serveConfigV2"])
    grpc_port = config["grpc_options"]["port"]
    services = [o for o in kuberay if o["kind"] == "Service"]
    exposing = [
        s
        for s in services
        if any(p["port"] == grpc_port and p["targetPort"] == "grpc" for p in s["spec"]["ports"])
    ]
    assert exposing, f"no Service exposes gRPC {grpc_port}"
    assert exposing[0]["spec"]["selector"].get("ray.io/serve") == "true"


# --------------------------------------------------------------------------- hygiene


def test_images_pinned_no_latest(everything):
    images = {c["image"] for o in everything for c in iter_containers(o)}
    assert images
    for image in images:
        _, tag = split_image(image)
        assert tag and tag != "latest", f"image {image} is not pinned to a tag"
    for directory in (INFRA, KUBERAY):
        kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
        for entry in kustomization.get("images", []):
            assert str(entry.get("newTag", "")) not in ("", "latest"), entry
            assert any(split_image(i)[0] == entry.get("newName", entry["name"]) for i in images)
    for path in [ROOT / "Dockerfile", *ROOT.glob("k8s/**/*.y*ml"), *KUBERAY.glob("*.y*ml")]:
        assert ":latest" not in path.read_text(encoding="utf-8"), f":latest in {path}"


def _secret_data(objects) -> dict[str, str]:
    data = {}
    for o in objects:
        if o["kind"] == "Secret":
            data.update({k: base64.b64decode(v).decode() for k, v in o.get("data", {}).items()})
    return data


def test_no_default_credentials(everything):
    # Committed template: placeholders only.
    example = (INFRA / "secrets.env.example").read_text()
    values = dict(
        line.split("=", 1) for line in example.splitlines() if line and not line.startswith("#")
    )
    assert values and set(values.values()) == {gen_secrets.PLACEHOLDER}
    assert set(values) == set(_secret_data(everything))
    # No credential is ever a literal in a manifest.
    for owner, template in _pod_templates(everything):
        for container in template["spec"]["containers"]:
            for var in container.get("env", []):
                if re.search(r"PASS|SECRET|TOKEN|_USER$", var["name"]):
                    assert "valueFrom" in var, f"{owner}: {var['name']} must come from a Secret"
            env = {v["name"]: v.get("value") for v in container.get("env", [])}
            assert env.get("GF_AUTH_ANONYMOUS_ENABLED") in (None, "false")
            if container["name"] in ("redis", "valkey"):
                assert "--requirepass" in container["args"]
    for service in (o for o in everything if o["kind"] == "Service"):
        assert service["spec"].get("type", "ClusterIP") == "ClusterIP", service["metadata"]["name"]


def test_real_secrets_env_is_not_a_placeholder():
    """A user's k8s/infra/secrets.env (git-ignored) holds no placeholder or default."""
    path = INFRA / "secrets.env"
    if not path.exists():
        pytest.skip("no k8s/infra/secrets.env (create it with python -m kuberay.gen_secrets)")
    real = dict(
        line.split("=", 1)
        for line in path.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    )
    assert set(real) >= set(gen_secrets.example_keys())
    for key, value in real.items():
        assert gen_secrets.PLACEHOLDER not in value, f"{key} still {gen_secrets.PLACEHOLDER}"
        assert value.lower() not in DEFAULT_SECRETS, f"{key} is a default credential"
        if "PASSWORD" in key:
            assert len(value) >= 12, f"{key} is too short"


def test_gen_secrets_replaces_every_placeholder():
    text = gen_secrets.generate()
    assert gen_secrets.PLACEHOLDER not in text
    keys = [line.split("=", 1)[0] for line in text.splitlines() if not line.startswith("#")]
    assert keys == gen_secrets.example_keys()


def _has_pvc(template) -> bool:
    return any("persistentVolumeClaim" in v for v in template["spec"].get("volumes", []))


def test_deployments_probes_resources_security(everything):
    deployments = [o for o in everything if o["kind"] == "Deployment"]
    claims = {o["metadata"]["name"] for o in everything if o["kind"] == "PersistentVolumeClaim"}
    for deployment in deployments:
        name = deployment["metadata"]["name"]
        template = deployment["spec"]["template"]
        spec = template["spec"]
        assert spec.get("enableServiceLinks") is False, f"{name}: enableServiceLinks"
        assert spec["securityContext"].get("runAsNonRoot") is True, f"{name}: runAsNonRoot"
        if _has_pvc(template):
            assert deployment["spec"]["strategy"]["type"] == "Recreate", f"{name}: Recreate"
            for volume in spec["volumes"]:
                if "persistentVolumeClaim" in volume:
                    assert volume["persistentVolumeClaim"]["claimName"] in claims
        for container in spec["containers"]:
            assert container.get("readinessProbe"), f"{name}/{container['name']}: readiness"
            assert container.get("livenessProbe"), f"{name}/{container['name']}: liveness"
            resources = container.get("resources", {})
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(resources.get(kind, {})), f"{name}: {kind}"
            assert container["securityContext"]["allowPrivilegeEscalation"] is False
    stateful = {"kafka", "rabbitmq", "redis", "valkey", "grafana", "prometheus"}
    assert stateful <= {
        d["metadata"]["name"] for d in deployments if _has_pvc(d["spec"]["template"])
    }


def test_ray_pods_resources_and_security(rayservice):
    for template in _ray_pod_specs(rayservice):
        spec = template["spec"]
        # Services named redis/kafka/... would set REDIS_PORT=tcp://..., breaking settings.
        assert spec.get("enableServiceLinks") is False
        assert spec["securityContext"]["runAsNonRoot"] is True
        for container in spec["containers"]:
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(container["resources"][kind]), container["name"]


def _matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def test_service_selectors_match_pods(everything):
    templates = _pod_templates(everything)
    for service in (o for o in everything if o["kind"] == "Service"):
        # ray.io/* labels are set on Ray pods by the KubeRay operator at run time.
        selector = {
            k: v for k, v in service["spec"]["selector"].items() if not k.startswith("ray.io/")
        }
        targets = [t for _, t in templates if _matches(selector, t["metadata"]["labels"])]
        assert targets, f"Service {service['metadata']['name']} selects no pod"
        for port in service["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            for template in targets:
                container_ports = [
                    p for c in template["spec"]["containers"] for p in c.get("ports", [])
                ]
                assert any(
                    target in (p.get("name"), p["containerPort"]) for p in container_ports
                ), f"Service {service['metadata']['name']}: no container port {target}"


def _addresses(value: str) -> list[tuple[str, int]]:
    return [
        (host, int(port))
        for host, port in re.findall(r"(?:^|[/,@\s])([A-Za-z0-9.-]*):(\d+)", value)
        if host not in LOCAL_HOSTS
    ]


def test_every_address_in_env_is_a_service_port(everything):
    services = {
        o["metadata"]["name"]: {p["port"] for p in o["spec"]["ports"]}
        for o in everything
        if o["kind"] == "Service"
    }
    config_maps = _config_maps(everything)
    seen = []
    sources: list[tuple[str, dict[str, str | None]]] = []
    for owner, template in _pod_templates(everything):
        for container in template["spec"]["containers"]:
            sources.append((owner, _container_env(container, config_maps)))
    datasources = (INFRA / "grafana/provisioning/datasources/datasources.yaml").read_text()
    sources.append(
        ("grafana datasources", {"urls": " ".join(re.findall(r"url: (\S+)", datasources))})
    )
    for owner, env in sources:
        for name, value in env.items():
            for host, port in _addresses(value or ""):
                assert host in services, f"{owner}: {name} points at unknown Service {host}"
                assert port in services[host], f"{owner}: {name}: Service {host} lacks {port}"
                seen.append(host)
        hosts = {n[: -len("_HOST")]: v for n, v in env.items() if n.endswith("_HOST") and v}
        for prefix, host in hosts.items():
            if f"{prefix}_PORT" in env and "://" not in host:
                port = int(env[f"{prefix}_PORT"] or 0)
                assert port in services.get(host, set()), f"{owner}: {prefix} {host}:{port}"
                seen.append(host)
    assert {"kafka", "rabbitmq", "redis", "valkey", "grafana", "prometheus"} <= set(seen)


def test_network_policies(everything, rayservice):
    policies = [o for o in everything if o["kind"] == "NetworkPolicy"]
    deny = [p for p in policies if p["spec"]["podSelector"] == {} and not p["spec"].get("ingress")]
    assert deny, "a default-deny ingress policy"
    for template in _ray_pod_specs(rayservice):
        assert _matches(RAY_LABELS, template["metadata"]["labels"])

    def selected(policy, labels) -> bool:
        sel = policy["spec"]["podSelector"]
        if not _matches(sel.get("matchLabels", {}), labels):
            return False
        for expr in sel.get("matchExpressions", []):
            assert expr["operator"] == "In"
            if labels.get(expr["key"]) not in expr["values"]:
                return False
        return True

    def allowed_peers(app: str) -> list[dict[str, str]]:
        labels = {"app.kubernetes.io/name": app}
        peers = []
        for policy in policies:
            if policy in deny or not selected(policy, labels):
                continue
            for rule in policy["spec"].get("ingress", []):
                assert rule.get("from"), f"{policy['metadata']['name']}: open to everyone"
                peers += [p["podSelector"]["matchLabels"] for p in rule["from"]]
        return peers

    for broker in ("kafka", "rabbitmq"):
        assert allowed_peers(broker) and all(p == RAY_LABELS for p in allowed_peers(broker))
    for store in ("redis", "valkey"):
        peers = allowed_peers(store)
        assert RAY_LABELS in peers and {"app.kubernetes.io/name": "grafana"} in peers
        assert all(p in (RAY_LABELS, {"app.kubernetes.io/name": "grafana"}) for p in peers)
    # Prometheus reaches the Ray metrics port.
    ray_policies = [
        p for p in policies if p["spec"]["podSelector"].get("matchLabels") == RAY_LABELS
    ]
    assert any(
        {"app.kubernetes.io/name": "prometheus"}
        in [f["podSelector"]["matchLabels"] for f in r["from"]]
        and {"port": 8080, "protocol": "TCP"} in r["ports"]
        for p in ray_policies
        for r in p["spec"]["ingress"]
        if r.get("from")
    )


def test_prometheus_scrapes_ray_metrics(infra):
    config = yaml.safe_load(_config_maps(infra)["prometheus-config"]["prometheus.yml"])
    ray_job = next(j for j in config["scrape_configs"] if j["job_name"] == "ray")
    keep = {
        r["source_labels"][0]: r["regex"]
        for r in ray_job["relabel_configs"]
        if r.get("action") == "keep"
    }
    assert keep["__meta_kubernetes_pod_label_app_kubernetes_io_component"] == "ray"
    assert "metrics" in keep["__meta_kubernetes_pod_container_port_name"].split("|")
    role = _one(infra, "Role")
    assert {"list", "watch"} <= set(role["rules"][0]["verbs"])
    deployment = _one(infra, "Deployment", "prometheus")
    assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == "prometheus"


def test_grafana_is_not_exposed_and_has_the_redis_plugin(infra):
    grafana = _one(infra, "Deployment", "grafana")["spec"]["template"]["spec"]["containers"][0]
    env = {v["name"]: v for v in grafana["env"]}
    assert "redis-datasource" in env["GF_PLUGINS_PREINSTALL_SYNC"]["value"]
    assert "secretKeyRef" in env["GF_SECURITY_ADMIN_PASSWORD"]["valueFrom"]
    assert _one(infra, "Service", "grafana")["spec"]["type"] == "ClusterIP"


def test_secret_keys_referenced_exist(everything):
    keys = set(_secret_data(everything))
    secrets = {o["metadata"]["name"] for o in everything if o["kind"] == "Secret"}
    for owner, template in _pod_templates(everything):
        for container in template["spec"]["containers"]:
            for var in container.get("env", []):
                ref = var.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["name"] in secrets and ref["key"] in keys, f"{owner}: {ref}"
            for source in container.get("envFrom", []):
                assert source["configMapRef"]["name"] in _config_maps(everything)


def test_renderer_fills_missing_env_from_example(tmp_path):
    work = tmp_path / "infra"
    shutil.copytree(INFRA, work, ignore=shutil.ignore_patterns("secrets.env"))
    secret = _one(render(work), "Secret")
    assert base64.b64decode(secret["data"]["REDIS_PASSWORD"]).decode() == "CHANGE-ME"
