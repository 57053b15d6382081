"""Ray's own Grafana dashboards (default, Serve, Serve deployment), for provisioning.

The Ray dashboard embeds panels of these dashboards (by uid) from the Grafana at
RAY_GRAFANA_HOST. A Ray head normally writes them under /tmp/ray/session_latest/metrics;
here they are generated with the pinned Ray's own factory and committed, so Grafana has them
from its first start. ``tests/unit/test_grafana_dashboard.py`` checks they are up to date.

    python -m grafana.ray_dashboards           # rewrite k8s/infra/grafana/dashboards/ray/
    python -m grafana.ray_dashboards --check
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

from ray.dashboard.modules.metrics import grafana_dashboard_factory as factory

from codegen import write_or_check

ROOT = Path(__file__).resolve().parent.parent
OUTPUT_DIR = ROOT / "k8s" / "infra" / "grafana" / "dashboards" / "ray"

DASHBOARDS: dict[str, Callable[[], tuple[str, str]]] = {
    "default.json": factory.generate_default_grafana_dashboard,
    "serve.json": factory.generate_serve_grafana_dashboard,
    "serve-deployment.json": factory.generate_serve_deployment_grafana_dashboard,
}


def render() -> dict[str, str]:
    """File name -> compact JSON (the ConfigMap must stay well under 1 MiB)."""
    out = {}
    for name, generate in DASHBOARDS.items():
        content, _uid = generate()
        out[name] = json.dumps(json.loads(content), separators=(",", ":"), sort_keys=True) + "\n"
    return out


def main(argv: list[str] | None = None) -> int:
    files = {OUTPUT_DIR / name: text for name, text in render().items()}
    return write_or_check(files, "python -m grafana.ray_dashboards", __doc__.splitlines()[0], argv)


if __name__ == "__main__":
    sys.exit(main())
