"""RabbitMQ with an epmd of its own, both bound to 127.0.0.1 and stopped by pid."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from devstack.config import LOCALHOST, REPO, app_settings, stack_config
from devstack.servers.base import Server, StackError, run_async

settings = app_settings()
SHARED_CONF = REPO / "k8s" / "infra" / "rabbitmq" / "10-memory.conf"
"""RabbitMQ settings the local stack shares with Kubernetes (one file, both read it)."""


# --------------------------------------------------------------------------- RabbitMQ
class Epmd(Server):
    """The Erlang port mapper our RabbitMQ node registers with.

    Ours alone: bound to 127.0.0.1 on a port of the stack's own, run in the foreground so
    `down` stops it by pid. A system epmd (Debian's rabbitmq-server package leaves an
    ``epmd -daemon`` on 0.0.0.0:4369) is neither used nor touched.
    """

    name = "epmd"
    start_timeout = 10.0
    stop_timeout = 5.0

    def ports(self) -> list[int]:
        return [stack_config.rabbitmq_epmd_port]

    def command(self) -> list[str]:
        epmd = shutil.which("epmd") or "/usr/lib/erlang/bin/epmd"
        return [epmd, "-address", LOCALHOST, "-port", str(self.ports()[0])]

    def probe(self) -> bool:
        return True  # wait_ready has already seen the port accept a connection


class RabbitMQ(Server):
    name = "rabbitmq"
    start_timeout = 120.0
    stop_timeout = 40.0
    script = "/usr/lib/rabbitmq/bin/rabbitmq-server"

    def __init__(self) -> None:
        super().__init__()
        self.epmd = Epmd()

    def helpers(self) -> list[Server]:
        return [self.epmd]

    def ports(self) -> list[int]:
        return [
            settings.rabbitmq_port,
            stack_config.rabbitmq_management_port,
            stack_config.rabbitmq_dist_port,
        ]

    def address(self) -> str:
        return f"amqp://{settings.rabbitmq_host}:{settings.rabbitmq_port}"

    def endpoints(self) -> list[str]:
        return [
            f"rabbitmq: amqp://{settings.rabbitmq_user}:***@{settings.rabbitmq_host}:"
            f"{settings.rabbitmq_port}{settings.rabbitmq_vhost}",
            f"rabbitmq management UI: http://{LOCALHOST}:{stack_config.rabbitmq_management_port}"
            f" (user {settings.rabbitmq_user})",
        ]

    def env(self) -> dict[str, str]:
        d = self.dir
        env = super().env()
        env.update(
            HOME=str(d / "home"),  # the Erlang cookie lives here
            RABBITMQ_NODENAME=stack_config.rabbitmq_node_name,
            RABBITMQ_CONF_ENV_FILE=str(d / "rabbitmq-env.conf"),
            RABBITMQ_CONFIG_FILE=str(d / "rabbitmq.conf"),
            RABBITMQ_ADVANCED_CONFIG_FILE=str(d / "advanced.config"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(d / "enabled_plugins"),
            RABBITMQ_MNESIA_BASE=str(d / "mnesia"),
            RABBITMQ_LOG_BASE=str(d / "log"),
            RABBITMQ_PID_FILE=str(d / "beam.pid"),
            RABBITMQ_DIST_PORT=str(stack_config.rabbitmq_dist_port),
            # Distribution on loopback only, and never an untracked `epmd -daemon`: the
            # node fails rather than start one if ours is not there.
            RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS=(
                "-kernel inet_dist_use_interface {127,0,0,1} -start_epmd false"
            ),
            ERL_EPMD_ADDRESS=LOCALHOST,
            ERL_EPMD_PORT=str(stack_config.rabbitmq_epmd_port),
        )
        return env

    def launch(self) -> bool:
        if self.is_running():
            return False
        self.epmd.start()
        return super().launch()

    def prepare(self) -> None:
        if not Path(self.script).exists():
            raise StackError(f"{self.script} missing: run `make install` (rabbitmq-server)")
        d = self.dir
        for sub in ("home", "mnesia", "log"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        (d / "rabbitmq-env.conf").write_text("# devstack: configuration is in the environment\n")
        (d / "enabled_plugins").write_text("[rabbitmq_management].\n")
        (d / "rabbitmq.conf").write_text(rabbitmq_conf())

    def command(self) -> list[str]:
        return [self.script]

    def probe(self) -> bool:
        import aio_pika

        async def connect() -> bool:
            conn = await aio_pika.connect(settings.rabbitmq_url, timeout=3)
            await conn.close()
            return True

        return bool(run_async(connect))

    def stop(self) -> bool:
        stopped = super().stop()
        return self.epmd.stop() or stopped

    def ctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        """rabbitmqctl against our node (same node name, cookie and epmd)."""
        return subprocess.run(
            [str(Path(self.script).with_name("rabbitmqctl")), *args],
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=60,
        )


def rabbitmq_conf() -> str:
    """The local node's rabbitmq.conf: loopback listeners, the app's user, and the settings
    shared with Kubernetes."""
    return (
        "\n".join(
            [
                f"listeners.tcp.1 = {settings.rabbitmq_host}:{settings.rabbitmq_port}",
                f"default_user = {settings.rabbitmq_user}",
                f"default_pass = {settings.rabbitmq_password.get_secret_value()}",
                f"default_vhost = {settings.rabbitmq_vhost}",
                # may log in to the management UI; not an administrator
                "default_user_tags.management = true",
                "default_permissions.configure = .*",
                "default_permissions.read = .*",
                "default_permissions.write = .*",
                "loopback_users = none",
                f"management.tcp.ip = {LOCALHOST}",
                f"management.tcp.port = {stack_config.rabbitmq_management_port}",
                "log.console = true",
                "log.console.level = info",
                "log.file = false",
                "",
            ]
        )
        + SHARED_CONF.read_text()
    )
