"""Where Locust's users connect, from its one ``--host`` (a Locust-free module, so the unit
tests import it without gevent's patching)."""

from __future__ import annotations

from urllib.parse import urlsplit

GRPC_SCHEME = "grpc://"


def grpc_target(host: str | None, grpc_port: int, default: str) -> str:
    """The ``host:port`` of Serve's gRPC proxy for ``--host``.

    ``--host`` is normally the REST URL (``http://HOST:8000``): gRPC then goes to the same
    HOST at ``grpc_port``, since one Serve proxy serves both. ``grpc://HOST:PORT`` (or a bare
    ``HOST:PORT``) names the gRPC address itself; no host at all means ``default``.
    """
    if not host:
        return default
    if host.startswith(GRPC_SCHEME):
        address = host.removeprefix(GRPC_SCHEME).rstrip("/")
        return address if urlsplit(f"//{address}").port else f"{address}:{grpc_port}"
    if "://" not in host:
        return host
    parts = urlsplit(host)
    if not parts.hostname:
        raise ValueError(f"--host {host!r} names no host")
    name = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{name}:{grpc_port}"
