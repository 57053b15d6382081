"""Local stack only: the listeners Serve opens on every interface bind 127.0.0.1 instead.

devstack puts this directory first on the ``PYTHONPATH`` of the local Ray node (never in
Kubernetes), so Python imports this module at start-up in every Ray process. Ray's own
servers bind the node address, 127.0.0.1 here, and Serve's HTTP proxy binds
``http_options.host``; but this Ray's Serve binds its gRPC servers (the gRPC proxy, the
replicas' direct-ingress and inter-deployment ports) on ``[::]`` whatever the host, and
its HAProxy template puts stats and metrics on ``*``. Neither has a setting, so the two
modules are adjusted as they load: wildcard addresses become 127.0.0.1.
``tests/stack/test_exposure.py`` fails, naming the listener, if anything still escapes.

It replaces the interpreter's own ``sitecustomize`` for these processes only; Debian's
installs an apport crash hook, which Ray's processes do not need.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import re
import sys
from collections.abc import Callable, Sequence
from types import ModuleType

LOOPBACK = "127.0.0.1"
WILDCARD_HOSTS = frozenset({"", "*", "0.0.0.0", "::", "[::]"})
HAPROXY_WILDCARD_BIND = re.compile(r"^(\s*bind )(?:\*|0\.0\.0\.0|\[::\]|::)?:", re.MULTILINE)


def loopback_address(address: str) -> str:
    """``[::]:9500`` → ``127.0.0.1:9500``; a named host stays as it is."""
    host, _, port = address.rpartition(":")
    return f"{LOOPBACK}:{port}" if host in WILDCARD_HOSTS else address


def bind_grpc_servers_to_loopback(module: ModuleType) -> None:
    """grpc.aio's Server: every port added on a wildcard address goes to loopback."""
    server = module.Server
    for name in ("add_insecure_port", "add_secure_port"):
        add_port = getattr(server, name)

        def add_loopback_port(self, address, *args, _add_port=add_port):  # noqa: ANN001
            return _add_port(self, loopback_address(address), *args)

        setattr(server, name, add_loopback_port)


def bind_haproxy_templates_to_loopback(module: ModuleType) -> None:
    """Serve's HAProxy templates: ``bind *:port`` and ``bind :port`` become loopback."""
    for name, value in list(vars(module).items()):
        if isinstance(value, str) and "bind " in value:
            setattr(module, name, HAPROXY_WILDCARD_BIND.sub(rf"\g<1>{LOOPBACK}:", value))


class AdjustOnImport(importlib.abc.MetaPathFinder):
    """Runs an adjustment right after one of the named modules executes."""

    def __init__(self, adjustments: dict[str, Callable[[ModuleType], None]]) -> None:
        self.adjustments = adjustments

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        adjust = self.adjustments.get(fullname)
        if adjust is None:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return None
        exec_module = spec.loader.exec_module

        def exec_then_adjust(module: ModuleType) -> None:
            exec_module(module)
            adjust(module)

        spec.loader.exec_module = exec_then_adjust  # type: ignore[method-assign]
        return spec


def adjust_haproxy_templates(module: ModuleType) -> None:
    """Loopback binds, and the edge's limits as the image has them (its Dockerfile appends
    the same adjustment to Ray's module: serve_app/ingest/edge.py)."""
    bind_haproxy_templates_to_loopback(module)
    from serve_app.ingest.edge import adjust_module

    adjust_module(vars(module))


ADJUSTMENTS = {
    "grpc.aio._server": bind_grpc_servers_to_loopback,
    "ray.serve._private.haproxy_templates": adjust_haproxy_templates,
}

if __name__ == "sitecustomize":  # at interpreter start-up; not when a test imports it
    sys.meta_path.insert(0, AdjustOnImport(ADJUSTMENTS))
