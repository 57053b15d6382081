"""The HTTP edge's own limits: Ray's HAProxy template with a per-server connection limit and
a queue timeout for the Gateway, and a JSON 503 with ``Retry-After`` instead of Ray's 500.

Why: Serve's admission check (``max_ongoing_requests``) runs on the replica's own event
loop, so at twice the load a refusal waits behind the requests it refuses. HAProxy can
refuse in front of the loop: ``maxconn`` on each Gateway server keeps at most that many
requests on a replica, the rest wait in HAProxy's queue, and one that waits longer than
``timeout queue`` is answered 503 by HAProxy itself. Ray 2.60's generated config has
neither (``HAProxyConfig.timeout_queue_s`` is fixed at None, servers get no ``maxconn``) nor
an environment variable for them, and it rewrites every 503 HAProxy sends into a 500. So
the template is adjusted as Ray loads it (:func:`adjusted`), with the limits from the Ray
nodes' environment (``ray-env.yaml``, :func:`limits_from`): by ``devstack/ray_site`` on
the local stack and by a line the image appends to Ray's template module
(:func:`install`, run by the Dockerfile). ``/input/stream`` goes to a copy of the
Gateway's backend without ``maxconn``: a WebSocket holds its connection for its lifetime
and has limits of its own.

Ray-free (a text transformation); ``tests/unit/test_edge.py`` renders the result with
Ray's own config objects and checks it with the HAProxy binary.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

MAXCONN_VAR = "EDGE_SERVER_MAXCONN"
QUEUE_TIMEOUT_VAR = "EDGE_QUEUE_TIMEOUT_MS"
APP_VAR = "EDGE_APP"
RETRY_AFTER_VAR = "RETRY_AFTER_S"
"""Settings variables (serve_app/settings.py), read here from the environment alone: the
HAProxy manager's process needs no more of the settings than these."""
DEFAULT_RETRY_AFTER_S = 2
TEMPLATES_MODULE = "ray.serve._private.haproxy_templates"
INSTALL_LINE = (
    "from serve_app.ingest.edge import adjust_module as _weather_edge; "
    "_weather_edge(globals())  # weather-pipeline: the edge's limits (serve_app/ingest/edge.py)\n"
)


class EdgeTemplateError(ValueError):
    """Ray's template no longer has a line this module adjusts (a Ray upgrade moved it)."""


@dataclass(frozen=True)
class EdgeLimits:
    server_maxconn: int
    """Requests HAProxy keeps on one Gateway replica at once; the rest wait in its queue."""
    queue_timeout_ms: int
    """How long a request may wait for a free slot before HAProxy answers 503."""
    retry_after_s: int = DEFAULT_RETRY_AFTER_S
    app: str = "ingest"
    """The Serve application whose backend gets the limits (the Gateway's)."""
    unlimited_path: str = "/input/stream"

    def __post_init__(self) -> None:
        if self.server_maxconn < 1 or self.queue_timeout_ms < 1 or self.retry_after_s < 1:
            raise ValueError(f"edge limits must be positive: {self}")


def limits_from(environ: Mapping[str, str]) -> EdgeLimits | None:
    """The limits the environment sets; None (Ray's template as it is) if both are 0 or
    unset."""
    maxconn, queue = environ.get(MAXCONN_VAR, "0"), environ.get(QUEUE_TIMEOUT_VAR, "0")
    if not (maxconn.isdigit() and queue.isdigit()):
        raise ValueError(f"{MAXCONN_VAR} and {QUEUE_TIMEOUT_VAR} are whole numbers")
    if int(maxconn) == int(queue) == 0:
        return None
    if 0 in (int(maxconn), int(queue)):
        raise ValueError(f"set both {MAXCONN_VAR} and {QUEUE_TIMEOUT_VAR}, or neither")
    retry = environ.get(RETRY_AFTER_VAR, str(DEFAULT_RETRY_AFTER_S))
    app = environ.get(APP_VAR) or "ingest"
    return EdgeLimits(int(maxconn), int(queue), int(retry), app)


def refusal_body() -> str:
    """Our 503's body: nothing of the request was read, so there are no ids to name."""
    error = (
        "busy: no replica took this request in time, nothing of it was read; "
        "retry with the same ids after Retry-After"
    )
    return json.dumps({"error": error, "ids": []})


def _haproxy_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _replace_once(template: str, old: str, new: str) -> str:
    if template.count(old) < 1:
        raise EdgeTemplateError(f"Ray's HAProxy template has no {old.strip()[:70]!r}")
    return template.replace(old, new, 1)


SERVER_LINE = (
    "    server {{ server.name }} {{ server.host }}:{{ server.port }} check"
    "{% if config.observe_mark_down_enabled %}"
)
QUEUE_ANCHOR = "    {%- if backend.timeout_queue_s is not none %}\n"
ROUTING_ANCHOR = (
    "    # Static routing based on path prefixes in decreasing length then alphabetical order\n"
)
FALLBACK_END = (
    "    server {{ backend.fallback_server.name }} {{ backend.fallback_server.host }}:"
    "{{ backend.fallback_server.port }} check backup\n    {%- endif %}\n"
)
ERRORFILE_503 = "    errorfile 503 {{ config.error_file_path }}\n"


def adjusted(template: str, limits: EdgeLimits) -> str:
    """Ray's ``HAPROXY_CONFIG_TEMPLATE`` with the edge's limits (see the module docstring);
    raises :class:`EdgeTemplateError` if a line it adjusts is missing."""
    ours = f"backend.app_name == {json.dumps(limits.app)}"
    unlimited = "{{ backend.name }}-unlimited"
    error = (
        f"    http-error status 503 content-type application/json"
        f" hdr Retry-After {limits.retry_after_s} string {_haproxy_string(refusal_body())}\n"
    )
    template = _replace_once(template, ERRORFILE_503, error)
    template = _replace_once(
        template,
        QUEUE_ANCHOR,
        f"    {{%- if {ours} %}}\n    timeout queue {limits.queue_timeout_ms}ms\n"
        f"    {{%- endif %}}\n" + QUEUE_ANCHOR,
    )
    template = _replace_once(
        template,
        SERVER_LINE,
        SERVER_LINE.replace(" check{%", f" check{{% if {ours} %}} maxconn {limits.server_maxconn}"
                            "{% endif %}{%", 1),
    )  # fmt: skip
    stream_route = (
        f"{{%- for backend in backends %}}{{%- if {ours} %}}\n"
        f"    use_backend {unlimited} if is_{{{{ backend.name }}}}"
        f" {{ path {limits.unlimited_path} }}\n"
        "{%- endif %}{%- endfor %}\n"
    )
    template = _replace_once(template, ROUTING_ANCHOR, stream_route + ROUTING_ANCHOR)
    stream_backend = (
        f"{{%- if {ours} %}}\n"
        f"backend {unlimited}\n"
        "    log global\n"
        "    http-reuse always\n"
        "    {%- for server in backend.servers %}\n"
        "    server {{ server.name }} {{ server.host }}:{{ server.port }}"
        " track {{ backend.name }}/{{ server.name }}\n"
        "    {%- endfor %}\n"
        "    {%- if backend.fallback_server %}\n"
        "    server {{ backend.fallback_server.name }} {{ backend.fallback_server.host }}:"
        "{{ backend.fallback_server.port }} track {{ backend.name }}/"
        "{{ backend.fallback_server.name }} backup\n"
        "    {%- endif %}\n"
        "{%- endif %}\n"
    )
    return _replace_once(template, FALLBACK_END, FALLBACK_END + stream_backend)


def adjust_module(namespace: dict[str, object], environ: Mapping[str, str] = os.environ) -> None:
    """Adjust the ``HAPROXY_CONFIG_TEMPLATE`` of Ray's template module (its globals) as it
    loads, if the environment sets the limits."""
    limits = limits_from(environ)
    template = namespace.get("HAPROXY_CONFIG_TEMPLATE")
    if limits is not None and isinstance(template, str):
        namespace["HAPROXY_CONFIG_TEMPLATE"] = adjusted(template, limits)


def install(templates_file: Path) -> bool:
    """Append the adjusting line to Ray's template module (the image does this once);
    False if it is there already. The file is checked first, so a Ray whose template no
    longer fits fails the image build, not a running cluster."""
    text = templates_file.read_text()
    if INSTALL_LINE in text:
        return False
    namespace: dict[str, object] = {}
    exec(compile(text, str(templates_file), "exec"), namespace)  # Ray's own constants only
    adjusted(str(namespace["HAPROXY_CONFIG_TEMPLATE"]), EdgeLimits(1, 1))
    templates_file.write_text(text + "\n" + INSTALL_LINE)
    return True


def main(argv: list[str]) -> int:
    """``python -m serve_app.ingest.edge install``: adjust this Python's Ray (the image)."""
    if argv != ["install"]:
        print("usage: python -m serve_app.ingest.edge install", file=sys.stderr)
        return 2
    from importlib.util import find_spec

    spec = find_spec(TEMPLATES_MODULE)
    if spec is None or spec.origin is None:
        print(f"{TEMPLATES_MODULE} not found", file=sys.stderr)
        return 1
    changed = install(Path(spec.origin))
    print(f"{'adjusted' if changed else 'already adjusted'}: {spec.origin}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
