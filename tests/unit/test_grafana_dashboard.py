"""Offline checks of Grafana as code: the generated dashboards are up to date, every Redis
command reads a key of serve_app.store.client.KEYS, every data source / metric they use exists, and
every application metric of serve_app.model.metrics has a panel querying it by its own tags."""

from __future__ import annotations

import json
import re
import shlex
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from grafana import dashboard, ray_dashboards  # noqa: E402
from serve_app.model import metrics  # noqa: E402
from serve_app.store.core import KEYS  # noqa: E402

DATASOURCES = ROOT / "k8s/infra/grafana/provisioning/datasources/datasources.yaml"
PROVIDERS = ROOT / "k8s/infra/grafana/provisioning/dashboards/dashboards.yaml"
KUSTOMIZATION = ROOT / "k8s/infra/kustomization.yaml"
# Redis data source commands that take no key.
KEYLESS = {"info", "clientList", "slowlogGet"}


@pytest.fixture(scope="module")
def board() -> dict[str, Any]:
    return json.loads(dashboard.OUTPUT.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def datasources() -> dict[str, dict[str, Any]]:
    config = yaml.safe_load(DATASOURCES.read_text(encoding="utf-8"))
    return {ds["uid"]: ds for ds in config["datasources"]}


def _panels(board) -> list[dict[str, Any]]:
    out = []
    for panel in board["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))
    return out


def _targets(board) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    return [(p, t) for p in _panels(board) for t in p.get("targets", [])]


def _redis_targets(board, datasources):
    return [
        (p, t)
        for p, t in _targets(board)
        if datasources[t["datasource"]["uid"]]["type"] == "redis-datasource"
    ]


def _command_and_key(target: dict[str, Any]) -> tuple[str, str]:
    """(command, key) of a Redis data source target: built-in command or raw query."""
    if target.get("query"):
        words = shlex.split(target["query"])
        return words[0].lower(), words[1] if len(words) > 1 else ""
    return target["command"], target.get("keyName", "")


def test_dashboard_json_is_up_to_date():
    assert dashboard.OUTPUT.read_text(encoding="utf-8") == dashboard.render(), (
        "k8s/infra/grafana/dashboards/weather.json is stale: run python -m grafana.dashboard"
    )


def test_ray_dashboards_are_up_to_date():
    rendered = ray_dashboards.render()
    for name, text in rendered.items():
        path = ray_dashboards.OUTPUT_DIR / name
        assert path.read_text(encoding="utf-8") == text, (
            f"{path} is stale: run python -m grafana.ray_dashboards"
        )
    assert sorted(p.name for p in ray_dashboards.OUTPUT_DIR.glob("*.json")) == sorted(rendered)


def test_every_redis_command_reads_a_store_key(board, datasources):
    targets = _redis_targets(board, datasources)
    assert targets
    used: dict[str, set[str]] = {}
    for panel, target in targets:
        command, key = _command_and_key(target)
        if command in KEYLESS:
            assert not key, f"{panel['title']}: {command} takes no key"
            continue
        assert key in KEYS.data_keys(), f"{panel['title']}: {command} {key!r} is not in KEYS"
        used.setdefault(target["datasource"]["uid"], set()).add(key)
    # Both stores show every data key: totals, breakdowns and latest tweets.
    assert used == {"redis": set(KEYS.data_keys()), "valkey": set(KEYS.data_keys())}


def test_stores_side_by_side_and_panels(board):
    panels = [p for p in _panels(board) if p["type"] != "row"]
    totals = [p for p in panels if p["type"] == "stat"]
    assert {t["datasource"]["uid"] for t in totals} == {"redis", "valkey"}
    assert len({t["gridPos"]["y"] for t in totals}) == 1, "totals side by side"
    titles = [p["title"].lower() for p in panels]
    for words in (
        "by country",
        "by weather",
        "country x weather",
        "latest tweets",
        "memory used",
        "ops/s",
    ):
        matching = [t for t in titles if t.endswith(words)]
        assert len(matching) == 2, f"one '{words}' panel per store: {matching}"
    ids = [p["id"] for p in _panels(board)]
    assert len(ids) == len(set(ids)) and 0 not in ids
    assert board["uid"] == dashboard.DASHBOARD_UID


def test_datasources_exist(board, datasources):
    for panel, target in _targets(board):
        for ref in (panel.get("datasource"), target.get("datasource")):
            if ref:
                assert ref["uid"] in datasources, f"{panel['title']}: unknown data source {ref}"
                assert ref["type"] == datasources[ref["uid"]]["type"]
    assert datasources["redis"]["url"] == "redis://redis:6379"
    assert datasources["valkey"]["url"] == "redis://valkey:6379"
    assert datasources["redis"]["secureJsonData"]["password"] == "$REDIS_PASSWORD"
    assert datasources["valkey"]["secureJsonData"]["password"] == "$VALKEY_PASSWORD"
    assert datasources["prometheus"]["type"] == "prometheus"


def _ray_serve_metric_names() -> set[str]:
    """Serve metric names the pinned Ray defines (Prometheus adds ray_ and _total)."""
    import ray.serve

    source = Path(ray.serve.__file__).parent / "_private"
    names: set[str] = set()
    for path in source.glob("*.py"):
        text = path.read_text(encoding="utf-8")
        names.update(re.findall(r"[\"'](serve_[a-z_]+)[\"']", text))
        for template in re.findall(r"f[\"'](serve_[a-z_]*\{protocol_name\}[a-z_]*)[\"']", text):
            names.update(template.replace("{protocol_name}", p) for p in ("http", "grpc"))
    return names


def test_prometheus_queries_use_ray_serve_metrics(board):
    known = _ray_serve_metric_names()
    exprs = [t["expr"] for _, t in _targets(board) if "expr" in t]
    assert exprs
    used = set()
    for expr in exprs:
        for metric in re.findall(r"\bray_(serve_[a-z_]+)", expr):
            base = re.sub(r"_(total|bucket|sum|count)$", "", metric)
            assert base in known, f"{metric}: Ray {dashboard.__name__} has no such Serve metric"
            used.add(base)
    assert {"serve_deployment_request_counter", "serve_deployment_replica_healthy"} <= used


def _series_metric(name: str, defined: dict[str, metrics.Metric]) -> metrics.Metric | None:
    """The metric a series belongs to: its own name, or a histogram's _bucket/_sum/_count."""
    if name in defined:
        return defined[name]
    base = re.sub(r"_(bucket|sum|count)$", "", name)
    metric = defined.get(base)
    return metric if metric is not None and metric.kind == "histogram" else None


def test_pipeline_panels_query_the_metrics_defined_in_code(board):
    defined = {m.prometheus: m for m in metrics.ALL}
    used: set[str] = set()
    for panel, target in _targets(board):
        names = re.findall(r"\bray_weather_[a-z_]+", target.get("expr", ""))
        for name in names:
            metric = _series_metric(name, defined)
            assert metric, f"{panel['title']}: {name} is not in serve_app.model.metrics"
            grouped = re.search(r"\bby \(([^)]*)\)", target["expr"])
            labels = {g.strip() for g in grouped.group(1).split(",")} if grouped else set()
            known = set(metric.tag_keys) | ({"le"} if metric.kind == "histogram" else set())
            assert labels <= known, f"{panel['title']}: {labels}"
            assert set(re.findall(r"(\w+)=", target["expr"])) <= known, panel["title"]
            used.add(metric.prometheus)
    assert used == set(defined), f"metrics without a panel: {sorted(set(defined) - used)}"


def test_panels_of_the_publish_latency_and_the_stores_freshness(board):
    """Latency quantiles from the histogram's buckets, in seconds; freshness per store, the
    smallest age over a store's consumers (its newest tweet), in seconds."""
    panels = {p["title"]: p for p in _panels(board)}
    latency = panels["Publish latency: write start to both brokers confirmed"]
    exprs = [t["expr"] for t in latency["targets"]]
    assert [re.match(r"histogram_quantile\(([\d.]+),", e).group(1) for e in exprs] == [
        "0.5",
        "0.95",
        "0.99",
    ]
    assert all(f"{metrics.PUBLISH_LATENCY.prometheus}_bucket" in e for e in exprs)
    assert len({t["refId"] for t in latency["targets"]}) == 3
    freshness = panels["Store freshness: age of the newest tweet counted"]
    [target] = freshness["targets"]
    assert target["expr"] == f"min by (store) ({metrics.FRESHNESS.prometheus})"
    for panel in (latency, freshness):
        assert panel["fieldConfig"]["defaults"]["unit"] == "s"


def test_dashboards_are_provisioned():
    kustomization = yaml.safe_load(KUSTOMIZATION.read_text(encoding="utf-8"))
    files = {
        (ROOT / "k8s/infra" / f).resolve()
        for g in kustomization["configMapGenerator"]
        for f in g.get("files", [])
    }
    assert dashboard.OUTPUT.resolve() in files
    for name in ray_dashboards.DASHBOARDS:
        assert (ray_dashboards.OUTPUT_DIR / name).resolve() in files
    providers = yaml.safe_load(PROVIDERS.read_text(encoding="utf-8"))["providers"]
    paths = {p["options"]["path"] for p in providers}
    assert {"/var/lib/grafana/dashboards/weather", "/var/lib/grafana/dashboards/ray"} == paths
    uids = {json.loads(p.read_text())["uid"] for p in ray_dashboards.OUTPUT_DIR.glob("*.json")}
    assert {"rayDefaultDashboard", "rayServeDashboard", "rayServeDeploymentDashboard"} <= uids
