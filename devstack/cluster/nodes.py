"""More real nodes on the same machine, each in a network namespace of its own.

The first node (devstack/cluster/node.py) runs in the host's namespace on the bridge ``wp0``
(10.244.0.0/24, the host 10.244.0.1). Each further node ``wp-node-<i>`` (i = 1, 2, ...) is:

* a network namespace ``wp-node-<i>`` joined to ``wp0`` by a veth pair (host side
  ``wpv<i>``, inside ``eth0`` with the node IP 10.244.0.<1+i>, default route via the host);
* its own pod network 10.244.<i>.0/24 on a CNI bridge ``cni0`` inside the namespace, routed
  from the host via the node IP (so pods of every node reach each other through the host,
  which forwards only from ``wp0`` back into ``wp0``: see node.py's ``WP-FWD``);
* its own containerd (root, state, socket, runc root and CNI config under
  ``.devstack/cluster/node-<i>``), kubelet (``--root-dir`` there, cgroups under
  ``/wp-node-<i>`` so no kubelet ever sees another's pods) and kube-proxy, all three started
  inside the namespace (``nsenter --net``, not ``ip netns exec``, which would remount
  ``/sys`` and hide the cgroup hierarchies);
* the host's CoreDNS and API server forwarder (on 10.244.0.1) serve it too.

Every process is recorded by pid and stopped by pid; the namespace (and with it the node's
iptables, kube-proxy's chains included), the veth, the route and the cgroup directories are
removed by their exact names. ``kill`` takes a node away as a lost machine would go: its
kubelet, containerd, shims and containers killed by pid (SIGKILL), nothing cleaned up.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from devstack import procs
from devstack.cluster import build, images
from devstack.cluster.control_plane import ControlPlane, http_ok
from devstack.cluster.node import (
    BRIDGE,
    CLOSED_PROXY,
    NODE_IP,
    NODE_PORTS,
    Node,
    all_pids,
    containerd_config,
    descendants,
    kubeconfig,
    mount_points,
    release_netns_dir,
    sh,
)
from devstack.cluster.processes import ProcessHome

CLUSTER_CIDR = "10.244.0.0/16"  # every node's pods
CNI_BRIDGE = "cni0"  # inside each node's namespace only
CGROUP_ROOT = Path("/sys/fs/cgroup")
STARTUP_TIMEOUT_S = 180.0


def node_name(index: int) -> str:
    return f"wp-node-{index}"


def node_ready(plane: ControlPlane, name: str) -> bool:
    try:
        node = plane.get_json("node", name)
    except RuntimeError:
        return False
    conditions = {c["type"]: c["status"] for c in node.get("status", {}).get("conditions", [])}
    return conditions.get("Ready") == "True"


def cgroup_hierarchies() -> list[Path]:
    """Mounted cgroup hierarchies (v1 controllers, the named systemd one, the unified one)."""
    return [h for h in CGROUP_ROOT.iterdir() if (h / "cgroup.procs").exists()]


@dataclass
class NetnsNode(ProcessHome):
    """One more node: namespace, veth, route, containerd, kubelet, kube-proxy."""

    index: int
    first: Node  # the host's node: its CA signs the API server's kubelet client
    binaries: dict[str, Path] = field(default_factory=dict)
    log: Callable[[str], None] = print

    startup_timeout_s = STARTUP_TIMEOUT_S

    def __post_init__(self) -> None:
        if not 1 <= self.index <= 8:
            raise ValueError(f"node index {self.index} outside 1..8")

    # -- names -------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return node_name(self.index)

    @property
    def netns(self) -> str:
        return self.name

    @property
    def veth(self) -> str:
        return f"wpv{self.index}"

    @property
    def ip(self) -> str:
        return f"10.244.0.{1 + self.index}"

    @property
    def pod_cidr(self) -> str:
        return f"10.244.{self.index}.0/24"

    @property
    def gateway(self) -> str:
        return f"10.244.{self.index}.1"

    @property
    def home(self) -> Path:
        return build.HOME / f"node-{self.index}"

    @property
    def process_home(self) -> Path:
        return self.home

    @property
    def containerd_socket(self) -> Path:
        return self.home / "containerd" / "containerd.sock"

    @property
    def cgroup_parent(self) -> str:
        return f"/{self.name}"

    # -- the control plane's side ------------------------------------------------------------
    def token_line(self) -> str:
        """The kubelet's user for the API server's token file (Node authorizer: its node)."""
        return f'{self.tokens()["kubelet"]},system:node:{self.name},{self.name}-uid,"system:nodes"'

    def tokens(self) -> dict[str, str]:
        path = self.home / "pki" / "tokens.json"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({"kubelet": secrets.token_urlsafe(32)}))
            path.chmod(0o600)
        return json.loads(path.read_text())

    # -- processes ---------------------------------------------------------------------------
    def inside(self, *argv: str) -> list[str]:
        return ["nsenter", f"--net=/run/netns/{self.netns}", "--", *argv]

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> int:
        path = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")}
        return self.spawn(name, self.inside("nice", "-n", "19", *argv), env or path)

    def ctr(self, *args: str, timeout: float = 900) -> str:
        argv = ["ctr", "--address", str(self.containerd_socket), "--namespace", "k8s.io", *args]
        return sh(*argv, timeout=timeout).stdout

    def crictl(self, *args: str, check: bool = True):
        binary = self.binaries.get("crictl") or build.binary("crictl")
        endpoint = f"unix://{self.containerd_socket}"
        argv = [str(binary), "--runtime-endpoint", endpoint, "--image-endpoint", endpoint]
        return sh(*argv, "--timeout", "30s", *args, check=check, timeout=120)

    # -- up ----------------------------------------------------------------------------------
    def up(self, plane: ControlPlane) -> None:
        """The node Ready; ``plane`` and the first node running (bridge, DNS, forwarder)."""
        self.down()
        self.binaries = build.build_node()
        for sub in ("pids", "logs", "cni/net.d", "cni/ipam", "pod-logs", "kubelet"):
            (self.home / sub).mkdir(parents=True, exist_ok=True)
        try:
            self.network_up()
            self.cgroups_up()
            self.start_containerd()
            self.import_images()
            self.start_kubelet(plane)
            self.start_kube_proxy()
        except BaseException:
            self.down()
            raise

    def network_up(self) -> None:
        sh("ip", "netns", "add", self.netns)
        sh("ip", "link", "add", self.veth, "type", "veth", "peer", "name", "eth0", "netns",
           self.netns)  # fmt: skip
        sh("ip", "link", "set", self.veth, "master", BRIDGE, "up")
        run = lambda *a: sh("ip", "netns", "exec", self.netns, *a)  # noqa: E731
        run("ip", "link", "set", "lo", "up")
        run("ip", "addr", "add", f"{self.ip}/24", "dev", "eth0")
        run("ip", "link", "set", "eth0", "up")
        run("ip", "route", "add", "default", "via", NODE_IP)
        for name, value in (("net/ipv4/ip_forward", "1"), ("net/ipv6/conf/all/disable_ipv6", "1")):
            sh(*self.inside("sh", "-c", f"echo {value} > /proc/sys/{name}"))
        sh("ip", "route", "replace", self.pod_cidr, "via", self.ip, "dev", BRIDGE)
        net_d = self.home / "cni" / "net.d"
        (net_d / "10-weather-pods.conflist").write_text(self.cni_config())
        (self.home / "resolv.conf").write_text("nameserver 127.0.0.53\n")

    def cni_config(self) -> str:
        ipam = {
            "type": "host-local",
            "ranges": [[{"subnet": self.pod_cidr, "gateway": self.gateway}]],
            "dataDir": str(self.home / "cni" / "ipam"),
        }
        bridge = {"type": "bridge", "bridge": CNI_BRIDGE, "isGateway": True}
        bridge |= {"isDefaultGateway": True, "ipMasq": False, "hairpinMode": True, "ipam": ipam}
        name = f"weather-pods-{self.index}"
        return json.dumps({"cniVersion": "1.0.0", "name": name, "plugins": [bridge]}, indent=1)

    def cgroups_up(self) -> None:
        """The kubelet refuses a cgroup root that does not exist: one per hierarchy."""
        for hierarchy in cgroup_hierarchies():
            directory = hierarchy / self.name
            directory.mkdir(exist_ok=True)
            for knob in ("cpuset.cpus", "cpuset.mems"):  # a v1 cpuset starts empty
                if (hierarchy / knob).exists():
                    (directory / knob).write_text((hierarchy / knob).read_text())

    def start_containerd(self) -> None:
        config = self.home / "containerd.toml"
        config.write_text(containerd_config(self.home))
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HTTP_PROXY": CLOSED_PROXY}
        env |= {"HTTPS_PROXY": CLOSED_PROXY, "NO_PROXY": "", "http_proxy": CLOSED_PROXY}
        env |= {"https_proxy": CLOSED_PROXY}
        self.start("containerd", ["containerd", "--config", str(config)], env)
        self.wait("containerd", lambda: self.crictl("version", check=False).returncode == 0)

    def import_images(self) -> None:
        built = images.build_all(log=self.log)
        for tar in built.values():
            stamp = self.home / "containerd" / f"{tar.name}.imported"
            digest = tar.with_suffix(".inputs").read_text()
            if stamp.exists() and stamp.read_text() == digest:
                continue
            started = time.monotonic()
            self.ctr("images", "import", "--no-unpack", str(tar))
            stamp.write_text(digest)
            self.log(f"{self.name}: imported {tar.name} in {time.monotonic() - started:.0f} s")

    def kubelet_config(self) -> str:
        ca = self.first.pki / "ca.crt"
        config = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "cgroupDriver": "cgroupfs",
            "cgroupRoot": self.cgroup_parent,
            "failCgroupV1": False,
            "containerRuntimeEndpoint": f"unix://{self.containerd_socket}",
            "address": self.ip,
            "port": NODE_PORTS["kubelet"],
            "healthzBindAddress": self.ip,
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
            "resolvConf": str(self.home / "resolv.conf"),
            "podLogsDir": str(self.home / "pod-logs"),
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

    def start_kubelet(self, plane: ControlPlane) -> None:
        config = self.home / "kubelet.yaml"
        config.write_text(self.kubelet_config())
        kcfg = self.home / "kubelet.kubeconfig"
        server = f"https://{NODE_IP}:{NODE_PORTS['apiserver-forward']}"
        kcfg.write_text(kubeconfig(server, self.tokens()["kubelet"]))
        kcfg.chmod(0o600)
        argv = [str(self.binaries["kubelet"]), "--config", str(config)]
        argv += ["--kubeconfig", str(kcfg), "--root-dir", str(self.home / "kubelet")]
        argv += ["--cert-dir", str(self.home / "pki" / "kubelet"), "--hostname-override", self.name]
        argv += ["--node-ip", self.ip, "--v", "1"]
        self.start("kubelet", argv)
        healthz = f"http://{self.ip}:{NODE_PORTS['kubelet-healthz']}/healthz"
        self.wait("kubelet", lambda: http_ok(healthz))
        self.wait("kubelet", lambda: node_ready(plane, self.name))

    def start_kube_proxy(self) -> None:
        kcfg = self.home / "kube-proxy.kubeconfig"
        server = f"https://{NODE_IP}:{NODE_PORTS['apiserver-forward']}"
        kcfg.write_text(kubeconfig(server, self.first.tokens()["proxy"]))
        kcfg.chmod(0o600)
        config = {
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
            "kind": "KubeProxyConfiguration",
            "mode": "iptables",
            "clusterCIDR": CLUSTER_CIDR,
            "hostnameOverride": self.name,
            "bindAddress": self.ip,
            "healthzBindAddress": f"{self.ip}:{NODE_PORTS['kube-proxy-healthz']}",
            "metricsBindAddress": f"{self.ip}:{NODE_PORTS['kube-proxy-metrics']}",
            "nodePortAddresses": [f"{self.ip}/32"],
            "iptables": {"localhostNodePorts": False, "masqueradeAll": False},
            "conntrack": {
                "maxPerCore": 0,
                "min": 0,
                "tcpEstablishedTimeout": "0s",
                "tcpCloseWaitTimeout": "0s",
            },
            "clientConnection": {"kubeconfig": str(kcfg)},
        }
        path = self.home / "kube-proxy.yaml"
        path.write_text(json.dumps(config, indent=1))
        self.start("kube-proxy", [str(self.binaries["kube-proxy"]), "--config", str(path)])
        healthz = f"http://{self.ip}:{NODE_PORTS['kube-proxy-healthz']}/healthz"
        self.wait("kube-proxy", lambda: http_ok(healthz))

    # -- a lost machine ----------------------------------------------------------------------
    def runtime_pids(self) -> list[int]:
        """kubelet, kube-proxy, containerd, its shims and everything they run, by pid."""
        roots = [
            pid
            for name in ("kubelet", "kube-proxy", "containerd")
            if (pid := self.pid_file(name).live_pid()) is not None
        ]
        socket = str(self.containerd_socket)
        shims = [p for p in all_pids() if socket in " ".join(procs.cmdline(p))]
        return sorted({*roots, *shims, *descendants([*roots, *shims])})

    def kill(self) -> list[int]:
        """SIGKILL to every process of the node at once, as a power cut; the pids killed."""
        doomed = self.runtime_pids()
        for pid in doomed:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return doomed

    # -- down --------------------------------------------------------------------------------
    def down(self) -> None:
        """Undo ``up`` by pid and by name; safe at any point, and twice."""
        if not self.home.exists():
            return
        for name in ("kube-proxy", "kubelet"):
            self.stop_process(name)
        task_ids = self.task_ids()
        self.restart_lost_containerd()
        if self.pid_file("containerd").live_pid() is not None:
            listed = self.crictl("pods", "-q", check=False)
            for sandbox in listed.stdout.split():
                self.crictl("stopp", sandbox, check=False)
                self.crictl("rmp", "-f", sandbox, check=False)
        self.stop_process("containerd", timeout=30)
        leftover = self.runtime_pids()
        if leftover:
            procs.terminate(leftover, timeout=10, group=False)
        for pid_file in sorted((self.home / "pids").glob("*.pid")):
            self.stop_process(pid_file.stem)
        prefix = str(self.home) + "/"
        for _ in range(3):
            mounts = [m for m in mount_points() if m.startswith(prefix)]
            for mount in sorted(mounts, key=len, reverse=True):
                sh("umount", "-l", mount, check=False)
        sh("ip", "route", "del", self.pod_cidr, "via", self.ip, check=False)
        if sh("ip", "link", "show", self.veth, check=False).returncode == 0:
            sh("ip", "link", "del", self.veth)
        if self.netns_exists():
            sh("ip", "netns", "del", self.netns)
        release_netns_dir()
        self.remove_shim_sockets(task_ids)
        self.cgroups_down()
        for link in Path("/var/log/containers").glob("*.log"):
            with contextlib.suppress(OSError):
                if str(self.home) in os.readlink(link):
                    link.unlink()

    def restart_lost_containerd(self) -> None:
        """After ``kill`` the pods' sandboxes (network namespaces, veths, shim sockets) are
        still there: containerd started once more removes them as on a reboot (CNI DEL)."""
        killed = self.pid_file("containerd").live_pid() is None
        if killed and (self.home / "containerd" / "root").exists() and self.netns_exists():
            with contextlib.suppress(RuntimeError, TimeoutError):
                self.start_containerd()

    def task_ids(self) -> list[str]:
        """Ids of the tasks (sandboxes, containers) this node's containerd has a bundle for."""
        bundles = self.home / "containerd" / "state" / "io.containerd.runtime.v2.task" / "k8s.io"
        return sorted(p.name for p in bundles.iterdir()) if bundles.is_dir() else []

    def remove_shim_sockets(self, task_ids: list[str]) -> None:
        """A killed shim leaves its socket in /run/containerd/s (a path containerd hardcodes),
        named by the hash of our socket, namespace and task id: removed by that exact name."""
        for task in task_ids:
            key = os.path.join(str(self.containerd_socket), "k8s.io", task)
            path = Path("/run/containerd/s") / hashlib.sha256(key.encode()).hexdigest()
            if path.is_socket():
                path.unlink()

    def netns_exists(self) -> bool:
        return Path(f"/run/netns/{self.netns}").exists()

    def cgroups_down(self) -> None:
        """Our cgroup root in each hierarchy, deepest first (rmdir fails on a busy one)."""
        for hierarchy in cgroup_hierarchies():
            top = hierarchy / self.name
            if not top.is_dir():
                continue
            for sub in sorted(top.rglob("*"), key=lambda p: len(p.parts), reverse=True):
                if sub.is_dir():
                    with contextlib.suppress(OSError):
                        sub.rmdir()
            with contextlib.suppress(OSError):
                top.rmdir()


def extra_nodes(first: Node, count: int) -> list[NetnsNode]:
    """Nodes 1..count next to ``first``, their kubelets' users added to its control plane."""
    return [NetnsNode(index, first, log=first.log) for index in range(1, count + 1)]


def known_nodes(first: Node) -> list[NetnsNode]:
    """Every namespace node a run left a home for (``down`` of an interrupted run)."""
    indexes = sorted(
        int(home.name.removeprefix("node-"))
        for home in build.HOME.glob("node-*")
        if home.name.removeprefix("node-").isdigit()
    )
    return [NetnsNode(index, first) for index in indexes if 1 <= index <= 8]
