"""A real Kubernetes node next to the control plane: containers actually run.

containerd + runc (Debian), the CNI bridge ``wp0`` (10.244.0.0/24, the node's own address
10.244.0.1), kubelet and kube-proxy (iptables mode) built from the same Kubernetes module as
the control plane, CoreDNS on the bridge address (cluster DNS, never forwards), and a
forwarder that lets pods reach the loopback API server (``kubernetes.default``).

Everything lives under ``.devstack/cluster/node``; every process is started by pid and
stopped by pid; the host changes are made by exact name (bridge ``wp0``, route, iptables
chains ``WP-FWD`` / ``WP-IN``, kube-proxy's own chains through ``kube-proxy --cleanup``,
sysctls saved and restored) and undone the same way. Pods can reach only each other, the
DNS server, the API server forwarder and the ports listed in ``Node.host_ports``; nothing is
forwarded beyond the bridge, and containerd cannot pull (its proxy is a closed loopback port).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import secrets
import shlex
import shutil
import socket
import struct
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from devstack import procs
from devstack.cluster import build, images
from devstack.cluster.control_plane import PORTS, SERVICE_CIDR, ControlPlane, http_ok
from devstack.cluster.processes import ProcessHome

NODE_HOME = build.HOME / "node"
NODE_NAME = "wp-node"
BRIDGE = "wp0"
POD_CIDR = "10.244.0.0/24"
NODE_IP = "10.244.0.1"
CHAIN_FORWARD = "WP-FWD"
CHAIN_INPUT = "WP-IN"
CNI_NETWORK = "weather-pods"
# Ports of the node's own servers: none may collide with the local stack's or the control
# plane's (see control_plane.PORTS), nor with ephemeral ports (32768+).
NODE_PORTS = {
    "kubelet": 20250,
    "kubelet-healthz": 20248,
    "containerd-stream": 20252,
    "kube-proxy-healthz": 20256,
    "kube-proxy-metrics": 20249,
    "apiserver-forward": PORTS["kube-apiserver"],  # on NODE_IP only
}
# Sysctls the kubelet, the bridge plugin or this module change; restored by ``down``.
SYSCTLS = (
    "net.ipv4.ip_forward",
    "net.bridge.bridge-nf-call-iptables",
    "vm.overcommit_memory",
    "kernel.panic",
    "kernel.panic_on_oops",
)
# Host paths the runtime hardcodes (not configurable): removed by ``down`` only when this
# node created them and they are empty.
HOST_DIRS = (
    "/run/containerd/s",
    "/run/containerd",
    "/run/netns",
    "/var/lib/cni/results",
    "/var/lib/cni",
    "/var/lib/kubelet/device-plugins",
    "/var/lib/kubelet",
    "/var/log/containers",
)
# The kubelet's own iptables chains (kube-proxy --cleanup leaves them): deleted by name.
KUBELET_CHAINS = (
    ("mangle", "KUBE-KUBELET-CANARY"),
    ("nat", "KUBE-KUBELET-CANARY"),
    ("filter", "KUBE-KUBELET-CANARY"),
    ("mangle", "KUBE-IPTABLES-HINT"),
    ("filter", "KUBE-FIREWALL"),
)
CLOSED_PROXY = "http://127.0.0.1:9"  # nothing listens: every pull fails at once
STARTUP_TIMEOUT_S = 120.0


def sh(*argv: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run a host tool (ip, iptables, openssl...); raise with its output when ``check``."""
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {result.stdout}{result.stderr}")
    return result


def read_sysctl(name: str) -> str | None:
    path = Path("/proc/sys") / name.replace(".", "/")
    return path.read_text().strip() if path.exists() else None


def write_sysctl(name: str, value: str) -> None:
    path = Path("/proc/sys") / name.replace(".", "/")
    if path.exists():
        path.write_text(value + "\n")


# ---------------------------------------------------------------------------- certificates


def openssl_ca(directory: Path) -> tuple[Path, Path]:
    """The node's CA: it signs the API server's kubelet-client certificate, and the kubelet
    accepts only certificates it signed (anonymous access off)."""
    key, crt = directory / "ca.key", directory / "ca.crt"
    if not crt.exists():
        directory.mkdir(parents=True, exist_ok=True)
        sh("openssl", "genrsa", "-out", str(key), "2048")
        sh("openssl", "req", "-x509", "-new", "-key", str(key), "-subj", "/CN=weather-node-ca",
           "-days", "3650", "-out", str(crt))  # fmt: skip
    return key, crt


def openssl_client(directory: Path, name: str, subject: str, ca: tuple[Path, Path]) -> Path:
    """A client certificate signed by the node CA (key next to it, ``name.key``)."""
    key, csr, crt = (directory / f"{name}.{s}" for s in ("key", "csr", "crt"))
    if not crt.exists():
        sh("openssl", "genrsa", "-out", str(key), "2048")
        sh("openssl", "req", "-new", "-key", str(key), "-subj", subject, "-out", str(csr))
        sh("openssl", "x509", "-req", "-in", str(csr), "-CA", str(ca[1]), "-CAkey", str(ca[0]),
           "-CAcreateserial", "-days", "3650", "-out", str(crt))  # fmt: skip
    return crt


def kubeconfig(server: str, token: str) -> str:
    """A token kubeconfig (JSON is YAML) for the kubelet, kube-proxy and CoreDNS."""
    return json.dumps(
        {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {"name": "local", "cluster": {"server": server, "insecure-skip-tls-verify": True}}
            ],
            "users": [{"name": "user", "user": {"token": token}}],
            "contexts": [{"name": "local", "context": {"cluster": "local", "user": "user"}}],
            "current-context": "local",
        }
    )


# ---------------------------------------------------------------------------- configs


def containerd_config(home: Path) -> str:
    """containerd 1.6 (config v2): all state under ``home``; runc (crun fails on this cgroup
    hybrid); ``restrict_oom_score_adj`` because the sandbox lacks CAP_SYS_RESOURCE."""
    c = home / "containerd"
    return f"""version = 2
root = "{c / "root"}"
state = "{c / "state"}"
[grpc]
  address = "{c / "containerd.sock"}"
[ttrpc]
  address = "{c / "containerd.sock.ttrpc"}"
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "{c / "opt"}"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{images.PAUSE_IMAGE}"
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "{NODE_PORTS["containerd-stream"]}"
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "{c / "runc"}"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{home / "cni" / "net.d"}"
"""


def cni_config(home: Path) -> str:
    """Bridge wp0, host-local IPAM in our dir; no masquerade (nothing leaves the bridge)."""
    ipam = {
        "type": "host-local",
        "ranges": [[{"subnet": POD_CIDR, "gateway": NODE_IP, "rangeStart": "10.244.0.10"}]],
        "dataDir": str(home / "cni" / "ipam"),
    }
    bridge = {"type": "bridge", "bridge": BRIDGE, "isGateway": True, "isDefaultGateway": True}
    bridge |= {"ipMasq": False, "hairpinMode": True, "ipam": ipam}
    plugins = [bridge]  # containerd sets up each pod's lo itself (the loopback plugin)
    return json.dumps({"cniVersion": "1.0.0", "name": CNI_NETWORK, "plugins": plugins}, indent=1)


def kubelet_config(home: Path, ca: Path) -> str:
    """KubeletConfiguration: cgroupfs on this cgroup v1 host, x509 clients of the node CA
    only, our own DNS, logs and sockets under ``home``; the kubelet may rewrite a few kernel
    sysctls (``protectKernelDefaults: false``), which ``down`` restores."""
    config = {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "cgroupDriver": "cgroupfs",
        "failCgroupV1": False,
        "containerRuntimeEndpoint": f"unix://{home / 'containerd' / 'containerd.sock'}",
        "address": NODE_IP,
        "port": NODE_PORTS["kubelet"],
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": NODE_PORTS["kubelet-healthz"],
        "readOnlyPort": 0,
        "authentication": {
            "x509": {"clientCAFile": str(ca)},
            "webhook": {"enabled": False},
            "anonymous": {"enabled": False},
        },
        "authorization": {"mode": "AlwaysAllow"},
        "clusterDomain": "cluster.local",
        "clusterDNS": [NODE_IP],
        "resolvConf": str(home / "resolv.conf"),
        "podLogsDir": str(home / "pod-logs"),
        "staticPodPath": "",
        "failSwapOn": False,
        "protectKernelDefaults": False,
        "serializeImagePulls": False,
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "evictionHard": {
            "memory.available": "200Mi",
            "nodefs.available": "5%",
            "imagefs.available": "5%",
        },
        "maxPods": 30,
    }
    return json.dumps(config, indent=1)


def kube_proxy_config(home: Path) -> str:
    """iptables mode; NodePorts on the node IP only; conntrack sysctls left alone."""
    config = {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "mode": "iptables",
        "clusterCIDR": POD_CIDR,
        "hostnameOverride": NODE_NAME,
        "bindAddress": NODE_IP,
        "healthzBindAddress": f"127.0.0.1:{NODE_PORTS['kube-proxy-healthz']}",
        "metricsBindAddress": f"127.0.0.1:{NODE_PORTS['kube-proxy-metrics']}",
        "nodePortAddresses": [f"{NODE_IP}/32"],
        "iptables": {"localhostNodePorts": False, "masqueradeAll": False},
        "conntrack": {
            "maxPerCore": 0,
            "min": 0,
            "tcpEstablishedTimeout": "0s",
            "tcpCloseWaitTimeout": "0s",
        },  # fmt: skip
        "clientConnection": {"kubeconfig": str(home / "kube-proxy.kubeconfig")},
    }
    return json.dumps(config, indent=1)


def corefile(kubeconfig_path: Path) -> str:
    """Cluster names from the API; every other name NXDOMAIN (no upstream at all)."""
    return f"""cluster.local:53 in-addr.arpa:53 {{
    bind {NODE_IP}
    kubernetes cluster.local in-addr.arpa {{
        kubeconfig {kubeconfig_path} local
        pods insecure
    }}
}}
.:53 {{
    bind {NODE_IP}
    template ANY ANY {{
        rcode NXDOMAIN
    }}
}}
"""


def write_if_changed(path: Path, text: str) -> None:
    """kube-proxy exits when its config file is rewritten: write only real changes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists() or path.read_text() != text:
        path.write_text(text)


# ---------------------------------------------------------------------------- the node


@dataclass
class Node(ProcessHome):
    """The node's processes, host changes and the control plane it joins."""

    startup_timeout_s = STARTUP_TIMEOUT_S

    home: Path = NODE_HOME
    # Extra host ports on NODE_IP that pods may open (the test's broker/store forwarders).
    host_ports: list[int] = field(default_factory=list)
    binaries: dict[str, Path] = field(default_factory=dict)
    log: Callable[[str], None] = lambda _message: None

    # -- paths ----------------------------------------------------------------------------
    @property
    def pki(self) -> Path:
        return self.home / "pki"

    @property
    def containerd_socket(self) -> Path:
        return self.home / "containerd" / "containerd.sock"

    @property
    def process_home(self) -> Path:
        return self.home

    # -- the control plane this node needs -------------------------------------------------
    def tokens(self) -> dict[str, str]:
        """Stable per-node tokens (kubelet as system:node, kube-proxy as system:kube-proxy)."""
        path = self.pki / "tokens.json"
        if not path.exists():
            self.pki.mkdir(parents=True, exist_ok=True)
            path.write_text(
                json.dumps({n: secrets.token_urlsafe(32) for n in ("kubelet", "proxy")})
            )
            path.chmod(0o600)
        return json.loads(path.read_text())

    def control_plane(self) -> ControlPlane:
        """The control plane, configured for a real node: the Node authorizer for the kubelet,
        a client certificate to reach kubelets (exec, logs), the API server's own CA
        published to pods (kube-root-ca.crt), the operator through the API server proxy
        (the host cannot resolve cluster names)."""
        ca = openssl_ca(self.pki)
        subject = "/O=system:masters/CN=kube-apiserver-kubelet-client"
        client = openssl_client(self.pki, "apiserver-kubelet-client", subject, ca)
        tokens = self.tokens()
        plane = ControlPlane()
        serving = plane.run / "pki" / "apiserver" / "apiserver.crt"
        plane.extra_args = {
            "kube-apiserver": [
                "--authorization-mode=Node,RBAC",
                f"--kubelet-client-certificate={client}",
                f"--kubelet-client-key={client.with_suffix('.key')}",
                "--kubelet-preferred-address-types=InternalIP",
            ],
            "kube-controller-manager": [f"--root-ca-file={serving}"],
            "ray-operator": ["--use-kubernetes-proxy"],
        }
        plane.extra_tokens = [
            f'{tokens["kubelet"]},system:node:{NODE_NAME},node-uid,"system:nodes"',
            f"{tokens['proxy']},system:kube-proxy,kube-proxy-uid",
        ]
        return plane

    # -- processes ---------------------------------------------------------------------------
    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> int:
        """One server at low priority (the machine has 2 cores and the stack runs too)."""
        path = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")}
        return self.spawn(name, ["nice", "-n", "19", *argv], env or path)

    def crictl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        binary = self.binaries.get("crictl") or build.binary("crictl")
        endpoint = f"unix://{self.containerd_socket}"
        argv = [str(binary), "--runtime-endpoint", endpoint, "--image-endpoint", endpoint]
        return sh(*argv, "--timeout", "30s", *args, check=check, timeout=120)

    def ctr(self, *args: str, timeout: float = 600) -> str:
        argv = ["ctr", "--address", str(self.containerd_socket), "--namespace", "k8s.io", *args]
        return sh(*argv, timeout=timeout).stdout

    # -- up ----------------------------------------------------------------------------------
    def up(self, plane: ControlPlane) -> None:
        """Network, containerd (+ images), CoreDNS, API forwarder, kubelet, kube-proxy; the
        node Ready. ``plane`` must be running and made by ``control_plane()``."""
        self.down()
        self.binaries = build.build_node()
        for name in ("containerd", "runc", "iptables", "ip", "socat", "conntrack"):
            if not shutil.which(name):
                raise FileNotFoundError(f"{name} not installed: run `make apt`")
        for sub in ("pids", "logs", "cni/net.d", "cni/ipam", "pod-logs", "kubelet"):
            (self.home / sub).mkdir(parents=True, exist_ok=True)
        self.record_host_state()
        try:
            self.network_up()
            self.start_containerd()
            self.import_images()
            self.start_coredns(plane)
            self.start_apiserver_forward(plane)
            self.start_kubelet(plane)
            self.start_kube_proxy(plane)
        except BaseException:
            self.down()
            raise

    def record_host_state(self) -> None:
        """What the host looked like before: sysctls, which hardcoded dirs already existed."""
        state = self.home / "host-state.json"
        if state.exists():  # a previous run's record is the truth (down restores it)
            return
        before = {
            "sysctls": {name: read_sysctl(name) for name in SYSCTLS},
            "existing_dirs": [d for d in HOST_DIRS if Path(d).exists()],
        }
        state.write_text(json.dumps(before, indent=1))

    def network_up(self) -> None:
        """Bridge with the node IP, service CIDR routed onto it, forwarding only inside it."""
        if sh("ip", "link", "show", BRIDGE, check=False).returncode != 0:
            sh("ip", "link", "add", BRIDGE, "type", "bridge")
        write_sysctl(f"net.ipv6.conf.{BRIDGE}.disable_ipv6", "1")
        sh("ip", "addr", "replace", f"{NODE_IP}/24", "dev", BRIDGE)
        sh("ip", "link", "set", BRIDGE, "up")
        # Unserved cluster IPs stay on the bridge instead of reaching the default gateway.
        sh("ip", "route", "replace", SERVICE_CIDR, "dev", BRIDGE, "src", NODE_IP)
        write_sysctl("net.ipv4.ip_forward", "1")  # pod -> ClusterIP -> pod
        write_sysctl("net.bridge.bridge-nf-call-iptables", "1")
        write_if_changed(
            self.home / "cni" / "net.d" / "10-weather-pods.conflist", cni_config(self.home)
        )
        (self.home / "resolv.conf").write_text("nameserver 127.0.0.53\n")  # dnsPolicy Default
        self.firewall()

    def firewall(self) -> None:
        """(Re)build our two chains and put them first in FORWARD and INPUT."""
        for chain in (CHAIN_FORWARD, CHAIN_INPUT):
            if sh("iptables", "-n", "-L", chain, check=False).returncode != 0:
                sh("iptables", "-N", chain)
            sh("iptables", "-F", chain)
        sh("iptables", "-A", CHAIN_FORWARD, "-i", BRIDGE, "-o", BRIDGE, "-j", "RETURN")
        sh("iptables", "-A", CHAIN_FORWARD, "-i", BRIDGE, "-j", "DROP")
        sh("iptables", "-A", CHAIN_FORWARD, "-o", BRIDGE, "-j", "DROP")
        established = ["-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", "RETURN"]
        sh("iptables", "-A", CHAIN_INPUT, "-i", BRIDGE, *established)
        for proto in ("udp", "tcp"):
            sh("iptables", "-A", CHAIN_INPUT, "-i", BRIDGE, "-d", NODE_IP, "-p", proto,
               "--dport", "53", "-j", "RETURN")  # fmt: skip
        for port in [NODE_PORTS["apiserver-forward"], *self.host_ports]:
            sh("iptables", "-A", CHAIN_INPUT, "-i", BRIDGE, "-d", NODE_IP, "-p", "tcp",
               "--dport", str(port), "-j", "RETURN")  # fmt: skip
        sh("iptables", "-A", CHAIN_INPUT, "-i", BRIDGE, "-j", "DROP")
        self.chains_first()

    def chains_first(self) -> None:
        """Our jumps at position 1 of FORWARD and INPUT (kube-proxy inserts its own first)."""
        for parent, chain in (("FORWARD", CHAIN_FORWARD), ("INPUT", CHAIN_INPUT)):
            while sh("iptables", "-D", parent, "-j", chain, check=False).returncode == 0:
                pass
            sh("iptables", "-I", parent, "1", "-j", chain)

    def allow_host_port(self, port: int) -> None:
        """Let pods open one more port on NODE_IP (a forwarder the test starts)."""
        if port not in self.host_ports:
            self.host_ports.append(port)
            sh("iptables", "-I", CHAIN_INPUT, "2", "-i", BRIDGE, "-d", NODE_IP, "-p", "tcp",
               "--dport", str(port), "-j", "RETURN")  # fmt: skip

    def start_containerd(self) -> None:
        config = self.home / "containerd.toml"
        config.write_text(containerd_config(self.home))
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HTTP_PROXY": CLOSED_PROXY}
        env |= {"HTTPS_PROXY": CLOSED_PROXY, "NO_PROXY": "", "http_proxy": CLOSED_PROXY}
        env |= {"https_proxy": CLOSED_PROXY}
        self.start("containerd", ["containerd", "--config", str(config)], env)
        self.wait("containerd", lambda: self.crictl("version", check=False).returncode == 0)

    def import_images(self) -> None:
        """Each image tar into containerd's k8s.io namespace, unless that tar is imported."""
        built = images.build_all(log=self.log)
        for tar in built.values():
            stamp = self.home / "containerd" / f"{tar.name}.imported"
            digest = tar.with_suffix(".inputs").read_text()
            if stamp.exists() and stamp.read_text() == digest:
                continue
            started = time.monotonic()
            self.ctr("images", "import", "--no-unpack", str(tar))
            stamp.write_text(digest)
            self.log(f"imported {tar.name} in {time.monotonic() - started:.0f} s")

    def start_coredns(self, plane: ControlPlane) -> None:
        kcfg = self.home / "coredns.kubeconfig"
        kcfg.write_text(kubeconfig(plane.server, plane.token))
        kcfg.chmod(0o600)
        core = self.home / "Corefile"
        core.write_text(corefile(kcfg))
        self.start("coredns", [str(self.binaries["coredns"]), "-conf", str(core)])
        self.wait("coredns", lambda: dns_answers("kubernetes.default.svc.cluster.local"))

    def start_apiserver_forward(self, plane: ControlPlane) -> None:
        """Pods reach the loopback API server through NODE_IP (EndpointSlice ``kubernetes``)."""
        port = NODE_PORTS["apiserver-forward"]
        listen = f"TCP-LISTEN:{port},bind={NODE_IP},fork,reuseaddr"
        self.start("apiserver-forward", ["socat", listen, f"TCP:127.0.0.1:{port}"])
        self.wait("apiserver-forward", lambda: procs.port_accepts(NODE_IP, port))
        slice_ = {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": "kubernetes-node-forward",
                "namespace": "default",
                "labels": {"kubernetes.io/service-name": "kubernetes"},
            },
            "addressType": "IPv4",
            "endpoints": [{"addresses": [NODE_IP], "conditions": {"ready": True}}],
            "ports": [{"name": "https", "port": port, "protocol": "TCP"}],
        }
        plane.kubectl("apply", "--server-side", "-f", "-", stdin=json.dumps(slice_))

    def start_kubelet(self, plane: ControlPlane) -> None:
        pki = self.pki
        ca = openssl_ca(pki)[1]
        config = self.home / "kubelet.yaml"
        config.write_text(kubelet_config(self.home, ca))
        kcfg = self.home / "kubelet.kubeconfig"
        kcfg.write_text(kubeconfig(plane.server, self.tokens()["kubelet"]))
        kcfg.chmod(0o600)
        argv = [str(self.binaries["kubelet"]), "--config", str(config)]
        argv += ["--kubeconfig", str(kcfg), "--root-dir", str(self.home / "kubelet")]
        argv += ["--cert-dir", str(pki / "kubelet"), "--hostname-override", NODE_NAME]
        argv += ["--node-ip", NODE_IP, "--v", "1"]
        self.start("kubelet", argv)
        healthz = f"http://127.0.0.1:{NODE_PORTS['kubelet-healthz']}/healthz"
        self.wait("kubelet", lambda: http_ok(healthz))
        self.wait("kubelet", lambda: node_ready(plane))

    def start_kube_proxy(self, plane: ControlPlane) -> None:
        kcfg = self.home / "kube-proxy.kubeconfig"
        kcfg.write_text(kubeconfig(plane.server, self.tokens()["proxy"]))
        kcfg.chmod(0o600)
        config = self.home / "kube-proxy" / "config.yaml"
        write_if_changed(config, kube_proxy_config(self.home))
        self.start("kube-proxy", [str(self.binaries["kube-proxy"]), "--config", str(config)])
        healthz = f"http://127.0.0.1:{NODE_PORTS['kube-proxy-healthz']}/healthz"
        self.wait("kube-proxy", lambda: http_ok(healthz))
        # Its first sync inserts its jumps at the top of FORWARD and INPUT; ours go above.
        forward = lambda: "KUBE-FORWARD" in sh("iptables", "-S", "FORWARD").stdout  # noqa: E731
        self.wait("kube-proxy", forward)
        self.chains_first()

    # -- down --------------------------------------------------------------------------------
    def down(self) -> None:
        """Undo ``up`` by pid and by name; safe to call at any point, and twice."""
        if not self.home.exists():
            return  # never started on this machine: nothing to undo
        for name in ("kube-proxy", "kubelet"):
            self.stop_process(name)
        if self.pid_file("containerd").live_pid() is not None:
            self.remove_pods()
        self.stop_process("containerd", timeout=30)
        self.stop_shims()
        # The rest this node recorded: CoreDNS, the API forwarder, the test's forwarders and
        # Kafka (devstack/cluster/external.py).
        for pid_file in sorted((self.home / "pids").glob("*.pid")):
            self.stop_process(pid_file.stem)
        self.unmount_all()
        self.network_down()
        self.restore_host_state()

    def remove_pods(self) -> None:
        """Stop and remove every sandbox of OUR containerd (CNI DEL frees veths, IPs, netns)."""
        if not (self.binaries.get("crictl") or build.binary("crictl")).exists():
            return
        listed = self.crictl("pods", "-q", check=False)
        for sandbox in listed.stdout.split():
            self.crictl("stopp", sandbox, check=False)
            self.crictl("rmp", "-f", sandbox, check=False)

    def stop_shims(self) -> None:
        """Shims of our containerd (their command line names our socket) and whatever they
        still run: found by pid, killed by pid."""
        ours = [p for p in all_pids() if str(self.containerd_socket) in " ".join(procs.cmdline(p))]
        doomed = [*ours, *descendants(ours)]
        if doomed:
            procs.terminate(doomed, timeout=10, group=False)

    def unmount_all(self) -> None:
        """Everything still mounted under our home (emptyDirs, secrets, rootfs, shm)."""
        prefix = str(self.home) + "/"
        for _ in range(3):
            mounts = [m for m in mount_points() if m.startswith(prefix)]
            if not mounts:
                return
            for mount in sorted(mounts, key=len, reverse=True):
                sh("umount", "-l", mount, check=False)

    def network_down(self) -> None:
        """kube-proxy's chains (its own cleanup), our chains, route and bridge, by name."""
        proxy = self.binaries.get("kube-proxy") or build.binary("kube-proxy")
        config = self.home / "kube-proxy" / "config.yaml"
        if proxy.exists() and config.exists():
            sh(str(proxy), "--config", str(config), "--cleanup", check=False, timeout=120)
        for parent, chain in (("FORWARD", CHAIN_FORWARD), ("INPUT", CHAIN_INPUT)):
            while sh("iptables", "-D", parent, "-j", chain, check=False).returncode == 0:
                pass
            if sh("iptables", "-n", "-L", chain, check=False).returncode == 0:
                sh("iptables", "-F", chain)
                sh("iptables", "-X", chain)
        for iptables in ("iptables", "ip6tables"):
            for table, chain in KUBELET_CHAINS:
                if sh(iptables, "-t", table, "-n", "-L", chain, check=False).returncode != 0:
                    continue
                rules = sh(iptables, "-t", table, "-S", check=False).stdout.splitlines()
                for rule in rules:  # the jumps into it (e.g. -A INPUT -j KUBE-FIREWALL)
                    if rule.startswith("-A ") and rule.endswith(f"-j {chain}"):
                        sh(iptables, "-t", table, "-D", *shlex.split(rule)[1:], check=False)
                sh(iptables, "-t", table, "-F", chain, check=False)
                sh(iptables, "-t", table, "-X", chain, check=False)
        sh("ip", "route", "del", SERVICE_CIDR, "dev", BRIDGE, check=False)
        if sh("ip", "link", "show", BRIDGE, check=False).returncode == 0:
            sh("ip", "link", "del", BRIDGE)

    def restore_host_state(self) -> None:
        """Sysctls back; the hardcoded host dirs this node created removed when empty; the
        kubelet's cgroups (``kubepods``) removed when empty."""
        state_file = self.home / "host-state.json"
        if not state_file.exists():
            return
        state = json.loads(state_file.read_text())
        for name, value in state["sysctls"].items():
            if value is not None and read_sysctl(name) != value:
                write_sysctl(name, value)
        for link in Path("/var/log/containers").glob("*.log"):
            with contextlib.suppress(OSError):
                if str(self.home) in os.readlink(link):
                    link.unlink()
        for sock in Path("/var/lib/kubelet/device-plugins").glob("kubelet.sock"):
            if "/var/lib/kubelet" not in state["existing_dirs"]:
                sock.unlink()
        if "/run/netns" not in state["existing_dirs"]:
            release_netns_dir()
        for directory in HOST_DIRS:
            if directory not in state["existing_dirs"]:
                with contextlib.suppress(OSError):
                    Path(directory).rmdir()  # only when empty
        for hierarchy in Path("/sys/fs/cgroup").iterdir():
            kubepods = hierarchy / "kubepods"
            if kubepods.is_dir():
                for sub in sorted(kubepods.rglob("*"), key=lambda p: len(p.parts), reverse=True):
                    if sub.is_dir():
                        with contextlib.suppress(OSError):
                            sub.rmdir()
                with contextlib.suppress(OSError):
                    kubepods.rmdir()
        state_file.unlink()


# ---------------------------------------------------------------------------- helpers


def dns_answers(name: str) -> bool:
    """True when our DNS server resolves ``name`` (a CoreDNS that reached the API)."""
    return dig(name) is not None


def dig(name: str, server: str = NODE_IP) -> str | None:
    """An A record from ``server`` by a raw UDP query (no resolver config involved)."""
    query_id = random.randrange(65536)
    header = struct.pack(">HHHHHH", query_id, 0x0100, 1, 0, 0, 0)
    question = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    packet = header + question + struct.pack(">HH", 1, 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(2)
        try:
            sock.sendto(packet, (server, 53))
            reply, _ = sock.recvfrom(4096)
        except OSError:
            return None
    rid, flags, _qd, answers = struct.unpack(">HHHH", reply[:8])
    if rid != query_id or flags & 0x000F or answers == 0:
        return None
    return socket.inet_ntoa(reply[-4:])


def release_netns_dir() -> None:
    """``ip netns add`` (devstack/cluster/nodes.py) bind-mounts /run/netns on itself: undone
    once no namespace is left in it, so that the directory can go."""
    directory = Path("/run/netns")
    if directory.is_dir() and not any(directory.iterdir()) and str(directory) in mount_points():
        sh("umount", str(directory), check=False)


def node_ready(plane: ControlPlane) -> bool:
    try:
        node = plane.get_json("node", NODE_NAME)
    except RuntimeError:
        return False
    conditions = {c["type"]: c["status"] for c in node.get("status", {}).get("conditions", [])}
    return conditions.get("Ready") == "True"


def all_pids() -> list[int]:
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]


def descendants(roots: list[int]) -> list[int]:
    """Every process below ``roots`` (by parent pid)."""
    children: dict[int, list[int]] = {}
    for pid in all_pids():
        with contextlib.suppress(OSError, IndexError, ValueError):
            stat = Path(f"/proc/{pid}/stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(pid)
    found, todo = [], list(roots)
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def mount_points() -> list[str]:
    """Mount points of this mount namespace (octal escapes decoded)."""
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4]
        points.append(point.encode().decode("unicode_escape"))
    return points
