"""The machine's listening TCP sockets as `ss -ltnp` reports them, and which belong to the
local stack.

A process belongs to the stack when devstack recorded its pid, or when its environment
carries ``DEVSTACK_DIR`` = this stack's state directory: devstack sets it on every server,
and everything they start (Ray's workers on every node, Serve's HAProxy) inherits it.
(Redis and Valkey overwrite their environment with their process title; their pids are
recorded.)
"""

from __future__ import annotations

import ipaddress
import re
import subprocess
from dataclasses import dataclass

from devstack import procs, stack


@dataclass(frozen=True)
class SocketListener:
    host: str
    port: int
    pids: tuple[int, ...]
    users: str

    @property
    def loopback(self) -> bool:
        if self.host == "*":
            return False
        return procs.is_loopback(ipaddress.ip_address(self.host.strip("[]").split("%")[0]))

    def __str__(self) -> str:
        return f"{self.host}:{self.port} {self.users}"


def ss_listeners() -> list[SocketListener]:
    """Every listening TCP socket on the machine, as `ss -ltnp` prints it."""
    out = subprocess.run(
        ["ss", "-ltnpH"], capture_output=True, text=True, check=True, timeout=30
    ).stdout
    found = []
    for line in out.splitlines():
        fields = line.split(maxsplit=5)
        host, _, port = fields[3].rpartition(":")
        users = fields[5].strip() if len(fields) > 5 else ""
        pids = tuple(int(p) for p in re.findall(r"pid=(\d+)", users))
        found.append(SocketListener(host, int(port), pids, users))
    return found


def stack_servers() -> list[stack.Server]:
    servers = [stack.get(name) for name in [*stack.INFRA, "ray"]]
    return [h for s in servers for h in [s, *s.helpers()]]


def stack_listeners() -> list[SocketListener]:
    recorded = {server.pid() for server in stack_servers()}
    ours = procs.belongs_to_stack
    return [lsn for lsn in ss_listeners() if any(p in recorded or ours(p) for p in lsn.pids)]


def exposed_stack_listeners() -> list[str]:
    """The stack's listeners on anything but loopback, as ``address:port users``."""
    return [str(lsn) for lsn in stack_listeners() if not lsn.loopback]
