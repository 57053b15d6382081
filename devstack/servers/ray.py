"""Ray: `ray start --head` (plus worker nodes on this machine), then serve_config.yaml
deployed through :mod:`devstack.serve_ops`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import psutil

from devstack import procs, ray_access, serve_ops
from devstack.config import LOCALHOST, REPO, stack_config
from devstack.servers.base import Server, StackError, venv_bin


class Ray(Server):
    """Ray daemonizes its own processes; the pid file records the GCS server (found as the
    owner of the GCS port). Stopping ends exactly the Ray processes this stack started
    (:meth:`ray_pids`), never with `ray stop`, which would end every Ray on the machine.
    Serve's HAProxy (RAY_SERVE_ENABLE_HA_PROXY=1) is no Ray process and outlives Ray, so
    its pid and config path are recorded too and stopped by pid.
    """

    name = "ray"
    start_timeout = 120.0
    deploy_timeout = 180.0

    def __init__(self, nodes: int | None = None) -> None:
        super().__init__()
        self.nodes = nodes or stack_config.ray_nodes
        self.haproxy_pidfile = procs.PidFile(self.dir / "haproxy.pid")
        self.haproxy_cfgfile = self.dir / "haproxy.cfgpath"

    def ports(self) -> list[int]:
        return [
            stack_config.ray_gcs_port,
            stack_config.ray_dashboard_port,
            stack_config.serve_http_port,
            stack_config.serve_grpc_port,
        ]

    @property
    def dashboard(self) -> str:
        return stack_config.ray_dashboard_url

    def address(self) -> str:
        return self.dashboard

    def endpoints(self) -> list[str]:
        http = stack_config.serve_http_url
        return [
            f"Dashboard: {http}/dashboard/",
            f"API docs (Swagger UI): {http}/docs",
            f"REST (Serve): {http}",
            f"gRPC (Serve): {stack_config.serve_grpc_target}",
            f"Ray dashboard: {self.dashboard}",
            f"Ray GCS: {LOCALHOST}:{stack_config.ray_gcs_port}",
        ]

    def env(self) -> dict[str, str]:
        return ray_access.ray_env()

    def _run(self, cmd: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
        return procs.run_logged(cmd, log=self.log, env=self.env(), cwd=REPO, timeout=timeout)

    def launch(self) -> bool:
        if not self.make_room():
            return False
        ray_access.ensure_token()
        cmd = [
            venv_bin("ray"), "start", "--head",
            f"--node-ip-address={LOCALHOST}",
            f"--port={stack_config.ray_gcs_port}",
            "--include-dashboard=true",
            f"--dashboard-host={LOCALHOST}",
            f"--dashboard-port={stack_config.ray_dashboard_port}",
            # several nodes: the head runs the controller and proxy only, as in Kubernetes
            f"--num-cpus={stack_config.ray_num_cpus if self.nodes == 1 else 0}",
            "--disable-usage-stats",
        ]  # fmt: skip
        result = self._run(cmd, timeout=self.start_timeout)
        gcs = procs.port_owner(stack_config.ray_gcs_port)
        if result.returncode != 0 or not gcs or gcs < 0:
            raise StackError(self.failure(f"`ray start` failed (exit {result.returncode})"))
        self.pidfile.write(gcs)
        for index in range(1, self.nodes):
            self.start_worker(index)
        return True

    def start_worker(self, index: int) -> int:
        """One more Ray node on this machine, joined to the head on 127.0.0.1 (through
        devstack/ray_join.py: Ray's own CLI would move it to the LAN address); its
        raylet's pid."""
        node_manager_port = stack_config.ray_worker_node_manager_port + index
        cmd = [
            sys.executable, "-m", "devstack.ray_join",
            f"--address={LOCALHOST}:{stack_config.ray_gcs_port}",
            f"--num-cpus={stack_config.ray_worker_num_cpus}",
            f"--node-manager-port={node_manager_port}",
            f"--dashboard-agent-listen-port={stack_config.ray_worker_agent_port + index}",
            "--disable-usage-stats",
        ]  # fmt: skip
        result = self._run(cmd, timeout=self.start_timeout)
        raylet = procs.port_owner(node_manager_port)
        if result.returncode != 0 or not raylet or raylet < 0:
            raise StackError(self.failure(f"worker node {index} did not start"))
        procs.PidFile(self.dir / f"worker-{index}.pid").write(raylet)
        return raylet

    def worker_raylet(self, index: int) -> int | None:
        """The raylet of worker node ``index`` while it runs (what a node failure kills)."""
        return procs.PidFile(self.dir / f"worker-{index}.pid").live_pid()

    def deployed_config(self) -> Path:
        """serve_config.yaml as this stack deploys it, written out (see serve_ops)."""
        return serve_ops.write_config(serve_ops.local_config(self.nodes), "local")

    def probe_port(self) -> int:
        return stack_config.ray_dashboard_port

    def probe(self) -> bool:
        return bool(ray_access.dashboard_json("/api/version", timeout=3))

    def applications(self) -> serve_ops.Apps:
        return serve_ops.applications_or_empty()

    def deployed(self) -> bool:
        return serve_ops.all_running(self.applications())

    def deploy(self, config: Path | None = None) -> None:
        """`serve deploy` the one config (or a variant of it) and wait until every
        application is RUNNING; checks first that the code imports at all."""
        check = subprocess.run(
            [sys.executable, "-c", "import serve_app.app"],
            cwd=REPO, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        if check.returncode != 0:
            raise StackError(
                "serve deploy skipped: `serve_app.app` is not importable:\n"
                + "\n".join(check.stderr.strip().splitlines()[-15:])
            )
        try:
            serve_ops.deploy(config or self.deployed_config(), timeout=self.deploy_timeout)
        finally:
            self.record_haproxy()

    def redeploy(self) -> None:
        """Delete every application, then deploy again: Serve does not notice code changes
        on `serve deploy` of an unchanged config."""
        serve_ops.shutdown(timeout=self.deploy_timeout)
        self.deploy()

    # -- HAProxy (outlives Ray) -----------------------------------------------------
    def record_haproxy(self) -> None:
        """Remember the HAProxy that Serve started: its pid and the config it runs."""
        for port in (stack_config.serve_http_port, stack_config.serve_grpc_port):
            pid = procs.port_owner(port)
            if not pid or pid < 0:
                continue
            argv = procs.cmdline(pid)
            if "-f" in argv and argv.index("-f") + 1 < len(argv):
                cfg = argv[argv.index("-f") + 1]
                self.haproxy_cfgfile.write_text(cfg)
                self.haproxy_pidfile.write(pid)
                return

    def haproxy_pids(self) -> list[int]:
        """Live HAProxy processes we recorded: the recorded pid plus any reloads of it
        (processes whose command line runs the exact config file Serve wrote for our node)."""
        recorded = self.haproxy_pidfile.live_pid()
        try:
            cfg = self.haproxy_cfgfile.read_text().strip()
        except OSError:
            cfg = ""
        reloads = [p for p in psutil.pids() if cfg and _runs_config(procs.cmdline(p), cfg)]
        return sorted({*reloads, *([recorded] if recorded else [])})

    def ray_pids(self) -> list[int]:
        """Every Ray process this stack started (GCS, raylets, dashboard and agents, workers),
        found by the stack's marker in their environment, never by name alone. The raylet's
        agents (DashboardAgent, RuntimeEnvAgent) blank their environment when they set their
        title, so they count as ours as Ray children of a process that carries the marker."""
        marked = [p for p in psutil.pids() if procs.belongs_to_stack(p) and _is_ray(p)]
        children = {child for p in marked for child in _children(p) if _is_ray(child)}
        return sorted({*marked, *children})

    def start(self) -> None:
        self.launch()
        self.wait_ready()
        if not self.deployed():
            self.deploy()
        else:
            self.record_haproxy()

    def stop(self) -> bool:
        was_running = self.is_running()
        if was_running:
            self.record_haproxy()
            # never `ray stop`: it ends every Ray process on the machine, Ray inside
            # Kubernetes pods and other checkouts' clusters included
            procs.terminate(self.ray_pids(), timeout=20, group=False)
        haproxy = self.haproxy_pids()
        if haproxy:
            procs.terminate(haproxy, timeout=10, group=False)
        self.pidfile.remove()
        for worker in self.dir.glob("worker-*.pid"):
            worker.unlink()
        self.haproxy_pidfile.remove()
        self.haproxy_cfgfile.unlink(missing_ok=True)
        self.wait_ports_free()
        return was_running or bool(haproxy)

    def status(self) -> str:
        line = super().status()
        if not self.is_running():
            return line
        apps = self.applications()
        summary = ", ".join(f"{n}={a.get('status')}" for n, a in apps.items()) or "no apps"
        hap = ",".join(map(str, self.haproxy_pids())) or "-"
        up = "up" if serve_ops.all_running(apps) else "down"
        rest = stack_config.serve_http_url
        return f"{line}\n{'serve':<9} {up:<5} {rest:<32} pid {hap} (haproxy)  [{summary}]"


def _runs_config(argv: list[str], cfg: str) -> bool:
    return "-f" in argv and cfg in argv


def _children(pid: int) -> list[int]:
    """Every descendant of ``pid`` (none once it has gone)."""
    try:
        return [c.pid for c in psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        return []


def _is_ray(pid: int) -> bool:
    """Ray's own processes: its two binaries, its workers (``ray::...`` titles) and the
    Python processes it runs from the ``ray`` package (dashboard, agents, monitors)."""
    argv = procs.cmdline(pid)
    name = procs.proc_name(pid)
    module = argv[argv.index("-m") + 1] if "-m" in argv[:2] and len(argv) > 2 else ""
    return (
        name in {"gcs_server", "raylet"}
        or module.startswith("ray.")  # e.g. the client server, `python -m ray.util.client.server`
        or any(a.startswith("ray::") or "/site-packages/ray/" in a for a in argv[:3])
    )
