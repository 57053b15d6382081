"""Offline checks of the Kubernetes deployment: k8s/infra (infrastructure) and kuberay/ (the
RayService). Nothing here talks to a cluster; kustomizations are rendered by
kuberay.kustomize (and, where kubectl is installed, compared with `kubectl kustomize`)."""

from __future__ import annotations

import base64
import importlib
import importlib.util
import json
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

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from kuberay import gen_secrets  # noqa: E402
from kuberay import render as serve_render  # noqa: E402
from kuberay.kustomize import iter_containers, render, split_image  # noqa: E402
from serve_app.settings import Settings  # noqa: E402

KUBERNETES_VERSION = "1.34.0"
INFRA = ROOT / "k8s" / "infra"
KUBERAY = ROOT / "kuberay"
SERVE_CONFIG = ROOT / "serve_config.yaml"
# Vendored with its source and version named (tests/vendor/kuberay-v1.7.0/README.md).
CRD = ROOT / "tests" / "vendor" / "kuberay-v1.7.0" / "ray.io_rayservices.yaml"
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


WORKLOADS = ("Deployment", "StatefulSet")


def _workloads(objects) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] in WORKLOADS]


def _workload(objects, name: str) -> dict[str, Any]:
    found = [o for o in _workloads(objects) if o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one Deployment/StatefulSet {name}, found {len(found)}"
    return found[0]


def _pod_templates(objects) -> list[tuple[str, dict[str, Any]]]:
    """(owner name, pod template) of every Deployment, StatefulSet and Ray group."""
    out = [(o["metadata"]["name"], o["spec"]["template"]) for o in _workloads(objects)]
    for o in objects:
        if o["kind"] == "RayService":
            out += [(o["metadata"]["name"], t) for t in _ray_pod_specs(o)]
    return out


def _config_maps(objects) -> dict[str, dict[str, str]]:
    return {o["metadata"]["name"]: o.get("data", {}) for o in objects if o["kind"] == "ConfigMap"}


def _container_env(container, config_maps) -> dict[str, str | None]:
    """Env var name -> literal value (None when it comes from a Secret/ConfigMap key ref); an
    optional ConfigMap that is not among ``config_maps`` adds nothing."""
    env: dict[str, str | None] = {}
    for source in container.get("envFrom", []):
        ref = source.get("configMapRef")
        assert ref, f"{container['name']}: only configMapRef envFrom is used"
        if ref.get("optional") and ref["name"] not in config_maps:
            continue
        env.update(config_maps[ref["name"]])
    for var in container.get("env", []):
        env[var["name"]] = var.get("value")
    return env


def test_both_kustomizations_render(infra, kuberay):
    kinds = {o["kind"] for o in infra}
    assert {"Namespace", "Deployment", "StatefulSet", "Service", "Secret"} <= kinds
    assert {"NetworkPolicy", "ConfigMap", "PodDisruptionBudget", "PersistentVolumeClaim"} <= kinds
    assert {o["kind"] for o in kuberay} == {
        "RayService",
        "ConfigMap",
        "NetworkPolicy",
        "StatefulSet",
        "Service",
        "PodDisruptionBudget",
    }
    namespaces = {
        o["metadata"].get("namespace") for o in infra + kuberay if o["kind"] != "Namespace"
    }
    assert namespaces == {_one(infra, "Namespace")["metadata"]["name"]}
    names = {(o["kind"], o["metadata"]["name"]) for o in infra}
    for app in ("kafka", "rabbitmq", "redis", "valkey"):
        assert ("StatefulSet", app) in names and ("Service", app) in names
    for app in ("grafana", "prometheus"):
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


def test_serve_config_v2_logs_json_and_differs_in_nothing_else(rayservice):
    """Kubernetes log collectors parse one JSON object per line; the local stack keeps TEXT."""
    from devstack import serve_ops

    local = yaml.safe_load(SERVE_CONFIG.read_text(encoding="utf-8"))
    cluster = yaml.safe_load(rayservice["spec"]["serveConfigV2"])
    assert local["logging_config"]["encoding"] == "TEXT"
    assert serve_ops.local_config()["logging_config"]["encoding"] == "TEXT"
    assert cluster["logging_config"]["encoding"] == "JSON"
    local["logging_config"]["encoding"] = "JSON"
    assert cluster == local


def test_log_encoding_is_replaced_in_the_top_level_logging_config_only():
    text = (
        "applications:\n  - name: a\n    logging_config:\n      encoding: TEXT\n"
        "logging_config:\n  # why\n  log_level: INFO\n  encoding: TEXT\nproxy_location: x\n"
    )
    replaced = yaml.safe_load(serve_render.with_log_encoding(text, "JSON"))
    assert replaced["logging_config"] == {"log_level": "INFO", "encoding": "JSON"}
    assert replaced["applications"][0]["logging_config"] == {"encoding": "TEXT"}
    with pytest.raises(ValueError, match="logging_config"):
        serve_render.with_log_encoding("logging_config:\n  log_level: INFO\nx: 1\n", "JSON")


def _unknown_keys(config: dict[str, Any]) -> list[str]:
    """Keys Serve's schema does not define (pydantic ignores them, so `serve deploy` would
    drop them without a word): top level, applications and deployments."""
    from ray.serve.schema import DeploymentSchema, ServeApplicationSchema, ServeDeploySchema

    unknown = [k for k in config if k not in ServeDeploySchema.model_fields]
    for app in config.get("applications", []):
        unknown += [
            f"{app['name']}.{k}" for k in app if k not in ServeApplicationSchema.model_fields
        ]
        for dep in app.get("deployments", []):
            fields = DeploymentSchema.model_fields
            unknown += [f"{app['name']}.{dep['name']}.{k}" for k in dep if k not in fields]
    return unknown


def test_serve_config_yaml_is_a_plain_serve_config():
    """`serve deploy serve_config.yaml` and `serve run serve_config.yaml` take the file as it
    is: it validates as Serve's own schema and holds no key that schema would ignore (the Ray
    environment lives in ray-env.yaml)."""
    from ray.serve.schema import ServeDeploySchema

    config = yaml.safe_load(SERVE_CONFIG.read_text(encoding="utf-8"))
    ServeDeploySchema.model_validate(config)
    assert _unknown_keys(config) == []
    assert _unknown_keys({**config, "ray_env": {}}) == ["ray_env"], "the check itself"


def _import_target(dotted: str, sep: str) -> None:
    module_name, _, attr = dotted.rpartition(sep) if sep == "." else dotted.partition(sep)
    module = importlib.import_module(module_name)
    assert hasattr(module, attr), f"{module_name} has no attribute {attr}"


def test_serve_config_v2_parses_and_its_import_paths_import(rayservice):
    from ray.serve.schema import ServeDeploySchema

    config = yaml.safe_load(rayservice["spec"]["serveConfigV2"])
    schema = ServeDeploySchema.parse_obj(config)
    assert schema.http_options.host == "0.0.0.0", "in a pod Serve must listen on all interfaces"
    assert {a.name for a in schema.applications} >= {"ingest", "consumers", "dashboard"}

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
        assert ports.get("serve-grpc") == grpc, f"{container['name']}: 'serve-grpc' must be {grpc}"


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
        # Two at least: losing one machine leaves a Serve proxy and a Gateway.
        assert 2 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
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
    dockerfile = (ROOT / "Dockerfile").read_text()
    froms = re.findall(r"^FROM\s+(\S+)", dockerfile, flags=re.M)
    assert froms == ["${RAY_IMAGE}"]
    defaults = re.findall(r"^ARG\s+RAY_IMAGE=(\S+)", dockerfile, flags=re.M)
    assert defaults == [f"rayproject/ray:{ray.__version__}-py311"]


def test_ray_containers_env(everything, rayservice):
    """Throughput flags on every Ray container; every other var is one settings reads
    (the bundled infrastructure's topology ConfigMap included)."""
    fields = {name.upper() for name in Settings.model_fields}
    config_maps = _config_maps(everything)
    for container in _ray_containers(rayservice):
        env = _container_env(container, config_maps) | _set_by_kuberay(rayservice, container)
        assert env.get("RAY_SERVE_THROUGHPUT_OPTIMIZED") == "1"
        assert env.get("RAY_SERVE_ENABLE_HA_PROXY") == "1"
        unknown = {n for n in env if not n.startswith("RAY_") and n not in fields}
        assert not unknown, f"{container['name']}: settings does not read {sorted(unknown)}"
        for needed in ("KAFKA_BOOTSTRAP_SERVERS", "RABBITMQ_HOST", "REDIS_HOST", "VALKEY_HOST"):
            assert needed in env, f"{container['name']}: {needed} unset"
        for secret in ("RABBITMQ_PASSWORD", "REDIS_PASSWORD", "VALKEY_PASSWORD", "FINGERPRINT_KEY"):
            assert secret in env and env[secret] is None, f"{secret} must come from a Secret"
    head = _ray_containers(rayservice)[0]
    head_env = _container_env(head, config_maps)
    assert head_env["RAY_GRAFANA_HOST"] == "http://grafana:3000"
    assert head_env["RAY_PROMETHEUS_HOST"] == "http://prometheus:9090"


def _set_by_kuberay(rayservice, container) -> dict[str, str | None]:
    """What the operator adds to the head's Ray container: with GCS fault tolerance the
    password of its Redis as REDIS_PASSWORD (from a Secret, hence None here)."""
    cluster = rayservice["spec"]["rayClusterConfig"]
    head = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]
    options = cluster.get("gcsFaultToleranceOptions", {})
    if container is head and "valueFrom" in options.get("redisPassword", {}):
        return {"REDIS_PASSWORD": None}
    return {}


def test_every_ray_setting_of_the_local_stack_reaches_the_rayservice(kuberay, rayservice):
    """ray-env.yaml is the one list of Ray/Serve knobs: the local Ray starts with all of
    it, and every Ray container of the rendered RayService has the same values."""
    from devstack import ray_access
    from devstack.config import ray_env_settings

    wanted = ray_env_settings()
    assert {"RAY_SERVE_THROUGHPUT_OPTIMIZED", "RAY_SERVE_GRPC_MAX_MESSAGE_SIZE"} <= set(wanted)
    local = ray_access.ray_env()
    local_ray = {n: v for n, v in local.items() if n.startswith("RAY_SERVE_")}
    assert local_ray == {n: v for n, v in wanted.items() if n.startswith("RAY_SERVE_")}
    config_maps = _config_maps(kuberay)
    for container in _ray_containers(rayservice):
        env = _container_env(container, config_maps)
        for name, value in wanted.items():
            assert env.get(name) == value, f"{container['name']}: {name}={env.get(name)!r}"
        # gRPC takes what REST takes: the proxy's cap is the body limit the pods run with
        body_limit = env.get("MAX_BODY_BYTES") or str(Settings().max_body_bytes)
        assert env["RAY_SERVE_GRPC_MAX_MESSAGE_SIZE"] == body_limit
    assert "ray_env" not in yaml.safe_load(rayservice["spec"]["serveConfigV2"])


def test_ray_env_values_must_be_strings(tmp_path):
    """An unquoted 0.5 or yes would reach the environment as YAML made it: refused by name."""
    from devstack.config import ray_env_settings

    good = tmp_path / "good.yaml"
    good.write_text('# comment\nRAY_A: "1"\nRAY_B: "0.5"\n')
    assert ray_env_settings(good) == {"RAY_A": "1", "RAY_B": "0.5"}
    bad = tmp_path / "bad.yaml"
    bad.write_text('RAY_A: "1"\nRAY_B: 0.5\nRAY_C: yes\n')
    with pytest.raises(ValueError, match="RAY_B, RAY_C"):
        ray_env_settings(bad)
    listed = tmp_path / "listed.yaml"
    listed.write_text("- RAY_A=1\n")
    with pytest.raises(ValueError, match="expected NAME"):
        ray_env_settings(listed)


def test_grpc_is_exposed_by_the_operators_serve_service(kuberay, rayservice):
    """REST and gRPC both go through KubeRay's <name>-serve-svc, which selects the pods of the
    active cluster only (ray.io/cluster): it carries every head port named serve or serve-*."""
    config = yaml.safe_load(rayservice["spec"]["serveConfigV2"])
    http, grpc = config["http_options"]["port"], config["grpc_options"]["port"]
    head = _ray_containers(rayservice)[0]
    serving = {p["name"]: p["containerPort"] for p in head["ports"]}
    serving = {n: port for n, port in serving.items() if n == "serve" or n.startswith("serve-")}
    assert serving == {"serve": http, "serve-grpc": grpc}
    declared = {p["name"]: p for p in rayservice["spec"]["serveService"]["spec"]["ports"]}
    assert {n: p["port"] for n, p in declared.items()} == serving
    assert declared["serve-grpc"]["appProtocol"] == "kubernetes.io/h2c"
    assert "selector" not in rayservice["spec"]["serveService"]["spec"], "KubeRay sets it"
    # No Service of ours selects Ray pods: one without ray.io/cluster would reach both
    # clusters during an upgrade.
    for service in (o for o in kuberay if o["kind"] == "Service"):
        assert not _matches(service["spec"].get("selector", {}), RAY_LABELS), service


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
                # The GCS Redis names its ACL file; the tweet stores' store.conf does
                # (k8s/infra/stores/store.sh, tests/unit/test_k8s_replication.py).
                assert "--aclfile" in container["args"] or container["args"][1].endswith(
                    "/store.conf"
                ), owner
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
    deployments = _workloads(everything)
    claims = {o["metadata"]["name"] for o in everything if o["kind"] == "PersistentVolumeClaim"}
    for deployment in deployments:
        name = deployment["metadata"]["name"]
        template = deployment["spec"]["template"]
        spec = template["spec"]
        assert spec.get("enableServiceLinks") is False, f"{name}: enableServiceLinks"
        assert spec["securityContext"].get("runAsNonRoot") is True, f"{name}: runAsNonRoot"
        if _has_pvc(template):
            assert deployment["kind"] == "Deployment", f"{name}: a StatefulSet claims by template"
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
    keeps_data = {
        d["metadata"]["name"]
        for d in deployments
        if _has_pvc(d["spec"]["template"]) or d["spec"].get("volumeClaimTemplates")
    }
    assert {"kafka", "rabbitmq", "redis", "valkey", "grafana", "prometheus"} <= keeps_data
    assert "ray-gcs-redis" in keeps_data


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
    # A StatefulSet's pods by their stable names: <name>-<index>.<its headless Service>.
    for statefulset in (o for o in everything if o["kind"] == "StatefulSet"):
        name, spec = statefulset["metadata"]["name"], statefulset["spec"]
        for index in range(spec["replicas"]):
            services[f"{name}-{index}.{spec['serviceName']}"] = services[spec["serviceName"]]
    config_maps = _config_maps(everything)
    seen = []
    sources: list[tuple[str, dict[str, str | None]]] = []
    for owner, template in _pod_templates(everything):
        for container in _all_containers(template):
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

    def peer_names(selector: dict[str, Any]) -> set[str]:
        """The pods a `from` podSelector admits: "ray" for the Ray pods, else app names."""
        if selector.get("matchLabels") == RAY_LABELS:
            return {"ray"}
        if "matchLabels" in selector:
            assert set(selector["matchLabels"]) == {"app.kubernetes.io/name"}, selector
            return {selector["matchLabels"]["app.kubernetes.io/name"]}
        (expr,) = selector["matchExpressions"]
        assert (expr["key"], expr["operator"]) == ("app.kubernetes.io/name", "In"), expr
        return set(expr["values"])

    def allowed_peers(app: str) -> set[str]:
        labels = {"app.kubernetes.io/name": app}
        peers: set[str] = set()
        for policy in policies:
            if policy in deny or not selected(policy, labels):
                continue
            for rule in policy["spec"].get("ingress", []):
                assert rule.get("from"), f"{policy['metadata']['name']}: open to everyone"
                for peer in rule["from"]:
                    peers |= peer_names(peer["podSelector"])
        return peers

    # The app, and each cluster's own members (replication, quorum, clustering).
    for broker in ("kafka", "rabbitmq"):
        assert allowed_peers(broker) == {"ray", broker}
    for store in ("redis", "valkey"):
        sentinels = {"redis-sentinel", "valkey-sentinel"}
        assert {"ray", "grafana", store, f"{store}-sentinel"} <= allowed_peers(store)
        assert allowed_peers(store) <= {"ray", "grafana", "redis", "valkey"} | sentinels
        assert allowed_peers(f"{store}-sentinel") == {"ray", "redis", "valkey"} | sentinels
    assert allowed_peers("ray-gcs-redis") == {"ray"}, "the GCS Redis: the Ray pods only"
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


# --------------------------------------------------------------------------- exposure


def _all_containers(template) -> list[dict[str, Any]]:
    spec = template["spec"]
    return [*spec.get("initContainers", []), *spec["containers"]]


def _secret_env_names(container) -> set[str]:
    return {v["name"] for v in container.get("env", []) if "secretKeyRef" in v.get("valueFrom", {})}


def _command_lines(container) -> list[str]:
    """Everything that ends up in a process list: command, args and exec probes."""
    lines = [*container.get("command", []), *container.get("args", [])]
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        lines += container.get(probe, {}).get("exec", {}).get("command", [])
    return lines


def test_no_credential_on_a_command_line(everything):
    """No password in any process list: no $(SECRET) expansion into command/args, and none of
    the flags that take a password as an argument."""
    for owner, template in _pod_templates(everything):
        for container in _all_containers(template):
            secret_vars = _secret_env_names(container)
            for line in _command_lines(container):
                for var in re.findall(r"\$\((\w+)\)", line):
                    assert var not in secret_vars, f"{owner}/{container['name']}: $({var})"
                assert not re.search(r"--requirepass|(^|\s)-a\s|--password[= ]|-u\s+\S+:", line), (
                    f"{owner}/{container['name']}: a password flag in {line!r}"
                )


def _init_container(infra, deployment: str, name: str) -> dict[str, Any]:
    template = _workload(infra, deployment)["spec"]["template"]
    return next(c for c in template["spec"]["initContainers"] if c["name"] == name)


def _literal_env(container) -> dict[str, str]:
    return {v["name"]: v["value"] for v in container.get("env", []) if "value" in v}


def _run_rabbitmq_definitions(infra, tmp_path, secrets: dict[str, str]) -> dict[str, Any]:
    """Run the init container's script (from its ConfigMap) as the pod would."""
    init = _init_container(infra, "rabbitmq", "definitions")
    script = tmp_path / "definitions.sh"
    script.write_text(_config_maps(infra)["rabbitmq-config"]["definitions.sh"])
    out = tmp_path / "definitions.json"
    env = {"PATH": "/usr/bin:/bin", **_literal_env(init), **secrets}
    assert init["command"][:2] == ["sh", "/opt/weather/definitions.sh"]
    subprocess.run(["sh", str(script), str(out)], env=env, check=True, timeout=30)
    return json.loads(out.read_text())


RABBIT_SECRETS = {
    "RABBITMQ_USER": "weather",
    "RABBITMQ_PASSWORD": 'p"a\\ss $(id) `x`',
    "RABBITMQ_ADMIN_USER": "weather-admin",
    "RABBITMQ_ADMIN_PASSWORD": "admin-secret-123",
}


def test_rabbitmq_app_user_is_least_privilege(infra, kuberay, tmp_path):
    definitions = _run_rabbitmq_definitions(infra, tmp_path, RABBIT_SECRETS)
    users = {u["name"]: u for u in definitions["users"]}
    assert set(users) == {"weather", "weather-admin"}, "no guest, nothing else"
    assert users["weather"]["password"] == RABBIT_SECRETS["RABBITMQ_PASSWORD"]
    # monitoring only: admission reads the tweet queue's bytes and limits from the
    # management API (read-only); never management, policymaker or administrator
    assert users["weather"]["tags"] == ["monitoring"]
    assert users["weather-admin"]["tags"] == ["administrator"]
    vhost = _config_maps(kuberay)["weather-pipeline-config"]["RABBITMQ_VHOST"]
    assert definitions["vhosts"] == [{"name": vhost}] and vhost != "/"
    app = [p for p in definitions["permissions"] if p["user"] == "weather"]
    assert len(app) == 1 and app[0]["vhost"] == vhost
    settings = Settings()
    own = [
        settings.rabbitmq_exchange,
        settings.rabbitmq_queue,
        settings.rabbitmq_dead_letter_exchange,
        settings.rabbitmq_dead_letter_queue,
    ]
    for verb in ("configure", "write", "read"):
        pattern = re.compile(app[0][verb])
        assert all(pattern.search(name) for name in own), (verb, own)
        for foreign in ("amq.default", "amq.topic", "other-queue", "x-weather-tweets"):
            assert not pattern.search(foreign), (verb, foreign)


def test_rabbitmq_imports_the_definitions_at_every_boot(infra):
    deployment = _workload(infra, "rabbitmq")["spec"]["template"]["spec"]
    server = deployment["containers"][0]
    assert not {v["name"] for v in server.get("env", [])} & {
        "RABBITMQ_DEFAULT_USER",
        "RABBITMQ_DEFAULT_PASS",
    }, "the default user would be an administrator"
    conf = _config_maps(infra)["rabbitmq-config"]["20-weather.conf"]
    path = re.search(r"^load_definitions\s*=\s*(\S+)", conf, re.M).group(1)
    init = _init_container(infra, "rabbitmq", "definitions")
    assert init["command"][-1] == path
    mounts = {m["mountPath"]: m for m in server["volumeMounts"]}
    assert mounts[str(Path(path).parent)]["name"] in {
        m["name"] for m in init["volumeMounts"] if m["mountPath"] == str(Path(path).parent)
    }
    assert mounts["/etc/rabbitmq/conf.d/20-weather.conf"]["subPath"] == "20-weather.conf"
    assert mounts["/etc/rabbitmq/conf.d/10-memory.conf"]["subPath"] == "10-memory.conf"
    assert mounts["/etc/rabbitmq/conf.d/30-cluster.conf"]["subPath"] == "30-cluster.conf"
    volumes = {v["name"]: v for v in deployment["volumes"]}
    assert volumes[mounts[str(Path(path).parent)]["name"]]["emptyDir"]["medium"] == "Memory"


def test_rabbitmq_definitions_refuse_missing_or_shared_users(infra, tmp_path):
    with pytest.raises(subprocess.CalledProcessError):
        _run_rabbitmq_definitions(infra, tmp_path, {**RABBIT_SECRETS, "RABBITMQ_PASSWORD": ""})
    shared = {**RABBIT_SECRETS, "RABBITMQ_ADMIN_USER": RABBIT_SECRETS["RABBITMQ_USER"]}
    with pytest.raises(subprocess.CalledProcessError):
        _run_rabbitmq_definitions(infra, tmp_path, shared)


def test_grafana_admin_password_is_reset_from_the_secret_at_start(infra):
    init = _init_container(infra, "grafana", "admin-password")
    script = init["command"][-1]
    assert "reset-admin-password --password-from-stdin" in script
    assert "GF_SECURITY_ADMIN_PASSWORD" in _secret_env_names(init)
    grafana = _one(infra, "Deployment", "grafana")["spec"]["template"]["spec"]
    data = next(m for m in grafana["containers"][0]["volumeMounts"] if m["name"] == "data")
    assert {"name": "data", "mountPath": data["mountPath"]} in init["volumeMounts"]
    assert f"{data['mountPath']}/grafana.db" in script, "first start: nothing to reset"


def test_ray_token_authentication(rayservice, infra):
    auth = rayservice["spec"]["rayClusterConfig"]["authOptions"]
    assert auth["mode"] == "token"
    assert "auth_token" in _secret_data([_one(infra, "Secret", auth["secretName"])])
    # KubeRay injects RAY_AUTH_MODE/RAY_AUTH_TOKEN itself; setting them too would disagree.
    for container in _ray_containers(rayservice):
        assert not {v["name"] for v in container.get("env", [])} & {
            "RAY_AUTH_MODE",
            "RAY_AUTH_TOKEN",
        }


def test_ray_dashboard_only_from_the_operator_namespace(kuberay):
    policy = _one(kuberay, "NetworkPolicy", "ray-pods")
    dashboard_ports = {8265, 52365}
    for rule in policy["spec"]["ingress"]:
        ports = {p["port"] for p in rule.get("ports", [])}
        if not rule.get("from"):
            assert ports and ports <= {8000, 9000}, f"open to everyone: {sorted(ports)}"
        if ports & dashboard_ports:
            assert rule["from"] == [
                {
                    "namespaceSelector": {
                        "matchLabels": {"kubernetes.io/metadata.name": "kuberay-system"}
                    }
                }
            ]
    covered = {
        p["port"] for r in policy["spec"]["ingress"] if r.get("from") for p in r.get("ports", [])
    }
    assert dashboard_ports <= covered


def test_health_is_the_worker_readiness_probe_never_liveness(rayservice, everything):
    cluster = rayservice["spec"]["rayClusterConfig"]
    for group in cluster["workerGroupSpecs"]:
        container = group["template"]["spec"]["containers"][0]
        probe = container["readinessProbe"]["httpGet"]
        assert (probe["path"], probe["port"]) == ("/health", "serve")
        assert "serve" in {p["name"] for p in container["ports"]}
    head = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert "readinessProbe" not in head, "Serve is deployed only once the head is ready"
    for _, template in _pod_templates(everything):
        for container in template["spec"]["containers"]:
            liveness = container.get("livenessProbe", {}).get("httpGet", {})
            assert liveness.get("path") != "/health", "a broker outage must not restart pods"


def _gibibytes(quantity: str) -> float:
    units = {"Gi": 1.0, "Mi": 1 / 1024}
    return float(quantity[:-2]) * units[quantity[-2:]]


def test_ray_pods_have_a_memory_backed_dev_shm(rayservice):
    for template in _ray_pod_specs(rayservice):
        volumes = {v["name"]: v for v in template["spec"]["volumes"]}
        for container in template["spec"]["containers"]:
            mount = next(m for m in container["volumeMounts"] if m["mountPath"] == "/dev/shm")
            assert volumes[mount["name"]]["emptyDir"]["medium"] == "Memory"
            # Memory-backed: it counts against the container's limit, so it must leave room.
            limit = _gibibytes(container["resources"]["limits"]["memory"])
            assert _gibibytes(volumes[mount["name"]]["emptyDir"]["sizeLimit"]) <= limit / 2


def test_image_holds_runtime_code_only():
    """The Ray image installs the lock's runtime set and this package: no dev/load packages."""
    from setuptools import find_packages

    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    find = pyproject["tool"]["setuptools"]["packages"]["find"]
    packages = find_packages(str(ROOT), include=find["include"])
    assert "serve_app" in packages and "serve_app.pb" in packages
    assert not [p for p in packages if p.split(".")[0] in ("devstack", "loadtest", "tests")]
    runtime = " ".join(pyproject["project"]["dependencies"])
    assert "locust" not in runtime
    extras = pyproject["project"]["optional-dependencies"]
    assert any(d.startswith("locust") for d in extras["load"])
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {"devstack", "loadtest", "tests", "k8s", "kuberay"} <= ignored
    sync = re.search(r"\$\(UV\) sync --locked[^\n]*", (ROOT / "Makefile").read_text())
    assert sync and "--extra test" in sync.group(0) and "--extra load" in sync.group(0)
    export = re.search(r"uv export --frozen[^\n]*", (ROOT / "Dockerfile").read_text())
    assert export and "--no-dev" in export.group(0) and "--extra" not in export.group(0)


def test_documents_the_manifests_point_at_exist():
    for path in [*ROOT.glob("k8s/**/*.y*ml"), *KUBERAY.glob("*.y*ml"), ROOT / "Dockerfile"]:
        for ref in re.findall(r"[\w./-]+\.md\b", path.read_text(encoding="utf-8")):
            assert (ROOT / ref).exists(), f"{path.relative_to(ROOT)} points at missing {ref}"


def test_rabbitmq_memory_tuning_is_the_same_file_locally_and_in_kubernetes(infra):
    """The local stack appends the very file the ConfigMap carries to its rabbitmq.conf."""
    from devstack.servers.rabbitmq import SHARED_CONF, rabbitmq_conf

    shipped = _config_maps(infra)["rabbitmq-config"]["10-memory.conf"]
    assert shipped == SHARED_CONF.read_text()
    assert rabbitmq_conf().endswith("\n" + shipped)
    assert re.search(r"^raft\.wal_max_size_bytes\s*=\s*\d+$", shipped, re.M)
