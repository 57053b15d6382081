"""Process bookkeeping for the local stack: pid files, liveness, ports, signals.

A pid file holds ``"<pid> <starttime>"`` (starttime from ``/proc/<pid>/stat``), so a
recycled pid never passes for one of ours. Nothing here looks processes up by name.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import signal
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # comm (field 2) may contain spaces and parentheses: split after the last ')'.
    return raw[raw.rfind(")") + 2 :].split()


def start_time(pid: int) -> int | None:
    fields = _stat_fields(pid)
    return int(fields[19]) if fields else None  # field 22 of stat


def reap(pid: int) -> None:
    """Collect the exit status if ``pid`` is our own child (avoids zombies)."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def alive(pid: int, started: int | None = None) -> bool:
    reap(pid)
    fields = _stat_fields(pid)
    if not fields or fields[0] in ("Z", "X"):
        return False
    return started is None or int(fields[19]) == started


def proc_name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "?"


def cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


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


@dataclass(frozen=True)
class Listener:
    """A LISTEN socket: its local address, port and socket inode."""

    address: ipaddress.IPv4Address | ipaddress.IPv6Address
    port: int
    inode: int

    @property
    def loopback_only(self) -> bool:
        return is_loopback(self.address)


def is_loopback(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Loopback, also as an IPv4 address mapped into IPv6 (``::ffff:127.0.0.1``)."""
    mapped = getattr(address, "ipv4_mapped", None)
    return (mapped or address).is_loopback


def _hex_address(raw: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """/proc/net/tcp{,6} addresses: little-endian 32-bit words in hex."""
    words = bytes.fromhex(raw)
    packed = b"".join(words[i : i + 4][::-1] for i in range(0, len(words), 4))
    return ipaddress.ip_address(packed)


def listeners() -> list[Listener]:
    """Every TCP LISTEN socket on the machine (IPv4 and IPv6)."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            if len(cols) < 10 or cols[3] != "0A":  # 0A = LISTEN
                continue
            address, port = cols[1].rsplit(":", 1)
            found.append(Listener(_hex_address(address), int(port, 16), int(cols[9])))
    return found


def listening_inodes() -> dict[int, set[int]]:
    """port -> socket inodes of LISTEN sockets (IPv4 and IPv6)."""
    result: dict[int, set[int]] = {}
    for listener in listeners():
        result.setdefault(listener.port, set()).add(listener.inode)
    return result


def socket_owners() -> dict[int, int]:
    """socket inode -> pid of a process holding it (processes we may inspect)."""
    owners: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            for fd in (entry / "fd").iterdir():
                with contextlib.suppress(OSError):
                    target = os.readlink(fd)
                    if target.startswith("socket:["):
                        owners.setdefault(int(target[8:-1]), int(entry.name))
        except OSError:
            continue
    return owners


def port_owner(port: int) -> int | None:
    """Pid of a process listening on ``port`` (any address), if any can be found."""
    inodes = listening_inodes().get(port)
    if not inodes:
        return None
    owners = socket_owners()
    return next((owners[i] for i in inodes if i in owners), -1)  # -1: owner not visible


def port_listening(port: int) -> bool:
    return port in listening_inodes()


def port_accepts(host: str, port: int, timeout: float = 0.5) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=timeout):
        return True
    return False


def terminate(pids: Iterable[int], timeout: float = 30.0, group: bool = True) -> None:
    """SIGTERM each pid, wait up to ``timeout``, then SIGKILL; then SIGKILL what is left
    of the sessions they lead.

    Our servers are started with ``start_new_session=True``, so each one leads its own
    session; that also ends helpers they spawned (erl_child_setup, inet_gethost...).
    """
    pids = [p for p in pids if alive(p)]
    leaders = [p for p in pids if group and _sid(p) == p]
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(alive(p) for p in pids):
        time.sleep(0.1)
    for pid in pids:
        if alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    # leftovers in the sessions we started (erl_child_setup, inet_gethost, ...)
    stragglers = session_members(leaders)
    for pid in stragglers:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(alive(p) for p in [*pids, *stragglers]):
        time.sleep(0.05)


def _sid(pid: int) -> int | None:
    try:
        return os.getsid(pid)
    except OSError:
        return None


def session_members(sids: Iterable[int]) -> list[int]:
    """Live pids whose session id is one of ``sids`` (sessions our servers lead)."""
    wanted = {str(s) for s in sids}
    if not wanted:
        return []
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields and fields[3] in wanted and fields[0] not in ("Z", "X"):
                found.append(int(entry.name))
    return found


def tail(path: Path, lines: int = 40) -> str:
    try:
        data = path.read_bytes()[-64_000:]
    except OSError:
        return f"(no log at {path})"
    return "\n".join(data.decode(errors="replace").splitlines()[-lines:])
