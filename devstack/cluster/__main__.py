"""python -m devstack.cluster build | up | node-up | down | kubeconfig

build       build the missing Go binaries and images into .devstack/cluster (cached)
up          start a fresh control plane + KWOK + KubeRay operator and leave it running
node-up     start a fresh control plane with a real node (containerd, kubelet, kube-proxy,
            CoreDNS) instead of KWOK's fake one, and leave it running
down        stop what `up`, `node-up` (or an interrupted test) left running, by pid, and
            undo the nodes' host changes (bridge, iptables chains, sysctls, the further
            nodes' namespaces, veths, routes and cgroups) by name
kubeconfig  print the path of the running cluster's kubeconfig
"""

from __future__ import annotations

import argparse
import concurrent.futures
import sys
import time

from devstack.cluster import build, images
from devstack.cluster.control_plane import NODE_NAMES, ControlPlane
from devstack.cluster.node import Node
from devstack.cluster.nodes import known_nodes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devstack.cluster", description=__doc__)
    parser.add_argument("command", choices=["build", "up", "node-up", "down", "kubeconfig"])
    args = parser.parse_args(argv)
    started = time.monotonic()
    plane = ControlPlane()
    if args.command == "build":
        # The images mostly wait on the Debian mirror and PyPI while Go keeps both CPUs busy:
        # build them side by side (pause.c comes from the Kubernetes module, fetched first).
        build.pause_source()
        with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
            images_done = pool.submit(images.build_all)
            built = {**build.build_all(), **build.build_node()}
            for name, path in built.items():
                print(f"{name:24} {path}")
            images_done.result()
    elif args.command == "up":
        plane.up()
        print(f"cluster up in {time.monotonic() - started:.1f} s; KUBECONFIG={plane.kubeconfig}")
        print(f"kubectl: {plane.binaries['kubectl']}")
    elif args.command == "node-up":
        node = Node(log=print)
        plane = node.control_plane()
        plane.up()
        plane.kubectl("delete", "node", *NODE_NAMES, "--wait=false")
        node.up(plane)
        print(f"node Ready in {time.monotonic() - started:.1f} s; KUBECONFIG={plane.kubeconfig}")
        print(f"kubectl: {plane.binaries['kubectl']}")
    elif args.command == "down":
        first = Node()
        for extra in reversed(known_nodes(first)):
            extra.down()
        first.down()
        plane.stop()
    else:
        print(plane.kubeconfig)
    return 0


if __name__ == "__main__":
    sys.exit(main())
