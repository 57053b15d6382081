"""What every local-stack server shares: a pid-file-tracked process in its own session, its
directory, its log, its ports, and the wait until it answers.

Each server lives in ``<devstack_dir>/<name>/``: its config, data, ``<name>.log`` (the
process's stdout+stderr) and ``<name>.pid``. Servers run in the foreground of their own
session (process group), bound to 127.0.0.1, and are stopped by pid.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import subprocess
import time
from collections.abc import Callable, Coroutine
from typing import Any

from devstack import procs
from devstack.config import LOCALHOST, stack_config, stack_env
from devstack.errors import StackError
from devstack.procs import venv_bin
from devstack.waits import poll

__all__ = ["Server", "StackError", "run_async", "venv_bin"]


def run_async(factory: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
    """Run a coroutine to completion from sync code, even inside a running event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(factory())
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, factory()).result()


class Server:
    name: str = ""
    start_timeout: float = 90.0
    stop_timeout: float = 30.0

    def __init__(self) -> None:
        self.dir = stack_config.state_dir / self.name
        self.log = self.dir / f"{self.name}.log"
        self.pidfile = procs.PidFile(self.dir / f"{self.name}.pid")

    # -- to override -------------------------------------------------------------------
    def ports(self) -> list[int]:
        raise NotImplementedError

    def address(self) -> str:
        return f"{LOCALHOST}:{self.ports()[0]}"

    def prepare(self) -> None:
        """Write config, create data dirs (idempotent)."""

    def command(self) -> list[str]:
        raise NotImplementedError

    def env(self) -> dict[str, str]:
        return stack_env()

    def probe_port(self) -> int:
        return self.ports()[0]

    def probe(self) -> bool:
        """One real protocol round trip; True when the server answers."""
        raise NotImplementedError

    def helpers(self) -> list[Server]:
        """Processes this server needs and owns besides itself (e.g. RabbitMQ's epmd)."""
        return []

    # -- lifecycle -----------------------------------------------------------------------
    def pid(self) -> int | None:
        return self.pidfile.live_pid()

    def is_running(self) -> bool:
        return self.pid() is not None

    def check_ports(self) -> None:
        for port in self.ports():
            owner = procs.port_owner(port)
            if owner is None:
                continue
            who = f"pid {owner} ({procs.proc_name(owner)})" if owner > 0 else "another process"
            raise StackError(
                f"port {port} ({self.name}) is held by {who} which this stack did not start"
            )

    def make_room(self) -> bool:
        """Before a launch: False if already running; else the ports are checked free and
        the directory exists."""
        if self.is_running():
            return False
        self.pidfile.remove()
        self.check_ports()
        self.dir.mkdir(parents=True, exist_ok=True)
        return True

    def launch(self) -> bool:
        """Start the process if it is not running; returns False if it already was."""
        if not self.make_room():
            return False
        self.prepare()
        with open(self.log, "ab") as log:
            log.write(f"\n==== devstack: starting {self.name} at {time.ctime()} ====\n".encode())
            log.flush()
            proc = subprocess.Popen(
                self.command(),
                cwd=self.dir,
                env=self.env(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.pidfile.write(proc.pid)
        return True

    def answers(self) -> bool:
        """One readiness check; raises StackError once the process is gone."""
        if self.pid() is None:
            raise StackError(self.failure("exited during start-up"))
        try:
            # cheap TCP check first, so client libraries don't log refused connections
            return procs.port_accepts(LOCALHOST, self.probe_port()) and self.probe()
        except Exception:  # noqa: BLE001 - any failure means "not ready yet"
            return False

    def wait_ready(self, timeout: float | None = None) -> None:
        timeout = timeout or self.start_timeout
        if not poll(self.answers, timeout=timeout, every=0.3):
            raise StackError(self.failure(f"did not answer within {timeout:.0f} s"))

    def failure(self, what: str) -> str:
        return f"{self.name} {what}; last lines of {self.log}:\n{procs.tail(self.log)}"

    def start(self) -> None:
        self.launch()
        self.wait_ready()

    def stop(self) -> bool:
        """Stop the process this stack started; returns False if nothing was running."""
        entry = self.pidfile.read()
        if entry is None or not procs.alive(*entry):
            self.pidfile.remove()
            return False
        procs.terminate([entry[0]], timeout=self.stop_timeout)
        self.pidfile.remove()
        self.wait_ports_free()
        return True

    def wait_ports_free(self, timeout: float = 10.0) -> None:
        poll(lambda: not procs.listening_ports() & set(self.ports()), timeout=timeout, every=0.1)

    def status(self) -> str:
        pid = self.pid()
        state = "up" if pid else "down"
        return f"{self.name:<9} {state:<5} {self.address():<32} pid {pid or '-'}"

    def endpoints(self) -> list[str]:
        return [f"{self.name}: {self.address()}"]
