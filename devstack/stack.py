"""The local stack's Python API (used by the CLI, the Makefile and the tests).

    from devstack import stack
    stack.up()                  # every server, incl. Ray + serve deploy; waits for each
    stack.up(stack.INFRA)       # only Kafka, RabbitMQ, Redis, Valkey
    stack.stop("redis"); stack.start("redis")   # start() waits until PING answers
    stack.is_running("redis")
    stack.down()                # stops only what this repo started (by pid file)

Every function raises :class:`StackError` (with the server's log tail) on failure.
"""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Iterable, Iterator

from devstack.config import stack_config, topology
from devstack.servers import INFRA, SERVERS, Kafka, Server, StackError, servers_of

__all__ = [
    "INFRA",
    "NAMES",
    "StackError",
    "down",
    "endpoints",
    "fetch",
    "get",
    "is_running",
    "start",
    "status",
    "stop",
    "up",
]

NAMES: tuple[str, ...] = tuple(SERVERS)


def get(name: str) -> Server:
    try:
        return SERVERS[name]()
    except KeyError:
        raise StackError(f"unknown server {name!r}; known: {', '.join(NAMES)}") from None


@contextlib.contextmanager
def _lock() -> Iterator[None]:
    """Serialize stack changes between processes (two `up`s never race)."""
    path = stack_config.state_dir
    path.mkdir(parents=True, exist_ok=True)
    with open(path / ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _names(names: Iterable[str] | None) -> list[str]:
    chosen = list(names) if names else list(NAMES)
    for n in chosen:
        get(n)
    return chosen


def is_running(name: str) -> bool:
    return get(name).is_running()


def start(name: str) -> None:
    """Start one server (no-op if running) and wait until it answers."""
    up([name])


def stop(name: str) -> None:
    """Stop one server this stack started (no-op otherwise) and wait for its ports."""
    with _lock():
        get(name).stop()


def up(names: Iterable[str] | None = None, log=print) -> None:
    """Start the given servers (default: all), infrastructure first, in parallel.

    Ray starts while the brokers boot; Serve is deployed once they answer, since the
    consumers connect to them.
    Raises StackError naming every server that failed.
    """
    chosen = _names(names)
    errors: list[str] = []
    with _lock():
        _claim_topology()
        infra = [get(n) for n in chosen if n != "ray"]
        launched: list[Server] = []
        for server in infra:
            try:
                if server.launch():
                    log(f"starting {server.name} ...")
                launched.append(server)
            except StackError as exc:
                errors.append(str(exc))
        ray = get("ray") if "ray" in chosen else None
        if ray is not None and not errors:
            try:  # `ray start` blocks ~10 s: overlap it with the brokers' start-up
                if ray.launch():
                    log("started ray")
            except StackError as exc:
                errors.append(str(exc))
        for server in launched:
            try:
                server.wait_ready()
                log(f"{server.name} ready at {server.address()} (pid {server.pid()})")
            except StackError as exc:
                errors.append(str(exc))
        if ray is not None and not errors:
            try:
                log("waiting for ray and the Serve applications of serve_config.yaml ...")
                ray.start()  # deploys only when some application is not RUNNING
                log(f"ray ready at {ray.address()}; Serve applications RUNNING")
            except StackError as exc:
                errors.append(str(exc))
    if errors:
        raise StackError("\n\n".join(errors))


def _claim_topology() -> None:
    """Record the topology being started (what `status` and the tools read later); refused
    while a server only the other topology has still runs."""
    current = topology()
    other = "single" if current == "replicated" else "replicated"
    ours = set(SERVERS) | {
        helper.name for factory in servers_of(current).values() for helper in factory().helpers()
    }  # e.g. the single RabbitMQ's own epmd, which the replicated topology also has
    running = [
        name
        for name, factory in servers_of(other).items()
        if name not in ours and factory().is_running()
    ]
    if running:
        raise StackError(f"the {other} topology still runs ({', '.join(running)}): `make down`")
    (stack_config.state_dir / "topology").write_text(current + "\n")


def down(names: Iterable[str] | None = None, log=print) -> None:
    """Stop what this stack started (default: all), Ray first."""
    chosen = _names(names)
    with _lock():
        for name in sorted(chosen, key=lambda n: n != "ray"):
            if get(name).stop():
                log(f"stopped {name}")


def status() -> list[str]:
    return [get(n).status() for n in NAMES]


def endpoints() -> list[str]:
    return [line for n in NAMES for line in get(n).endpoints()]


def fetch() -> None:
    """Download what the servers need that is not a system package (Kafka jars)."""
    with _lock():
        Kafka().fetch()
