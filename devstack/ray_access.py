"""How anything reaches the local stack's Ray: its address stays 127.0.0.1, and every
caller carries the token.

Each checkout gets its own token, generated on the first ``make up`` with the same
256-bit randomness Ray uses, kept in ``.devstack/ray-auth/token`` (git-ignored, mode
0600). Ray starts with ``RAY_AUTH_MODE=token``, so its gRPC servers and the dashboard's
HTTP API refuse every caller without it. Every Ray client of the stack (the ``ray`` and
``serve`` CLIs devstack runs, ``ray.init`` in tests, the load tools' dashboard calls)
takes its credentials from here.
"""

from __future__ import annotations

import json
import os
import secrets
import urllib.request
from pathlib import Path
from typing import Any

from devstack.config import REPO, ray_env_settings, stack_config, stack_env

RAY_SITE = REPO / "devstack" / "ray_site"

TOKEN_BYTES = 32  # as ray._private.authentication.authentication_token_generator


def token_path() -> Path:
    return stack_config.state_dir / "ray-auth" / "token"


def ensure_token() -> Path:
    """The token file, created (readable by its owner only) if this checkout has none."""
    path = token_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path
    with os.fdopen(fd, "w") as out:
        out.write(secrets.token_hex(TOKEN_BYTES))
    return path


def token() -> str:
    return token_path().read_text().strip()


def client_env() -> dict[str, str]:
    """What a Ray process or client of the stack needs in its environment.

    ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` is Ray's switch for a single-machine cluster:
    without it Ray replaces a loopback address (the node's, or ``127.0.0.1:6385`` given to
    ``ray.init``) with the LAN address, where nothing of the stack listens.
    """
    return {
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(token_path()),
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    }


def dashboard_json(path: str, timeout: float = 5.0) -> Any:
    """GET ``path`` from the Ray dashboard's HTTP API, authenticated."""
    request = urllib.request.Request(
        f"{stack_config.ray_dashboard_url}{path}",
        headers={"Authorization": f"Bearer {token()}"},
    )
    with urllib.request.urlopen(request, timeout=timeout) as resp:
        return json.loads(resp.read())


def ray_env() -> dict[str, str]:
    """The environment of every Ray process and Ray/Serve CLI call of the stack."""
    return {
        **stack_env(),
        # ray-env.yaml's Ray/Serve knobs, the same the RayService's containers get
        **ray_env_settings(),
        # Serve's own wildcard listeners bind loopback too (see the module there);
        # the repo comes next so workers import serve_app and loadtest alike.
        "PYTHONPATH": os.pathsep.join([str(RAY_SITE), str(REPO)]),
        # the token, and node address 127.0.0.1 where Ray binds its own servers
        **client_env(),
    }
