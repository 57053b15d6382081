"""Benthos as a child process on loopback: start, wait until ready, measure CPU, stop.

Only the process this module started is ever signalled, by its pid.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

from loadtest.benthos.config import LOOPBACK

READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0
POLL_S = 0.1
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    """A loopback port nobody listens on right now (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def start(binary: Path, config: Path, log: Path) -> subprocess.Popen[bytes]:
    """Run ``benthos -c config`` with its output in ``log`` (this run's only)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as out:
        return subprocess.Popen(
            [str(binary), "-c", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1.0) as response:
            return response.status == 200
    except (OSError, urllib.error.URLError):
        return False


def wait_ready(proc: subprocess.Popen[bytes], service_port: int, log: Path) -> float:
    """Poll Benthos's ``/ready`` (input and outputs connected), bounded; seconds taken."""
    started = time.monotonic()
    url = f"http://{LOOPBACK}:{service_port}/ready"
    while time.monotonic() - started < READY_TIMEOUT_S:
        if proc.poll() is not None:
            raise RuntimeError(f"benthos exited with {proc.returncode}:\n{_tail(log)}")
        if _ready(url):
            return time.monotonic() - started
        time.sleep(POLL_S)
    stop(proc)
    raise RuntimeError(f"benthos not ready after {READY_TIMEOUT_S:.0f}s:\n{_tail(log)}")


def stop(proc: subprocess.Popen[bytes]) -> int:
    """SIGTERM by pid (Benthos drains in-flight messages), SIGKILL if it hangs; exit code."""
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=STOP_TIMEOUT_S)
    return int(proc.returncode)


def cpu_seconds(pid: int) -> float:
    """User + system CPU of one process from /proc/<pid>/stat (fields 14 and 15)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat.rsplit(")", 1)[1].split()  # the command name may contain spaces
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def _tail(log: Path, lines: int = 20) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
