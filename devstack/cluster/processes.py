"""Servers of the cluster test (control plane, node): each in its own session, with one pid
file and one log under a directory of its owner, stopped by pid."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from devstack import procs


class ProcessHome:
    """Start, wait for and stop named servers under :attr:`process_home`."""

    startup_timeout_s = 180.0

    @property
    def process_home(self) -> Path:
        raise NotImplementedError

    def pid_file(self, name: str) -> procs.PidFile:
        return procs.PidFile(self.process_home / "pids" / f"{name}.pid")

    def log_path(self, name: str) -> Path:
        return self.process_home / "logs" / f"{name}.log"

    def tail(self, name: str, lines: int = 40) -> str:
        try:
            text = self.log_path(name).read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def spawn(self, name: str, argv: list[str], env: dict[str, str]) -> int:
        """One server in its own session, output to its log, pid recorded."""
        self.log_path(name).parent.mkdir(parents=True, exist_ok=True)
        with self.log_path(name).open("ab") as out:
            process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=env,
                cwd=self.process_home,
            )
        self.pid_file(name).write(process.pid)
        return process.pid

    def wait(self, name: str, ready: Callable[[], bool], timeout: float | None = None) -> None:
        """Poll ``ready`` until true; fail early, with the log's tail, if the server died."""
        timeout = self.startup_timeout_s if timeout is None else timeout
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if ready():
                return
            if self.pid_file(name).live_pid() is None:
                raise RuntimeError(f"{name} exited:\n{self.tail(name)}")
            time.sleep(0.5)
        raise TimeoutError(f"{name} not ready after {timeout:.0f} s:\n{self.tail(name)}")

    def stop_process(self, name: str, timeout: float = 20) -> None:
        pid = self.pid_file(name).live_pid()
        if pid is not None:
            procs.terminate([pid], timeout=timeout)
        self.pid_file(name).remove()
