"""The local stack stops only the Ray processes it started: a process counts as the stack's
when it carries the stack's DEVSTACK_DIR marker, and as Ray's when it looks like Ray's.
Plain processes stand in for Ray's (``exec -a`` gives them a Ray worker's title)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from devstack import procs
from devstack.config import stack_config
from devstack.servers.ray import Ray, _is_ray
from devstack.waits import poll


def _env(marked: bool) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "DEVSTACK_DIR"}
    if marked:
        env["DEVSTACK_DIR"] = str(stack_config.state_dir)
    return env


def _spawn(title: str, marked: bool) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(["bash", "-c", f'exec -a "{title}" sleep 30'], env=_env(marked))
    poll(lambda: procs.cmdline(process.pid)[:1] == [title], timeout=10, every=0.01)
    return process


def _spawn_module(root: Path) -> subprocess.Popen[bytes]:
    """``python3 -m ray.<module>``, the way Ray starts its client server."""
    (root / "ray").mkdir()
    (root / "ray" / "__init__.py").write_text("")
    (root / "ray" / "sleeper.py").write_text("import time\ntime.sleep(30)\n")
    env = {**_env(marked=True), "PYTHONPATH": str(root)}
    process = subprocess.Popen([sys.executable, "-m", "ray.sleeper"], env=env)
    poll(lambda: "-m" in procs.cmdline(process.pid), timeout=10, every=0.01)
    return process


def _spawn_parent_of_unmarked_agent() -> subprocess.Popen[bytes]:
    """A marked Ray process whose child carries no marker, as the raylet's agents do once
    they have overwritten their environment with their title."""
    agent = "env -u DEVSTACK_DIR bash -c 'exec -a ray::DashboardAgent sleep 30'"
    process = subprocess.Popen(
        ["bash", "-c", f'exec -a "ray::raylet" bash -c "{agent} & wait"'], env=_env(marked=True)
    )
    poll(lambda: bool(_agents_of(process.pid)), timeout=10, every=0.01)
    return process


def _agents_of(pid: int) -> list[int]:
    return [
        child.pid
        for child in psutil.Process(pid).children(recursive=True)
        if procs.cmdline(child.pid)[:1] == ["ray::DashboardAgent"]
    ]


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[dict[str, int]]:
    started = {
        "our_client_server": _spawn_module(tmp_path),
        "our_worker": _spawn("ray::IDLE", marked=True),
        "foreign_worker": _spawn("ray::IDLE", marked=False),  # Ray in a pod, another checkout
        "our_other_server": _spawn("redis-server", marked=True),
        "our_raylet": _spawn_parent_of_unmarked_agent(),
    }
    try:
        yield {name: p.pid for name, p in started.items()}
    finally:
        for p in started.values():
            for child in psutil.Process(p.pid).children(recursive=True):
                child.kill()
            p.kill()
            p.wait(timeout=10)


def test_only_marked_ray_processes_are_the_stacks(processes: dict[str, int]) -> None:
    assert procs.belongs_to_stack(processes["our_worker"])
    assert not procs.belongs_to_stack(processes["foreign_worker"])
    assert _is_ray(processes["our_worker"]) and _is_ray(processes["foreign_worker"])
    assert not _is_ray(processes["our_other_server"])
    chosen = set(Ray().ray_pids())
    assert processes["our_worker"] in chosen
    assert processes["our_client_server"] in chosen
    assert processes["foreign_worker"] not in chosen
    assert processes["our_other_server"] not in chosen


def test_the_raylets_agents_are_the_stacks_without_the_marker(processes: dict[str, int]) -> None:
    (agent,) = _agents_of(processes["our_raylet"])
    assert not procs.belongs_to_stack(agent)
    chosen = set(Ray().ray_pids())
    assert {processes["our_raylet"], agent} <= chosen
