"""python -m devstack.cluster build | up | down | kubeconfig

build       build the missing Go binaries into .devstack/cluster/bin (cached)
up          start a fresh control plane + KWOK + KubeRay operator and leave it running
down        stop what `up` (or an interrupted test) left running, by pid
kubeconfig  print the path of the running cluster's kubeconfig
"""

from __future__ import annotations

import argparse
import sys
import time

from devstack.cluster import build
from devstack.cluster.control_plane import ControlPlane


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devstack.cluster", description=__doc__)
    parser.add_argument("command", choices=["build", "up", "down", "kubeconfig"])
    args = parser.parse_args(argv)
    started = time.monotonic()
    plane = ControlPlane()
    if args.command == "build":
        for name, path in build.build_all().items():
            print(f"{name:24} {path}")
    elif args.command == "up":
        plane.up()
        print(f"cluster up in {time.monotonic() - started:.1f} s; KUBECONFIG={plane.kubeconfig}")
        print(f"kubectl: {plane.binaries['kubectl']}")
    elif args.command == "down":
        plane.stop()
    else:
        print(plane.kubeconfig)
    return 0


if __name__ == "__main__":
    sys.exit(main())
