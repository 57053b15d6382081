"""`ray start --address=127.0.0.1:<gcs>`: one more Ray node on this machine, on loopback.

Ray's CLI cannot do this by itself. With ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` (what keeps
the head on 127.0.0.1, see devstack/ray_access.py) it refuses to join a node; without it,
it rewrites the 127.0.0.1 of ``--address`` to the LAN address, where the GCS does not
listen, and the node would take the LAN address too. So this runs Ray's own CLI with
joining allowed and addresses left as given; the node then takes 127.0.0.1, the address it
reaches the GCS from, and binds its servers there. Its processes inherit
``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` from the environment, as the head's do.

usage: python -m devstack.ray_join <ray start arguments>   (local stack only)
"""

from __future__ import annotations

import sys

from ray._private import ray_constants, services
from ray.scripts.scripts import main


def keep_host(host: str) -> str:
    """In place of Ray's resolve_ip_for_localhost: 127.0.0.1 stays 127.0.0.1."""
    return host


if __name__ == "__main__":
    ray_constants.ENABLE_RAY_CLUSTER = True  # this process only: the CLI's join check
    services.resolve_ip_for_localhost = keep_host
    sys.argv = ["ray", "start", *sys.argv[1:]]
    sys.exit(main())
