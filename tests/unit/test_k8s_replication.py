"""Offline checks that the bundled infrastructure of k8s/infra survives the loss of one
machine, and that the RayService keeps serving when its head pod goes: replicated members
on different machines, disruption budgets that keep each quorum, probes that wait out slow
starts, volumes sized from the settings, the Sentinels' start-up scripts (run here with a
fake redis-cli) and GCS fault tolerance. Rendered by kuberay.kustomize, no cluster."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from kuberay import volumes
from kuberay.kustomize import render
from serve_app.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "k8s" / "infra"
KUBERAY = ROOT / "kuberay"
STORES = INFRA / "stores"
GUIDE = ROOT / "docs" / "kubernetes.md"
HOSTNAME = "kubernetes.io/hostname"
# Each replicated member and how many of them must stay up for it to work.
QUORUMS = {
    "kafka": 2,  # min.insync.replicas
    "rabbitmq": 2,  # a majority of each quorum queue
    "redis": 1,  # the primary, or the replica the Sentinels promote
    "valkey": 1,
    "redis-sentinel": 2,  # the failover quorum
    "valkey-sentinel": 2,
}

Obj = dict[str, Any]


@pytest.fixture(scope="module")
def infra() -> list[Obj]:
    return render(INFRA)


@pytest.fixture(scope="module")
def kuberay() -> list[Obj]:
    return render(KUBERAY)


def _get(objects: list[Obj], kind: str, name: str) -> Obj:
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def _matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def _container(statefulset: Obj, index: int = 0) -> Obj:
    return statefulset["spec"]["template"]["spec"]["containers"][index]


def _init(statefulset: Obj, name: str) -> Obj:
    inits = statefulset["spec"]["template"]["spec"]["initContainers"]
    return next(c for c in inits if c["name"] == name)


def _literal_env(container: Obj) -> dict[str, str]:
    return {v["name"]: v["value"] for v in container.get("env", []) if "value" in v}


def _pods(statefulset: Obj) -> list[str]:
    """The stable names of a StatefulSet's pods: <name>-<index>.<headless Service>."""
    name, spec = statefulset["metadata"]["name"], statefulset["spec"]
    return [f"{name}-{i}.{spec['serviceName']}" for i in range(spec["replicas"])]


def _topology(infra: list[Obj]) -> dict[str, str]:
    return _get(infra, "ConfigMap", "weather-pipeline-topology")["data"]


def _config(infra: list[Obj], config_map: str, key: str) -> str:
    return _get(infra, "ConfigMap", config_map)["data"][key]


# --------------------------------------------------------------------------- placement


@pytest.mark.parametrize("name", sorted(QUORUMS))
def test_members_run_on_different_machines(infra, name):
    statefulset = _get(infra, "StatefulSet", name)
    labels = statefulset["spec"]["template"]["metadata"]["labels"]
    assert statefulset["spec"]["replicas"] > QUORUMS[name] or name in ("redis", "valkey")
    terms = statefulset["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"
    ]
    assert any(
        t["topologyKey"] == HOSTNAME and _matches(t["labelSelector"]["matchLabels"], labels)
        for t in terms
    ), f"{name}: two members could share a machine"


@pytest.mark.parametrize("name", sorted(QUORUMS))
def test_disruption_budget_keeps_the_quorum(infra, name):
    statefulset = _get(infra, "StatefulSet", name)
    labels = statefulset["spec"]["template"]["metadata"]["labels"]
    budgets = [
        b
        for b in infra
        if b["kind"] == "PodDisruptionBudget"
        and _matches(b["spec"]["selector"]["matchLabels"], labels)
    ]
    assert len(budgets) == 1, f"{name}: {len(budgets)} PodDisruptionBudgets"
    spec, replicas = budgets[0]["spec"], statefulset["spec"]["replicas"]
    allowed = (
        spec["maxUnavailable"] if "maxUnavailable" in spec else replicas - spec["minAvailable"]
    )
    assert allowed >= 1, f"{name}: a budget of 0 blocks every drain"
    assert replicas - allowed >= QUORUMS[name], f"{name}: a drain could break its quorum"


def test_ray_workers_spread_and_have_a_budget(kuberay):
    rayservice = _get(kuberay, "RayService", "weather-pipeline")
    cluster = rayservice["spec"]["rayClusterConfig"]
    (workers,) = cluster["workerGroupSpecs"]
    assert workers["minReplicas"] >= 2
    labels = workers["template"]["metadata"]["labels"]
    (spread,) = workers["template"]["spec"]["topologySpreadConstraints"]
    assert (spread["topologyKey"], spread["maxSkew"]) == (HOSTNAME, 1)
    assert spread["whenUnsatisfiable"] == "DoNotSchedule"
    # A drained or lost node (tainted) must not count as a place with 0 workers, or no
    # further worker could go anywhere else until it returned.
    assert spread.get("nodeTaintsPolicy") == "Honor"
    assert _matches(spread["labelSelector"]["matchLabels"], labels)
    assert spread["matchLabelKeys"] == ["ray.io/cluster"], "count this cluster's workers only"
    budget = _get(kuberay, "PodDisruptionBudget", "ray-workers")["spec"]
    assert _matches(budget["selector"]["matchLabels"], labels)
    head_labels = cluster["headGroupSpec"]["template"]["metadata"]["labels"]
    assert not _matches(budget["selector"]["matchLabels"], head_labels)
    # A number: a RayCluster has no scale subresource, so the disruption controller cannot
    # resolve a maxUnavailable (or percentage) budget of its pods and would allow nothing.
    assert "maxUnavailable" not in budget and isinstance(budget["minAvailable"], int)
    assert 1 <= budget["minAvailable"] < workers["minReplicas"]


# --------------------------------------------------------------------------- probes


@pytest.mark.parametrize("name", ["kafka", "rabbitmq", "redis", "valkey"])
def test_slow_starts_are_waited_for_and_readiness_does_not_flap(infra, name):
    container = _container(_get(infra, "StatefulSet", name))
    startup = container["startupProbe"]
    # An AOF of a few million keys took more than 30 s to load; a full Kafka log recovery or
    # a long quorum-queue log replay takes minutes.
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 600, name
    readiness = container["readinessProbe"]
    assert readiness.get("timeoutSeconds", 1) >= 5, f"{name}: a busy server answers late"
    assert readiness.get("failureThreshold", 3) >= 3 and readiness["periodSeconds"] >= 10
    assert "initialDelaySeconds" not in readiness, "the startupProbe holds readiness back"
    command = " ".join(readiness.get("exec", {}).get("command", []))
    assert "rabbitmq-diagnostics" not in command, "a CLI VM per probe timed out under load"


# --------------------------------------------------------------------------- Kafka


def test_kafka_is_three_replicated_kraft_nodes(infra):
    kafka = _get(infra, "StatefulSet", "kafka")
    assert kafka["spec"]["replicas"] == 3
    assert kafka["spec"]["podManagementPolicy"] == "Parallel", "a quorum needs two to start"
    env = _literal_env(_container(kafka))
    voters = [f"{i}@{pod}:9093" for i, pod in enumerate(_pods(kafka))]
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == ",".join(voters)
    node_id = next(v for v in _container(kafka)["env"] if v["name"] == "KAFKA_NODE_ID")
    assert "apps.kubernetes.io/pod-index" in node_id["valueFrom"]["fieldRef"]["fieldPath"]
    assert env["KAFKA_ADVERTISED_LISTENERS"] == "PLAINTEXT://$(POD_NAME).kafka-headless:9092"
    assert env["KAFKA_DEFAULT_REPLICATION_FACTOR"] == "3"
    assert env["KAFKA_MIN_INSYNC_REPLICAS"] == "2"
    assert env["KAFKA_UNCLEAN_LEADER_ELECTION_ENABLE"] == "false"
    assert env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == "3"
    assert env["KAFKA_TRANSACTION_STATE_LOG_MIN_ISR"] == "2"
    headless = _get(infra, "Service", kafka["spec"]["serviceName"])
    assert headless["spec"]["clusterIP"] == "None" and headless["spec"]["publishNotReadyAddresses"]


def test_the_app_creates_its_topics_as_the_brokers_replicate(infra):
    topology = _topology(infra)
    env = _literal_env(_container(_get(infra, "StatefulSet", "kafka")))
    assert topology["KAFKA_REPLICATION_FACTOR"] == env["KAFKA_DEFAULT_REPLICATION_FACTOR"]
    assert topology["KAFKA_MIN_INSYNC_REPLICAS"] == env["KAFKA_MIN_INSYNC_REPLICAS"]
    settings = Settings(**{k.lower(): v for k, v in topology.items()})
    assert (settings.kafka_replication_factor, settings.kafka_min_insync_replicas) == (3, 2)
    assert settings.store_wait_replicas == 1, "durable on the replica before the broker lets go"


# --------------------------------------------------------------------------- RabbitMQ


def test_rabbitmq_is_a_three_node_cluster_with_queues_on_all(infra):
    rabbitmq = _get(infra, "StatefulSet", "rabbitmq")
    replicas = rabbitmq["spec"]["replicas"]
    assert replicas == 3
    conf = _config(infra, "rabbitmq-config", "30-cluster.conf")
    nodes = re.findall(r"^cluster_formation\.classic_config\.nodes\.\d+\s*=\s*(\S+)$", conf, re.M)
    assert nodes == [f"rabbit@{pod}" for pod in _pods(rabbitmq)]
    env = _literal_env(_container(rabbitmq))
    assert env["RABBITMQ_NODENAME"] == f"rabbit@$(POD_NAME).{rabbitmq['spec']['serviceName']}"
    assert env["RABBITMQ_USE_LONGNAME"] == "true"
    target = re.search(r"target_group_size\s*=\s*(\d+)", conf)
    assert target and int(target.group(1)) == replicas, "a quorum queue member on every node"
    assert re.search(r"^cluster_partition_handling\s*=\s*pause_minority$", conf, re.M)
    addresses = _topology(infra)["RABBITMQ_ADDRESSES"].split(",")
    assert addresses == [f"{pod}:5672" for pod in _pods(rabbitmq)]
    cookie = _init(rabbitmq, "erlang-cookie")
    ref = cookie["env"][0]["valueFrom"]["secretKeyRef"]
    assert (ref["name"], ref["key"]) == ("weather-credentials", "RABBITMQ_ERLANG_COOKIE")


# --------------------------------------------------------------------------- Redis, Valkey


@pytest.mark.parametrize("store", ["redis", "valkey"])
def test_the_app_asks_the_sentinels_the_stores_announce(infra, store):
    data = _get(infra, "StatefulSet", store)
    sentinels = _get(infra, "StatefulSet", f"{store}-sentinel")
    topology = _topology(infra)
    assert data["spec"]["replicas"] == 2 and sentinels["spec"]["replicas"] == 3
    wanted = [f"{pod}:26379" for pod in _pods(sentinels)]
    assert topology[f"{store.upper()}_SENTINELS"].split(",") == wanted
    master = topology[f"{store.upper()}_SENTINEL_MASTER"]
    data_env = _literal_env(_init(data, "config"))
    sentinel_env = _literal_env(_init(sentinels, "config"))
    assert data_env["MASTER_NAME"] == sentinel_env["MASTER_NAME"] == master
    assert data_env["SENTINELS"].split() == sentinel_env["SENTINELS"].split() == wanted
    assert sentinel_env["STORES"].split() == _pods(data)
    assert data_env["FIRST"] == sentinel_env["FIRST"] == _pods(data)[0]
    assert data_env["SELF"] == f"$(POD_NAME).{data['spec']['serviceName']}"
    assert sentinel_env["SELF"] == f"$(POD_NAME).{sentinels['spec']['serviceName']}"
    assert int(sentinel_env["QUORUM"]) == sentinels["spec"]["replicas"] // 2 + 1
    args = _container(data)["args"]
    assert args[args.index("--min-replicas-to-write") + 1] == "1"
    assert args[args.index("--appendonly") + 1] == "yes"


def _fake_cli(tmp_path: Path) -> Path:
    """A redis-cli stand-in: answers SENTINEL get-master-addr-by-name with $FAKE_MASTER and
    ROLE with master for the host $FAKE_PRIMARY (slave otherwise); logs its argv."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    cli = bin_dir / "fake-cli"
    cli.write_text(
        "#!/bin/sh\n"
        'echo "$@" >> "$FAKE_LOG"\n'
        'case "$*" in\n'
        '  *"SENTINEL get-master-addr-by-name"*) [ -n "${FAKE_MASTER:-}" ] || exit 1\n'
        '     printf "%s\\n6379\\n" "$FAKE_MASTER" ;;\n'
        '  *ROLE*) case "$*" in *"-h ${FAKE_PRIMARY:-none} "*) echo master ;; '
        "*) echo slave ;; esac ;;\n"
        "esac\n"
    )
    cli.chmod(cli.stat().st_mode | stat.S_IEXEC)
    return cli


def _run(script: str, tmp_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    """Run a shipped script as its init container would, with the fake CLI on PATH."""
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    cli = tmp_path / "bin" / "fake-cli"
    if not cli.exists():
        _fake_cli(tmp_path)
    full = {
        "PATH": f"{cli.parent}:/usr/bin:/bin",
        "CLI": cli.name,
        "FAKE_LOG": str(tmp_path / "cli.log"),
    }
    return subprocess.run(
        ["sh", str(STORES / script), str(out)],
        env={**full, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


STORE_ENV = {
    "PASSWORD": "app-secret-123",
    "REPLICATION_PASSWORD": "link-secret-456",
    "MASTER_NAME": "weather-redis",
    "SENTINELS": "s-0.s:26379 s-1.s:26379 s-2.s:26379",
    "FIRST": "redis-0.redis-headless",
}


def _store_conf(tmp_path: Path) -> str:
    return (tmp_path / "out" / "store.conf").read_text()


@pytest.mark.skipif(shutil.which("timeout") is None, reason="needs coreutils timeout")
def test_first_start_makes_pod_0_primary_and_pod_1_its_replica(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    env = {**STORE_ENV, "DATA": str(data), "SELF": "redis-0.redis-headless"}
    result = _run("store.sh", tmp_path, env)
    assert result.returncode == 0, result.stderr
    assert "replicaof" not in _store_conf(tmp_path)
    result = _run("store.sh", tmp_path, {**env, "SELF": "redis-1.redis-headless"})
    assert result.returncode == 0, result.stderr
    assert "replicaof redis-0.redis-headless 6379\n" in _store_conf(tmp_path)


@pytest.mark.skipif(shutil.which("timeout") is None, reason="needs coreutils timeout")
def test_a_restarted_pod_follows_the_primary_the_sentinels_name(tmp_path):
    data = tmp_path / "data"
    (data / "appendonlydir").mkdir(parents=True)
    env = {**STORE_ENV, "DATA": str(data), "SELF": "redis-0.redis-headless"}
    result = _run("store.sh", tmp_path, {**env, "FAKE_MASTER": "redis-1.redis-headless"})
    assert result.returncode == 0, result.stderr
    assert "replicaof redis-1.redis-headless 6379\n" in _store_conf(tmp_path)
    # Named primary and still holding its AOF: it is the primary.
    result = _run("store.sh", tmp_path, {**env, "FAKE_MASTER": "redis-0.redis-headless"})
    assert result.returncode == 0 and "replicaof" not in _store_conf(tmp_path)


@pytest.mark.skipif(shutil.which("timeout") is None, reason="needs coreutils timeout")
def test_an_emptied_primary_waits_for_the_failover_instead_of_wiping_its_replica(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    env = {**STORE_ENV, "DATA": str(data), "SELF": "redis-0.redis-headless"}
    result = _run("store.sh", tmp_path, {**env, "FAKE_MASTER": "redis-0.redis-headless"})
    assert result.returncode != 0
    assert "waiting for their failover" in result.stderr
    assert not (tmp_path / "out" / "store.conf").exists()


@pytest.mark.skipif(shutil.which("timeout") is None, reason="needs coreutils timeout")
def test_store_users_hold_hashes_and_the_least_privilege(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    env = {**STORE_ENV, "DATA": str(data), "SELF": "redis-1.redis-headless"}
    assert _run("store.sh", tmp_path, env).returncode == 0
    acl = (tmp_path / "out" / "users.acl").read_text()
    assert STORE_ENV["PASSWORD"] not in acl and STORE_ENV["REPLICATION_PASSWORD"] not in acl
    users = {line.split()[1]: line for line in acl.splitlines()}
    assert set(users) == {"default", "replication", "sentinel"}
    app_hash = hashlib.sha256(STORE_ENV["PASSWORD"].encode()).hexdigest()
    assert f"#{app_hash}" in users["default"] and "-@admin" in users["default"]
    assert "-@all +psync +replconf +ping" in users["replication"]
    assert "-@all" in users["sentinel"] and "+@all" not in users["sentinel"]
    conf = _store_conf(tmp_path)
    link_hex = "".join(f"\\x{byte:02x}" for byte in STORE_ENV["REPLICATION_PASSWORD"].encode())
    assert f'masterauth "{link_hex}"\n' in conf
    assert "masteruser replication\n" in conf
    assert "replica-announce-ip redis-1.redis-headless\n" in conf
    assert oct((tmp_path / "out" / "store.conf").stat().st_mode & 0o777) == "0o600"
    same = {**env, "REPLICATION_PASSWORD": STORE_ENV["PASSWORD"]}
    assert _run("store.sh", tmp_path, same).returncode != 0
    assert _run("store.sh", tmp_path, {**env, "PASSWORD": ""}).returncode != 0


SENTINEL_ENV = {
    "REPLICATION_PASSWORD": "link-secret-456",
    "MASTER_NAME": "weather-redis",
    "SENTINELS": "s-0.s:26379 s-1.s:26379 s-2.s:26379",
    "STORES": "redis-0.redis-headless redis-1.redis-headless",
    "SELF": "s-0.s",
    "FIRST": "redis-0.redis-headless",
    "QUORUM": "2",
    "DOWN_AFTER_MS": "5000",
}


def _sentinel_conf(tmp_path: Path) -> str:
    return (tmp_path / "out" / "sentinel.conf").read_text()


@pytest.mark.skipif(shutil.which("timeout") is None, reason="needs coreutils timeout")
def test_a_sentinel_monitors_the_primary_others_name_then_the_one_that_says_so(tmp_path):
    result = _run("sentinel.sh", tmp_path, SENTINEL_ENV)
    assert result.returncode == 0, result.stderr
    conf = _sentinel_conf(tmp_path)
    assert "sentinel monitor weather-redis redis-0.redis-headless 6379 2\n" in conf
    lines = conf.splitlines()
    assert lines.index("sentinel resolve-hostnames yes") < next(
        i for i, line in enumerate(lines) if line.startswith("sentinel monitor")
    ), "hostnames must be allowed before the monitor line"
    result = _run(
        "sentinel.sh", tmp_path, {**SENTINEL_ENV, "FAKE_PRIMARY": "redis-1.redis-headless"}
    )
    assert result.returncode == 0, result.stderr
    assert "sentinel monitor weather-redis redis-1.redis-headless 6379 2\n" in (
        _sentinel_conf(tmp_path)
    )
    env = {**SENTINEL_ENV, "FAKE_MASTER": "redis-1.redis-headless", "FAKE_PRIMARY": "x"}
    assert _run("sentinel.sh", tmp_path, env).returncode == 0
    assert "monitor weather-redis redis-1.redis-headless 6379 2" in _sentinel_conf(tmp_path)
    conf = _sentinel_conf(tmp_path)
    assert "sentinel auth-user weather-redis sentinel\n" in conf
    assert "sentinel announce-ip s-0.s\n" in conf
    # Never asks itself, never puts the password on a command line.
    log = (tmp_path / "cli.log").read_text()
    assert "-h s-0.s " not in log
    assert SENTINEL_ENV["REPLICATION_PASSWORD"] not in log


# --------------------------------------------------------------------------- volumes


def test_every_volume_holds_what_the_settings_let_it_hold(infra):
    for need in volumes.needs(infra, Settings()):
        assert need.fits, (
            f"{need.workload}: requests {need.requested / volumes.GIB:.2f} GiB, needs "
            f"{need.minimum / volumes.GIB:.2f} GiB ({volumes.table([need])})"
        )


def test_the_sizing_follows_the_settings_and_catches_a_small_volume(infra):
    """The old single broker's 5 GiB (its partitions' retention and nothing else) fails,
    and more partitions need more disk."""
    settings = Settings()
    kafka = volumes.kafka_need(infra, settings)
    small = yaml.safe_load(yaml.safe_dump(infra))
    claim = _get(small, "StatefulSet", "kafka")["spec"]["volumeClaimTemplates"][0]
    claim["spec"]["resources"]["requests"]["storage"] = "5Gi"
    assert not volumes.kafka_need(small, settings).fits
    more = volumes.kafka_need(infra, Settings(kafka_partitions=settings.kafka_partitions * 2))
    assert more.minimum > kafka.minimum
    assert volumes.quantity_bytes("512Mi") == 512 * volumes.MIB
    with pytest.raises(ValueError, match="storage quantity"):
        volumes.quantity_bytes("5G")


def test_the_guide_shows_the_derived_sizes(infra):
    table = volumes.table(volumes.needs(infra, Settings()))
    assert table in GUIDE.read_text(encoding="utf-8"), (
        "docs/kubernetes.md's volume table is stale: paste `python -m kuberay.volumes`"
    )


# --------------------------------------------------------------------------- GCS FT


def test_gcs_fault_tolerance_uses_a_redis_of_its_own(kuberay, infra):
    rayservice = _get(kuberay, "RayService", "weather-pipeline")
    # The head's proxy stays in the Serve Service: while the brokers are down every worker
    # is unready, and the head is what answers 503 + Retry-After instead of a refused
    # connection.
    assert not rayservice["spec"].get("excludeHeadPodFromServeSvc")
    options = rayservice["spec"]["rayClusterConfig"]["gcsFaultToleranceOptions"]
    host, _, port = options["redisAddress"].rpartition(":")
    service = _get(kuberay, "Service", host)
    assert int(port) in {p["port"] for p in service["spec"]["ports"]}
    gcs = _get(kuberay, "StatefulSet", "ray-gcs-redis")
    assert _matches(service["spec"]["selector"], gcs["spec"]["template"]["metadata"]["labels"])
    assert gcs["spec"]["volumeClaimTemplates"], "the GCS state survives a restart"
    args = _container(gcs)["args"]
    assert args[args.index("--appendonly") + 1] == "yes"
    # Not a tweet store: no Service, Sentinel or setting of the app points there.
    tweet_hosts = {"redis", "valkey"} | {
        h.split(".")[0].rsplit("-", 1)[0]
        for key in ("REDIS_SENTINELS", "VALKEY_SENTINELS")
        for h in _topology(infra)[key].split(",")
    }
    assert host not in tweet_hosts
    config = _get(kuberay, "ConfigMap", "weather-pipeline-config")["data"]
    assert host not in config.values()
    # KubeRay sets the head's REDIS_PASSWORD from this key and refuses a head that sets it
    # itself: it must be the very key the workers' REDIS_PASSWORD (the tweet Redis) comes
    # from, or the app on the head would read another password.
    key = options["redisPassword"]["valueFrom"]["secretKeyRef"]
    cluster = rayservice["spec"]["rayClusterConfig"]
    head = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert "REDIS_PASSWORD" not in {v["name"] for v in head["env"]}
    assert not {"RAY_REDIS_ADDRESS", "REDIS_USERNAME"} & {v["name"] for v in head["env"]}
    assert "redis-password" not in cluster["headGroupSpec"]["rayStartParams"]
    worker = cluster["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
    app = next(v for v in worker["env"] if v["name"] == "REDIS_PASSWORD")
    assert app["valueFrom"]["secretKeyRef"] == key
    acl = {v["name"]: v for v in _init(gcs, "acl")["env"]}
    assert acl["PASSWORD"]["valueFrom"]["secretKeyRef"] == key


def _gcs_acl(kuberay, tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """Run the GCS Redis's ACL init container's own script with ``env``, writing to tmp_path."""
    acl = _init(_get(kuberay, "StatefulSet", "ray-gcs-redis"), "acl")
    assert {v["name"] for v in acl["env"]} >= {"ACL_FILE", *env}
    path = str(tmp_path / "users.acl")
    return subprocess.run(
        acl["command"], env={"PATH": "/usr/bin:/bin", "ACL_FILE": path, **env},
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip


def test_the_gcs_redis_admits_the_user_the_head_logs_in_as(kuberay, tmp_path):
    """The head's GCS logs in as REDIS_USERNAME when the Secret has one (KubeRay's
    gcsFaultToleranceOptions.redisUsername, k8s/external/tls): that user gets the default
    user's rights and password (only its SHA-256); a name that could break the line fails."""
    digest = hashlib.sha256(b"p w'd").hexdigest()
    rights = f"on #{digest} ~* &* +@all -flushall -flushdb"
    assert _gcs_acl(kuberay, tmp_path, PASSWORD="p w'd").returncode == 0
    assert (tmp_path / "users.acl").read_text() == f"user default {rights}\n"
    assert _gcs_acl(kuberay, tmp_path, PASSWORD="p w'd", USERNAME="weather").returncode == 0
    lines = (tmp_path / "users.acl").read_text().splitlines()
    assert lines == [f"user default {rights}", f"user weather {rights}"]
    refused = _gcs_acl(kuberay, tmp_path, PASSWORD="x", USERNAME="a b +@all")
    assert refused.returncode != 0 and "REDIS_USERNAME" in refused.stderr


def test_ray_pods_read_the_topology_only_when_it_exists(kuberay):
    """k8s/external brings no weather-pipeline-topology: the Ray pods must start without."""
    rayservice = _get(kuberay, "RayService", "weather-pipeline")
    cluster = rayservice["spec"]["rayClusterConfig"]
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    for group in groups:
        refs = {
            s["configMapRef"]["name"]: s["configMapRef"].get("optional", False)
            for s in group["template"]["spec"]["containers"][0]["envFrom"]
        }
        assert refs == {"weather-pipeline-config": False, "weather-pipeline-topology": True}


def test_the_shipped_scripts_are_posix_sh():
    for script in STORES.glob("*.sh"):
        result = subprocess.run(
            ["sh", "-n", str(script)], capture_output=True, text=True, timeout=30, check=False
        )
        assert result.returncode == 0, f"{script.name}: {result.stderr}"
        assert os.access(script, os.R_OK)
