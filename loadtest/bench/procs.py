"""The stack's own processes (Ray, Serve replicas, HAProxy, Kafka, RabbitMQ, Redis,
Valkey) and what each costs: CPU seconds and RSS from psutil. On a shared machine the
machine-wide CPU includes other people's work; the sum over these processes does not."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from devstack.config import stack_config
from devstack.procs import belongs_to_stack

SERVER_NAMES = {
    "java": "kafka",
    "redis-server": "redis",
    "haproxy": "haproxy",
    "gcs_server": "ray:gcs",
    "raylet": "ray:raylet",
}
RABBITMQ_PARTS = ("beam.smp", "epmd", "erl_child_setup", "inet_gethost", "rabbit")
RSS_TOLERANCE = 0.15
"""Bounded memory, as issue 20 puts it: a process's RSS within +-15 % (the soak, overload)."""


def label(cmdline: list[str], name: str) -> str:
    """A stable, readable name for one process (the same across runs, not its pid):
    a Ray actor by its title without the method it is running (Ray retitles an actor
    ``ray::<Actor>.<method>`` during a call), a server by what it is, Ray's own Python
    helpers as ``ray:<script>``."""
    first = cmdline[0] if cmdline else name
    if first.startswith("ray::"):
        actor = first.removeprefix("ray::").removeprefix("ServeReplica:")
        return actor.split(".", 1)[0].split(" ", 1)[0]
    base = Path(first.split(" ", 1)[0]).name  # redis-server rewrites its title to one string
    if "valkey" in first:
        return "valkey"
    if any(part in " ".join(cmdline[:3]) for part in RABBITMQ_PARTS):
        return "rabbitmq"
    if base in SERVER_NAMES:
        return SERVER_NAMES[base]
    script = next((Path(a).stem for a in cmdline[1:] if a.endswith(".py")), None)
    module = cmdline[cmdline.index("-m") + 1] if "-m" in cmdline[:-1] else None
    return f"ray:{script or module or base}"


def _pid_files() -> set[int]:
    """Servers started without DEVSTACK_DIR in their environment (Redis, Valkey)."""
    pids = set()
    for path in stack_config.state_dir.glob("*/*.pid"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            pids.add(int(path.read_text().split()[0]))
    return pids


def stack_processes() -> dict[int, psutil.Process]:
    """Every live process of this checkout's stack, by pid."""
    found: dict[int, psutil.Process] = {}
    for proc in psutil.process_iter():
        if belongs_to_stack(proc.pid):
            found[proc.pid] = proc
    for pid in _pid_files() - set(found):
        with contextlib.suppress(psutil.Error):
            found[pid] = psutil.Process(pid)
    return found


@dataclass(frozen=True)
class Usage:
    """CPU seconds per process (pid -> label, seconds, start time) and RSS bytes per label
    at one moment. CPU is kept per process because a label's processes come and go (a
    replica the autoscaler adds or stops): summed per label, a stopped replica would read
    as negative CPU."""

    cpu: dict[int, tuple[str, float, float]]
    rss: dict[str, int]
    rss_largest: dict[str, int] = field(default_factory=dict)
    """The largest single process's RSS per label (a replica added meanwhile is not growth)."""


def sample(procs: dict[int, psutil.Process]) -> Usage:
    """CPU and RSS of ``procs`` (a process gone meanwhile is skipped)."""
    cpu: dict[int, tuple[str, float, float]] = {}
    rss: dict[str, int] = {}
    largest: dict[str, int] = {}
    for pid, proc in procs.items():
        try:
            with proc.oneshot():
                name = label(proc.cmdline(), proc.name())
                times = proc.cpu_times()
                memory = proc.memory_info().rss
        except psutil.Error:
            continue
        cpu[pid] = (name, times.user + times.system, proc.create_time())
        rss[name] = rss.get(name, 0) + memory
        largest[name] = max(largest.get(name, 0), memory)
    return Usage(cpu, rss, largest)


def cpu_between(start: Usage, end: Usage) -> dict[str, float]:
    """CPU seconds each label used between two samples: per process alive at ``end``, its
    time since ``start`` (all of it if it started meanwhile: a pid of ``start`` with
    another start time is a new process). A process that ended meanwhile adds nothing:
    what it used after ``start`` is not known."""
    used: dict[str, float] = {}
    for pid, (name, seconds, started) in end.cpu.items():
        before = start.cpu.get(pid)
        since = seconds - before[1] if before and before[2] == started else seconds
        used[name] = used.get(name, 0.0) + since
    return {name: round(seconds, 3) for name, seconds in used.items()}


def rss_mib(usage: Usage, largest: bool = False) -> dict[str, float]:
    """RSS per label in MiB: summed over its processes, or its ``largest`` one."""
    by_label = usage.rss_largest if largest else usage.rss
    return {k: round(v / 2**20, 1) for k, v in sorted(by_label.items())}
