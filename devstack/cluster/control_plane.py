"""Start and stop the throwaway control plane: etcd, kube-apiserver, controller-manager,
scheduler, KWOK and the KubeRay operator, on loopback ports of their own.

Every process is started in its own session, its pid written to ``run/<name>.pid`` (pid and
start time, see ``devstack.procs``) and stopped by that pid only. ``up()`` first stops what a
previous, interrupted run left behind and wipes its state, so each run starts from nothing.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import ssl
import subprocess
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from devstack import procs
from devstack.cluster import build
from devstack.cluster.processes import ProcessHome

RUN = build.HOME / "run"
HOST = "127.0.0.1"
# None of these may collide with the local stack (9092-9093, 5672, 15672, 25672, 4369-4370,
# 6379-6385, 8000, 8265, 9000, 10001-19999) or with ephemeral ports (32768+).
PORTS = {
    "etcd": 22379,
    "etcd-peer": 22380,
    "kube-apiserver": 26443,
    "kube-controller-manager": 20257,
    "kube-scheduler": 20259,
    "kwok": 20247,
    "ray-operator-metrics": 28080,
    "ray-operator-probe": 28081,
}
SERVICE_CIDR = "10.96.0.0/16"  # cluster IPs are only allocated, never routed
# Three fake machines: each replicated member of k8s/infra (3 Kafka brokers, 3 RabbitMQ
# nodes, 3 Sentinels, primary + replica) must land on a machine of its own (required
# anti-affinity), and the Ray workers spread over them.
NODE_NAMES = ("kwok-node-0", "kwok-node-1", "kwok-node-2")
NODE_NAME = NODE_NAMES[0]
# Each: enough for the head, the autoscaler and every worker at maxReplicas.
NODE_CAPACITY = {"cpu": "32", "memory": "128Gi", "pods": "110"}
STARTUP_TIMEOUT_S = 180.0
ORDER = (
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kwok",
    "ray-operator",
)


def etcd_binary() -> Path:
    """Debian's etcd-server (``make apt`` installs it without starting a system etcd)."""
    found = shutil.which("etcd") or "/usr/bin/etcd"
    if not Path(found).exists():
        raise FileNotFoundError("etcd not installed: run `make apt` (Debian package etcd-server)")
    return Path(found)


def _insecure_tls() -> ssl.SSLContext:
    """The servers' self-signed certificates are made fresh per run; loopback only."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def http_ok(url: str, token: str | None = None) -> bool:
    """True when ``url`` answers 200 (health endpoints)."""
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=2, context=_insecure_tls()) as response:
            return response.status == 200
    except OSError:
        return False


def kubeconfig_text(server: str, token: str) -> str:
    """An admin kubeconfig (JSON is valid YAML) for every component and the tests."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "local", "cluster": {"server": server, "insecure-skip-tls-verify": True}}
        ],
        "users": [{"name": "admin", "user": {"token": token}}],
        "contexts": [{"name": "local", "context": {"cluster": "local", "user": "admin"}}],
        "current-context": "local",
    }
    return json.dumps(config, indent=2)


def make_service_account_key(directory: Path) -> tuple[Path, Path]:
    """RSA key pair that signs (controller-manager) and verifies (apiserver) SA tokens."""
    key, pub = directory / "sa.key", directory / "sa.pub"
    subprocess.run(["openssl", "genrsa", "-out", str(key), "2048"], check=True, capture_output=True)
    subprocess.run(
        ["openssl", "rsa", "-in", str(key), "-pubout", "-out", str(pub)],
        check=True,
        capture_output=True,
    )
    return key, pub


@dataclass
class ControlPlane(ProcessHome):
    """The running cluster: where its state lives and how to talk to it."""

    startup_timeout_s = STARTUP_TIMEOUT_S

    run: Path = RUN
    binaries: dict[str, Path] = field(default_factory=dict)
    token: str = ""
    # A real node (devstack/cluster/node.py) needs a few more flags per server (a
    # ``--flag=value`` here replaces the same flag below) and its own users' token lines.
    extra_args: dict[str, list[str]] = field(default_factory=dict)
    extra_tokens: list[str] = field(default_factory=list)

    @property
    def kubeconfig(self) -> Path:
        return self.run / "kubeconfig"

    @property
    def server(self) -> str:
        return f"https://{HOST}:{PORTS['kube-apiserver']}"

    def env(self) -> dict[str, str]:
        """Environment for kubectl, the operator and shell scripts: this cluster only (no
        user kubeconfig), and ``kubectl`` on PATH is the one built for it."""
        path = f"{self.run / 'path'}:{os.environ.get('PATH', '/usr/bin:/bin')}"
        return {
            **os.environ,
            "KUBECONFIG": str(self.kubeconfig),
            "HOME": str(self.run),
            "PATH": path,
        }

    def _run_kubectl(
        self, args: list[str], stdin: str | None = None, timeout: float = 600
    ) -> subprocess.CompletedProcess[str]:
        """The built kubectl against this cluster; raises, with its output, when it fails."""
        result = subprocess.run(
            [str(self.binaries["kubectl"]), *args],
            input=stdin,
            capture_output=True,
            text=True,
            env=self.env(),
            timeout=timeout,
        )
        if result.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)}:\n{result.stdout}{result.stderr}")
        return result

    def kubectl(self, *args: str, stdin: str | None = None) -> str:
        """kubectl's stdout and stderr (warnings) together."""
        result = self._run_kubectl(list(args), stdin)
        return result.stdout + result.stderr

    def get_json(self, *args: str) -> dict:
        """``kubectl get ... -o json`` parsed (stderr kept apart)."""
        result = self._run_kubectl(["get", *args, "-o", "json"], timeout=120)
        return json.loads(result.stdout)

    # ------------------------------------------------------------------ processes

    @property
    def process_home(self) -> Path:
        return self.run

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> int:
        """Start one server (with the flags a real node adds to it)."""
        argv = with_extra_args(argv, self.extra_args.get(name, []))
        return self.spawn(name, argv, env or self.env())

    def stop(self) -> None:
        """Stop every server this directory recorded, newest first, by pid."""
        for name in reversed(ORDER):
            self.stop_process(name)

    # ------------------------------------------------------------------ start-up

    def check_ports_free(self) -> None:
        """Refuse to start when something else holds one of our ports."""
        busy = {n: p for n, p in PORTS.items() if procs.port_listening(p)}
        if busy:
            raise RuntimeError(f"ports in use, not starting the cluster: {busy}")

    def up(self) -> None:
        """Fresh state, then every server in order, each waited for."""
        self.stop()
        shutil.rmtree(self.run, ignore_errors=True)
        (self.run / "pki").mkdir(parents=True)
        self.check_ports_free()
        self.binaries = {**build.build_all(), "etcd": etcd_binary()}
        (self.run / "path").mkdir()
        (self.run / "path" / "kubectl").symlink_to(self.binaries["kubectl"])
        self.token = secrets.token_urlsafe(32)
        lines = [f'{self.token},admin,admin-uid,"system:masters"', *self.extra_tokens]
        (self.run / "pki" / "tokens.csv").write_text("\n".join(lines) + "\n")
        self.kubeconfig.write_text(kubeconfig_text(self.server, self.token))
        self.kubeconfig.chmod(0o600)
        sa_key, sa_pub = make_service_account_key(self.run / "pki")
        try:
            self._start_etcd()
            self._start_apiserver(sa_pub, sa_key)
            self._start_controllers(sa_key)
            self._start_kwok()
            self._start_operator()
        except BaseException:
            self.stop()
            raise

    def _start_etcd(self) -> None:
        client = f"http://{HOST}:{PORTS['etcd']}"
        peer = f"http://{HOST}:{PORTS['etcd-peer']}"
        argv = [str(self.binaries["etcd"]), "--name", "weather-test"]
        argv += ["--data-dir", str(self.run / "etcd"), "--listen-client-urls", client]
        argv += ["--advertise-client-urls", client, "--listen-peer-urls", peer]
        argv += ["--initial-advertise-peer-urls", peer]
        argv += ["--initial-cluster", f"weather-test={peer}", "--log-level", "warn"]
        self.start("etcd", argv)
        self.wait("etcd", lambda: http_ok(f"{client}/health"))

    def _start_apiserver(self, sa_pub: Path, sa_key: Path) -> None:
        argv = [str(self.binaries["kube-apiserver"])]
        argv += ["--etcd-servers", f"http://{HOST}:{PORTS['etcd']}"]
        argv += ["--bind-address", HOST, "--advertise-address", HOST]
        argv += ["--secure-port", str(PORTS["kube-apiserver"])]
        argv += ["--cert-dir", str(self.run / "pki" / "apiserver")]
        argv += ["--token-auth-file", str(self.run / "pki" / "tokens.csv")]
        argv += ["--authorization-mode", "RBAC"]
        argv += ["--service-cluster-ip-range", SERVICE_CIDR]
        # No kubernetes Service endpoints pointing at a loopback apiserver.
        argv += ["--endpoint-reconciler-type", "none"]
        argv += ["--service-account-issuer", "https://kubernetes.default.svc"]
        argv += ["--service-account-key-file", str(sa_pub)]
        argv += ["--service-account-signing-key-file", str(sa_key)]
        # Debian's etcd (3.4) cannot report watch progress, so the apiserver fails every
        # watch it turns into a watch-list stream, which with this gate on is every watch
        # from resourceVersion 0. KWOK watches that way: its Lease cache went stale, its
        # renewals failed on conflicts, and when none landed for 50 s the node turned
        # NotReady and its pods not ready for good (KWOK only readies Pending pods).
        argv += ["--feature-gates=WatchList=false"]
        self.start("kube-apiserver", argv)
        self.wait("kube-apiserver", lambda: http_ok(f"{self.server}/readyz", self.token))

    def _start_controllers(self, sa_key: Path) -> None:
        kubeconfig = str(self.kubeconfig)
        common = ["--kubeconfig", kubeconfig, "--bind-address", HOST, "--leader-elect=false"]
        common += ["--authentication-kubeconfig", kubeconfig]
        common += ["--authorization-kubeconfig", kubeconfig]
        manager = [str(self.binaries["kube-controller-manager"]), *common]
        manager += ["--secure-port", str(PORTS["kube-controller-manager"])]
        manager += ["--service-account-private-key-file", str(sa_key)]
        manager += ["--cert-dir", str(self.run / "pki" / "controller-manager")]
        manager += ["--use-service-account-credentials=false", "--controllers=*"]
        self.start("kube-controller-manager", manager)
        scheduler = [str(self.binaries["kube-scheduler"]), *common]
        scheduler += ["--secure-port", str(PORTS["kube-scheduler"])]
        scheduler += ["--cert-dir", str(self.run / "pki" / "scheduler")]
        self.start("kube-scheduler", scheduler)
        for name in ("kube-controller-manager", "kube-scheduler"):
            url = f"https://{HOST}:{PORTS[name]}/healthz"
            self.wait(name, lambda url=url: http_ok(url))

    def _start_kwok(self) -> None:
        stages = self.run / "kwok-stages.yaml"
        texts = [build.kwok_file(f).read_text().strip() for f in build.KWOK_STAGES]
        stages.write_text("\n---\n".join(texts) + "\n")
        argv = [str(self.binaries["kwok"]), "--kubeconfig", str(self.kubeconfig)]
        argv += ["--config", str(stages), "--manage-all-nodes=false"]
        argv += ["--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake"]
        argv += ["--node-lease-duration-seconds=40"]
        argv += ["--server-address", f"{HOST}:{PORTS['kwok']}"]
        self.start("kwok", argv)
        # The cluster's default StorageClass, provisioned by KWOK's stages.
        storage_class = str(build.kwok_file(build.KWOK_STORAGE_CLASS))
        self.kubectl("apply", "--server-side", "-f", storage_class)
        for name in NODE_NAMES:
            self.kubectl("apply", "--server-side", "-f", "-", stdin=json.dumps(fake_node(name)))
        nodes = [f"node/{name}" for name in NODE_NAMES]
        self.kubectl("wait", "--for=condition=Ready", *nodes, "--timeout=120s")

    def _start_operator(self) -> None:
        crds = build.kuberay_crds()
        self.kubectl("apply", "--server-side", *(f"--filename={c}" for c in crds))
        self.kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")
        argv = [str(self.binaries["ray-operator"])]
        argv += ["--metrics-addr", f"{HOST}:{PORTS['ray-operator-metrics']}"]
        argv += ["--health-probe-bind-address", f"{HOST}:{PORTS['ray-operator-probe']}"]
        argv += ["--enable-leader-election=false", "--log-stdout-encoder", "console"]
        self.start("ray-operator", argv)
        probe = f"http://{HOST}:{PORTS['ray-operator-probe']}/readyz"
        self.wait("ray-operator", lambda: http_ok(probe))


def with_extra_args(argv: list[str], extra: list[str]) -> list[str]:
    """``argv`` plus ``extra``; an extra ``--flag=value`` drops the same flag from ``argv``
    (``--flag value`` or ``--flag=value``), so list flags are never given twice."""
    names = {arg.split("=", 1)[0] for arg in extra if arg.startswith("--") and "=" in arg}
    kept: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        name = arg.split("=", 1)[0]
        if name in names:
            skip = "=" not in arg
            continue
        kept.append(arg)
    return [*kept, *extra]


def fake_node(name: str = NODE_NAME) -> dict:
    """A Node that KWOK keeps Ready and whose Pods it reports Running."""
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {"kubernetes.io/hostname": name, "type": "kwok"},
        },
        "spec": {},
        "status": {"capacity": NODE_CAPACITY, "allocatable": NODE_CAPACITY},
    }
