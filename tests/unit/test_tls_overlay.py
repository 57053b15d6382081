"""Offline checks of k8s/external/tls: the RayService of kuberay/ pointed at managed services
over TLS and SASL. Rendered by kuberay.kustomize (and compared with `kubectl kustomize` where
kubectl is installed); nothing talks to a cluster."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from kuberay.kustomize import render
from serve_app.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
OVERLAY = ROOT / "k8s" / "external" / "tls"
EXTERNAL = ROOT / "k8s" / "external"
KUBERNETES_VERSION = "1.34.0"
CA_DIR = "/etc/weather/tls"


@pytest.fixture(scope="module")
def objects() -> list[dict[str, Any]]:
    return render(OVERLAY)


def _one(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def _ray_pods(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    cluster = _one(objects, "RayService")["spec"]["rayClusterConfig"]
    return [g["template"]["spec"] for g in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]]


def _secret_keys() -> set[str]:
    """Keys of the Secret weather-credentials as k8s/external makes it (from the template)."""
    secret = next(o for o in render(EXTERNAL) if o["kind"] == "Secret")
    return set(secret["data"])


# With GCS fault tolerance KubeRay sets these env vars of the head itself, from these
# fields of gcsFaultToleranceOptions, and refuses a head that sets them.
GCS_CREDENTIALS = {"redisPassword": "REDIS_PASSWORD", "redisUsername": "REDIS_USERNAME"}


def _set_by_kuberay_on_the_head(cluster: dict[str, Any]) -> dict[str, dict[str, str]]:
    options = cluster.get("gcsFaultToleranceOptions", {})
    return {
        env: options[field]["valueFrom"]["secretKeyRef"]
        for field, env in GCS_CREDENTIALS.items()
        if "valueFrom" in options.get(field, {})
    }


def test_the_overlay_is_kuberay_with_the_same_objects(objects):
    assert sorted(o["kind"] for o in objects) == sorted(o["kind"] for o in render(ROOT / "kuberay"))
    assert {o["metadata"]["namespace"] for o in objects} == {"weather"}
    for obj in objects:
        if not obj["apiVersion"].startswith("ray.io/"):
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
    for pod in _ray_pods(objects):
        template = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "ray"}, "spec": pod}
        kubernetes_validate.validate(template, KUBERNETES_VERSION, strict=True)


def test_every_ray_container_reads_only_settings_and_its_secrets_exist(objects):
    fields = {name.upper() for name in Settings.model_fields}
    config = _one(objects, "ConfigMap")["data"]
    keys = _secret_keys()
    cluster = _one(objects, "RayService")["spec"]["rayClusterConfig"]
    head = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]
    for pod in _ray_pods(objects):
        container = pod["containers"][0]
        set_by_kuberay = _set_by_kuberay_on_the_head(cluster) if container is head else {}
        names = set(config) | {v["name"] for v in container["env"]} | set(set_by_kuberay)
        unknown = {n for n in names if not n.startswith("RAY_") and n not in fields}
        assert not unknown, f"settings does not read {sorted(unknown)}"
        refs = {
            v["name"]: v["valueFrom"]["secretKeyRef"]
            for v in container["env"]
            if "secretKeyRef" in v.get("valueFrom", {})
        } | set_by_kuberay
        for secret in ("KAFKA_SASL_PASSWORD", "RABBITMQ_PASSWORD", "REDIS_PASSWORD"):
            assert secret in refs, f"{secret} must come from the Secret"
        for login in ("KAFKA_SASL_USERNAME", "REDIS_USERNAME", "VALKEY_USERNAME"):
            assert login in refs, f"{login} must reach every Ray container"
        for ref in refs.values():
            assert ref["name"] == "weather-credentials" and ref["key"] in keys, ref
        assert not any("PASSWORD" in name for name in config), "a password in the ConfigMap"


def test_the_head_sets_nothing_kuberay_refuses(objects):
    """KubeRay refuses a RayCluster whose head sets REDIS_USERNAME (always) or, with GCS fault
    tolerance, REDIS_PASSWORD or RAY_REDIS_ADDRESS: it sets them itself (kuberay/ alone:
    test_k8s_replication.py, GCS fault tolerance)."""
    cluster = _one(objects, "RayService")["spec"]["rayClusterConfig"]
    head = cluster["headGroupSpec"]
    reserved = {"REDIS_USERNAME"}
    if "gcsFaultToleranceOptions" in cluster:
        reserved |= {"REDIS_PASSWORD", "RAY_REDIS_ADDRESS"}
    env = {v["name"] for v in head["template"]["spec"]["containers"][0].get("env", [])}
    assert not env & reserved, f"KubeRay refuses a head that sets {sorted(env & reserved)}"
    assert "redis-username" not in head.get("rayStartParams", {})


def test_the_ca_secret_is_mounted_where_the_settings_look(objects):
    config = _one(objects, "ConfigMap")["data"]
    cafiles = {v for k, v in config.items() if k.endswith("_SSL_CAFILE")}
    assert cafiles == {f"{CA_DIR}/ca.crt"}
    for pod in _ray_pods(objects):
        volumes = {v["name"]: v for v in pod["volumes"]}
        secret = volumes["weather-tls-ca"]["secret"]
        assert secret == {"secretName": "weather-tls-ca", "optional": True}
        mounts = {m["name"]: m for m in pod["containers"][0]["volumeMounts"]}
        assert mounts["weather-tls-ca"] == {
            "name": "weather-tls-ca",
            "mountPath": CA_DIR,
            "readOnly": True,
        }


def test_the_configmap_is_a_working_combination_of_settings(objects, tmp_path, monkeypatch):
    """What the pods would start with validates: protocol with mechanism, TLS with its CA,
    replication 3 with 2 in sync (the CA path made to exist here, as the mount makes it)."""
    config = dict(_one(objects, "ConfigMap")["data"])
    ca = tmp_path / "ca.crt"
    ca.write_text("CA\n")
    for key in [k for k in config if k.endswith("_SSL_CAFILE")]:
        config[key] = str(ca)
    for key in list(config):
        if not key.startswith("RAY_"):
            monkeypatch.setenv(key, config[key])
    for key in ("KAFKA_SASL_USERNAME", "REDIS_USERNAME", "VALKEY_USERNAME"):
        monkeypatch.setenv(key, "weather")
    settings = Settings()
    assert settings.kafka_security_protocol == "SASL_SSL"
    assert settings.kafka_sasl_mechanism == "SCRAM-SHA-512"
    assert (settings.kafka_replication_factor, settings.kafka_min_insync_replicas) == (3, 2)
    assert all(settings.uses_tls(p) for p in ("kafka", "rabbitmq", "redis", "valkey"))
    assert settings.rabbitmq_url.startswith("amqps://")


def test_the_plain_kustomizations_keep_one_broker_replication():
    """k8s/infra runs one Kafka broker: replication 3 there could never be met."""
    config = next(o for o in render(ROOT / "kuberay") if o["kind"] == "ConfigMap")["data"]
    assert "KAFKA_REPLICATION_FACTOR" not in config
    assert Settings().kafka_replication_factor == 1


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed")
def test_offline_renderer_agrees_with_kubectl_kustomize(tmp_path):
    work = tmp_path / "repo"
    shutil.copytree(ROOT / "k8s", work / "k8s")
    shutil.copytree(
        ROOT / "kuberay", work / "kuberay", ignore=shutil.ignore_patterns("__pycache__")
    )
    out = subprocess.run(
        ["kubectl", "kustomize", str(work / "k8s" / "external" / "tls")],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    theirs = sorted(yaml.safe_dump(d, sort_keys=True) for d in yaml.safe_load_all(out) if d)
    ours = sorted(yaml.safe_dump(o, sort_keys=True) for o in render(work / "k8s/external/tls"))
    assert ours == theirs
