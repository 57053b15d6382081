"""Process bookkeeping for the local stack: pid files, liveness, ports, signals (psutil).

A pid file holds ``"<pid> <starttime>"`` (starttime from ``/proc/<pid>/stat``), so a
recycled pid never passes for one of ours. Nothing here looks processes up by name.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import psutil

from devstack.config import stack_config
from devstack.waits import poll

GONE = (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD)


def start_time(pid: int) -> int | None:
    """The kernel's starttime in clock ticks, as pid files hold it.

    Read by hand: psutil only offers ``create_time()``, a float of seconds rebuilt from this
    integer and the boot time, and pid files written before (also by devstack/cluster) hold
    the integer itself."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # comm (field 2) may contain spaces and parentheses: field 22 counts from the last ')'
    return int(raw[raw.rfind(")") + 2 :].split()[19])


def reap(pid: int) -> None:
    """Collect the exit status if ``pid`` is our own child (avoids zombies)."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def alive(pid: int, started: int | None = None) -> bool:
    reap(pid)
    try:
        if psutil.Process(pid).status() in GONE:
            return False
    except psutil.Error:
        return False
    return started is None or start_time(pid) == started


def proc_name(pid: int) -> str:
    try:
        return psutil.Process(pid).name()
    except psutil.Error:
        return "?"


def cmdline(pid: int) -> list[str]:
    try:
        return psutil.Process(pid).cmdline()
    except psutil.Error:
        return []


def venv_bin(tool: str) -> str:
    """A console script installed next to the running interpreter (.venv/bin/...)."""
    candidate = Path(sys.executable).parent / tool
    return str(candidate) if candidate.exists() else (shutil.which(tool) or tool)


def run_logged(
    cmd: list[str], *, log: Path, env: dict[str, str], cwd: Path, timeout: float
) -> subprocess.CompletedProcess[str]:
    """Run ``cmd`` to the end with stdout+stderr captured and appended to ``log``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as out:
        out.write(f"\n==== devstack: {' '.join(cmd)} at {time.ctime()} ====\n")
        out.flush()
        result = subprocess.run(
            cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout,
        )  # fmt: skip
        out.write(result.stdout)
    return result


class PidFile:
    def __init__(self, path: Path) -> None:
        self.path = path

    def write(self, pid: int) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(f"{pid} {start_time(pid) or 0}\n")

    def read(self) -> tuple[int, int | None] | None:
        try:
            parts = self.path.read_text().split()
        except OSError:
            return None
        if not parts or not parts[0].isdigit():
            return None
        started = int(parts[1]) if len(parts) > 1 and parts[1] != "0" else None
        return int(parts[0]), started

    def live_pid(self) -> int | None:
        entry = self.read()
        if entry and alive(*entry):
            return entry[0]
        return None

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


Address = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class Listener:
    """A LISTEN socket: its local address and port, and the pid holding it (None: not
    visible to us)."""

    address: Address
    port: int
    pid: int | None

    @property
    def loopback_only(self) -> bool:
        return is_loopback(self.address)


def is_loopback(address: Address) -> bool:
    """Loopback, also as an IPv4 address mapped into IPv6 (``::ffff:127.0.0.1``)."""
    mapped = getattr(address, "ipv4_mapped", None)
    return (mapped or address).is_loopback


def listeners() -> list[Listener]:
    """Every TCP LISTEN socket on the machine (IPv4 and IPv6)."""
    return [
        Listener(ipaddress.ip_address(c.laddr.ip), c.laddr.port, c.pid)
        for c in psutil.net_connections(kind="tcp")
        if c.status == psutil.CONN_LISTEN
    ]


def port_owner(port: int) -> int | None:
    """Pid of a process listening on ``port`` (any address); -1 if its owner is not visible."""
    found = [lsn for lsn in listeners() if lsn.port == port]
    if not found:
        return None
    return next((lsn.pid for lsn in found if lsn.pid), -1)


def listening_ports() -> set[int]:
    return {lsn.port for lsn in listeners()}


def port_listening(port: int) -> bool:
    return port in listening_ports()


def port_accepts(host: str, port: int, timeout: float = 0.5) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=timeout):
        return True
    return False


def belongs_to_stack(pid: int) -> bool:
    """Whether ``pid`` was started by this checkout's stack: every server, Ray process and
    HAProxy of it carries ``DEVSTACK_DIR`` = its state directory in its environment."""
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return False
    return f"DEVSTACK_DIR={stack_config.state_dir}".encode() in environ


def _signal(pids: Iterable[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def _wait_gone(pids: list[int], timeout: float) -> None:
    # not psutil.wait_procs: it waits out a zombie that is not our child, which alive() reaps
    # or calls gone
    poll(lambda: not any(alive(p) for p in pids), timeout=timeout, every=0.05)


def terminate(pids: Iterable[int], timeout: float = 30.0, group: bool = True) -> None:
    """SIGTERM each pid, wait up to ``timeout``, then SIGKILL; then SIGKILL what is left
    of the sessions they lead.

    Our servers are started with ``start_new_session=True``, so each one leads its own
    session; that also ends helpers they spawned (erl_child_setup, inet_gethost...).
    """
    pids = [p for p in pids if alive(p)]
    leaders = [p for p in pids if group and _sid(p) == p]
    _signal(pids, signal.SIGTERM)
    _wait_gone(pids, timeout)
    _signal([p for p in pids if alive(p)], signal.SIGKILL)
    stragglers = session_members(leaders)  # erl_child_setup, inet_gethost, ...
    _signal(stragglers, signal.SIGKILL)
    _wait_gone([*pids, *stragglers], 5)


def _sid(pid: int) -> int | None:
    try:
        return os.getsid(pid)
    except OSError:
        return None


def session_members(sids: Iterable[int]) -> list[int]:
    """Live pids whose session id is one of ``sids`` (sessions our servers lead)."""
    wanted = set(sids)
    if not wanted:
        return []
    return [p for p in psutil.pids() if _sid(p) in wanted and alive(p)]


def tail(path: Path, lines: int = 40) -> str:
    try:
        data = path.read_bytes()[-64_000:]
    except OSError:
        return f"(no log at {path})"
    return "\n".join(data.decode(errors="replace").splitlines()[-lines:])
