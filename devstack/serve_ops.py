"""Serve operations on the local stack, for devstack and loadtest alike: the config as the
stack deploys it, ``serve deploy`` and the wait for RUNNING, the application list and
replica counts from the dashboard, ``serve shutdown``, and the restore of the stock config.

Every ``serve`` call runs with the stack's Ray environment and appends its output to
``<state_dir>/ray/ray.log``.
"""

from __future__ import annotations

import functools
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from devstack import procs, ray_access
from devstack.config import LOCALHOST, REPO, SERVE_CONFIG, app_settings, stack_config
from devstack.errors import StackError
from devstack.waits import poll

Apps = dict[str, dict[str, Any]]
Config = dict[str, Any]

WORK_DIR = stack_config.state_dir / "ray"
LOG = WORK_DIR / "ray.log"
DEPLOY_TIMEOUT_S = 240.0


# --- the config -------------------------------------------------------------------------
def local_config(nodes: int | None = None) -> Config:
    """serve_config.yaml as the local stack deploys it: Serve's HTTP and gRPC listen on
    127.0.0.1 (the file says 0.0.0.0, which a cluster needs), and with several nodes on
    one machine the proxies run on the head only (every node's would want the same ports).
    The consumers get the stack's ``fingerprint_key`` as an argument (a secret: the file is
    written for the owner only, and no tracked file holds it). Everything else is the file
    itself."""
    config = yaml.safe_load(SERVE_CONFIG.read_text())
    config["http_options"]["host"] = LOCALHOST
    key = app_settings().fingerprint_key.get_secret_value()
    for application in config["applications"]:
        if application["name"] == "consumers":
            application["args"] = {**(application.get("args") or {}), "fingerprint_key": key}
    if (nodes or stack_config.ray_nodes) > 1:
        config["proxy_location"] = "HeadOnly"
    return config


def write_config(config: Config, label: str) -> Path:
    """``config`` as a file ``serve deploy`` can take, kept next to the Ray log."""
    path = WORK_DIR / f"serve_config.{label}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)
    path.chmod(0o600)  # it holds the consumers' fingerprint_key
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


# --- the dashboard's view ----------------------------------------------------------------
def applications(timeout: float = 5.0) -> Apps:
    """Serve applications as the dashboard reports them; raises OSError when it is down."""
    return ray_access.dashboard_json("/api/serve/applications/", timeout).get("applications") or {}


def applications_or_empty() -> Apps:
    """:func:`applications`, ``{}`` while Serve or the dashboard cannot answer."""
    try:
        return applications()
    except Exception:  # noqa: BLE001 - any failure means "nothing deployed yet"
        return {}


def replica_counts(apps: Apps | None = None) -> dict[str, int]:
    """RUNNING replicas per ``app/deployment``."""
    apps = applications() if apps is None else apps
    return {
        f"{app_name}/{dep_name}": sum(
            r.get("state") == "RUNNING" for r in dep.get("replicas") or []
        )
        for app_name, app in apps.items()
        for dep_name, dep in (app.get("deployments") or {}).items()
    }


def all_running(apps: Apps) -> bool:
    return bool(apps) and all(a.get("status") == "RUNNING" for a in apps.values())


def matches(config: Config, apps: Apps, allow_deleting: bool = False) -> bool:
    """Every application of ``config`` RUNNING and HEALTHY with its fixed replica counts,
    and no other application (``allow_deleting``: others may still be DELETING)."""
    wanted = {a["name"] for a in config["applications"]}
    others = [a for n, a in apps.items() if n not in wanted]
    if not wanted <= set(apps) or any(apps[n].get("status") != "RUNNING" for n in wanted):
        return False
    if others and not (allow_deleting and all(a.get("status") == "DELETING" for a in others)):
        return False
    counts = replica_counts(apps)
    for application in config["applications"]:
        for deployment in application.get("deployments", []):
            status = apps[application["name"]]["deployments"].get(deployment["name"], {})
            fixed = deployment.get("num_replicas")
            key = f"{application['name']}/{deployment['name']}"
            if status.get("status") != "HEALTHY" or (
                isinstance(fixed, int) and counts.get(key) != fixed
            ):
                return False
    return True


# --- the serve CLI ------------------------------------------------------------------------
def serve_cli(*args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    """``serve <args> -a <dashboard>``; raises StackError unless it exits 0."""
    cmd = [procs.venv_bin("serve"), *args, "-a", stack_config.ray_dashboard_url]
    result = procs.run_logged(cmd, log=LOG, env=ray_access.ray_env(), cwd=REPO, timeout=timeout)
    if result.returncode != 0:
        raise StackError(f"`serve {args[0]}` failed:\n{result.stdout[-3000:]}")
    return result


def _failed(apps: Apps) -> bool:
    return any(a.get("status") == "DEPLOY_FAILED" for a in apps.values())


def deploy(
    config: Path | Config,
    *,
    until: Callable[[Apps], bool] = all_running,
    timeout: float = DEPLOY_TIMEOUT_S,
    label: str = "variant",
) -> float:
    """``serve deploy`` ``config`` and wait until ``until(apps)`` (default: every application
    RUNNING); returns the seconds taken. Raises StackError on DEPLOY_FAILED or timeout."""
    started = time.monotonic()
    path = config if isinstance(config, Path) else write_config(config, label)
    serve_cli("deploy", str(path))
    time.sleep(1.0)  # let the controller take the new config before asking how it runs
    apps = poll(applications_or_empty, lambda a: until(a) or _failed(a), timeout=timeout, every=0.5)
    if until(apps):
        return time.monotonic() - started
    bad = [f"  {n}: {a.get('status')}: {a.get('message', '')[:300]}" for n, a in apps.items()]
    raise StackError(
        f"Serve config {path.name} not as asked after {time.monotonic() - started:.0f} s:\n"
        + ("\n".join(bad) or "  (no applications)")
    )


def deploy_exactly(config: Config, label: str, allow_deleting: bool = False) -> float:
    """Deploy ``config`` and wait until it runs as written (see :func:`matches`)."""
    until = functools.partial(matches, config, allow_deleting=allow_deleting)
    return deploy(config, until=until, label=label)


def shutdown(timeout: float = DEPLOY_TIMEOUT_S) -> None:
    """Delete every application and wait until Serve has removed them: `serve shutdown`
    only asks for the deletion, and deploying before it finished loses the new ones."""
    serve_cli("shutdown", "-y")
    poll(applications_or_empty, lambda apps: not apps, timeout=timeout, every=0.5)


def restore() -> float:
    """Deploy the stock serve_config.yaml again (drops the no-op app and any variant)."""
    return deploy_exactly(local_config(), label="local")
