"""A broker on a small filesystem that fills up: the full disk must turn into 503s, never
a lost 202, and everything must flow again once space is back.

For a round, a broker's data directory lives on a tmpfs of its own (:class:`SmallDisk`) sized
to its data plus some headroom: the broker is stopped (devstack's own stop), its data copied
onto the tmpfs, which is bind-mounted over the data directory, and the broker started again.
The fault writes a filler file into the data directory. Afterwards the broker is stopped, the
tmpfs content (its data as it is now, dead letters included) replaces the data directory
(copy beside it, then two renames), both mounts are removed by exact path and the broker
started again. A killed run leaves the mounts behind: the next run finds them by path and
restores the same way.

- RabbitMQ (``rabbitmq_disk_full``): filled to 20 MB free, below its disk limit (50 MB, the
  default): the disk alarm blocks publishers while it holds, past the publish deadline;
  then the filler is deleted and the alarm clears. After each restart the round waits until
  the dead-letter queue reads the depth it had before (a quorum queue reads empty while it
  replays its log), so the dead-letter counts before and after compare like with like.
- Kafka (``kafka_disk_full``): filled to the last byte. Kafka has no disk alarm: an append
  (a tweet, a commit, its own metadata log) fails with "No space left on device", the log
  directory is marked failed, and a broker whose every log directory has failed halts. The
  round holds the full disk past the publish deadline, deletes the filler and starts Kafka
  again, as an operator or Kubernetes would; Kafka recovers its logs from what is on disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import shutil
import subprocess
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from devstack import procs, stack
from devstack.config import stack_config
from devstack.waits import apoll
from loadtest.chaos.core import Context, rabbitmq_dead_letters, rabbitmq_recovered, settings

LEAVE_FREE_MB = 20
"""Free space the filler leaves RabbitMQ: below its default disk_free_limit (50 MB)."""


def _mount(*args: str) -> None:
    done = subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: {done.stderr.strip()}")


def mounted(path: Path) -> bool:
    return os.path.ismount(path)


def free_mb(path: Path) -> float:
    return shutil.disk_usage(path).free / 2**20


def data_mb(data: Path) -> int:
    """The data's size in MB (symlinks not followed)."""
    files = (f for f in data.rglob("*") if f.is_file() and not f.is_symlink())
    return int(sum(f.stat().st_size for f in files) / 2**20)


@dataclass(frozen=True)
class SmallDisk:
    """One server's data directory moved onto a tmpfs of its own for a round, and back."""

    server: str
    data: Path
    headroom_mb: int
    """Free space on the tmpfs once the data is on it, before the round fills it."""

    @property
    def stage(self) -> Path:
        return Path(f"/tmp/weather-chaos-{self.server}-disk")

    @property
    def filler(self) -> Path:
        return self.data / "chaos-filler"

    @property
    def new(self) -> Path:
        return self.data.with_name(f"{self.data.name}.chaos-new")

    @property
    def old(self) -> Path:
        return self.data.with_name(f"{self.data.name}.chaos-old")

    def tmpfs_mb(self) -> int:
        """The data's current size plus the headroom. A fixed size fails once the data grows
        (161,000 dead letters of earlier runs took 122 MB of a 160 MB tmpfs, under
        RabbitMQ's limit before the round began, and the alarm could never clear)."""
        return data_mb(self.data) + self.headroom_mb

    def onto_tmpfs(self) -> None:
        """The server stopped, its data on a fresh tmpfs bind-mounted over its directory."""
        stack.stop(self.server)
        self.stage.mkdir(exist_ok=True)
        size = f"size={self.tmpfs_mb()}m,mode=0755"
        _mount("mount", "-t", "tmpfs", "-o", size, "tmpfs", str(self.stage))
        shutil.copytree(self.data, self.stage, dirs_exist_ok=True, symlinks=True)
        _mount("mount", "--bind", str(self.stage), str(self.data))
        stack.start(self.server)

    def back_to_disk(self) -> list[str]:
        """Undo :meth:`onto_tmpfs` from whatever state it (or a killed run) left; returns
        the steps taken (nothing when nothing of ours is there)."""
        steps: list[str] = []
        if mounted(self.data) or mounted(self.stage) or self.new.exists() or self.old.exists():
            stack.stop(self.server)
            steps.append(f"stopped {self.server}")
        if mounted(self.data):
            self.filler.unlink(missing_ok=True)
            if self.new.exists():
                shutil.rmtree(self.new)
            shutil.copytree(self.data, self.new, symlinks=True)  # the data as the server left it
            _mount("umount", str(self.data))
            steps.append("copied the tmpfs data beside the data directory; unmounted the bind")
        if mounted(self.stage):
            _mount("umount", str(self.stage))
            steps.append(f"unmounted {self.stage}")
        if self.new.exists():
            if self.old.exists():
                shutil.rmtree(self.old)
            self.data.rename(self.old)
            self.new.rename(self.data)
            steps.append("data directory replaced by the round's data")
        if self.old.exists() and self.data.exists():
            shutil.rmtree(self.old)
        elif self.old.exists():
            self.old.rename(self.data)
        with contextlib.suppress(OSError):
            self.stage.rmdir()
        if steps:
            stack.start(self.server)
            steps.append(f"started {self.server}")
        return steps

    def fill(self, leave_free_mb: int) -> int:
        """Write the filler until ``leave_free_mb`` is left (0: until the filesystem refuses
        a write, the server's own writes racing it); returns the MB written. Only ever on
        the round's tmpfs: the host's disks are never filled."""
        assert mounted(self.data), f"{self.data} is not on the round's tmpfs"
        chunk = b"\0" * 2**16
        written = 0
        with open(self.filler, "wb", buffering=0) as fh:
            try:
                while free_mb(self.data) > leave_free_mb:
                    written += fh.write(chunk) or 0
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
        return written // 2**20

    def free_filler(self) -> None:
        self.filler.unlink(missing_ok=True)


RABBITMQ = SmallDisk("rabbitmq", stack_config.state_dir / "rabbitmq" / "mnesia", headroom_mb=110)
"""Headroom above RabbitMQ's disk limit (50 MB): the alarm rises only when the round fills
the disk, and clears once the filler is gone."""
KAFKA = SmallDisk("kafka", stack_config.state_dir / "kafka" / "data", headroom_mb=64)
DISKS = (RABBITMQ, KAFKA)


def back_to_disk() -> list[str]:
    """Every server's data back on its own disk (what a killed run may have left)."""
    return [step for small in DISKS for step in small.back_to_disk()]


@contextlib.asynccontextmanager
async def _on_tmpfs(small: SmallDisk, ctx: Context) -> AsyncIterator[None]:
    """The round runs with ``small``'s data on its tmpfs; put back even on failure."""
    ctx.notes["leftover_restored"] = await asyncio.to_thread(small.back_to_disk)
    started = time.monotonic()
    try:
        await asyncio.to_thread(small.onto_tmpfs)
        ctx.notes["setup_s"] = round(time.monotonic() - started, 1)
        yield
    finally:
        ctx.notes["teardown"] = await asyncio.to_thread(small.back_to_disk)
        ctx.checks["mounts_removed"] = not (mounted(small.data) or mounted(small.stage))


@contextlib.asynccontextmanager
async def rabbitmq_small_disk(ctx: Context) -> AsyncIterator[None]:
    """RabbitMQ on its tmpfs, each restart waited for until its dead letters read back."""
    dead_letters = await rabbitmq_dead_letters()
    async with _on_tmpfs(RABBITMQ, ctx):
        if dead_letters is not None:
            ctx.notes["recovered_on_tmpfs_s"] = await rabbitmq_recovered(dead_letters)
        try:
            yield
        finally:
            dead_letters = await rabbitmq_dead_letters()
    if dead_letters is not None:  # the next round's snapshot must not see it recovering
        ctx.notes["recovered_on_disk_s"] = await rabbitmq_recovered(dead_letters)


@contextlib.asynccontextmanager
async def kafka_small_disk(ctx: Context) -> AsyncIterator[None]:
    async with _on_tmpfs(KAFKA, ctx):
        yield


def _alarms_now() -> str:
    done = stack.get("rabbitmq").ctl("eval", "rabbit_alarm:get_alarms().")  # type: ignore[attr-defined]
    return done.stdout.strip()


async def _alarms() -> str:
    """RabbitMQ's active alarms, as rabbitmqctl prints them."""
    return await asyncio.to_thread(_alarms_now)


async def rabbitmq_disk_full(ctx: Context) -> None:
    """Fill RabbitMQ's filesystem, hold the disk alarm past the publish deadline, free it."""
    held_s = settings.publish_timeout_s + 3
    try:
        ctx.notes["filler_mb"] = await asyncio.to_thread(RABBITMQ.fill, LEAVE_FREE_MB)
        alarm = await apoll(_alarms, lambda a: "disk" in a, timeout=20, every=0.5)
        ctx.checks["disk_alarm_raised"] = "disk" in alarm
        ctx.notes["free_mb_filled"] = round(free_mb(RABBITMQ.data), 1)
        await asyncio.sleep(held_s)
    finally:
        RABBITMQ.free_filler()
    cleared = await apoll(_alarms, lambda a: "disk" not in a, timeout=60, every=0.5)
    ctx.checks["disk_alarm_cleared"] = "disk" not in cleared
    ctx.notes["held_s"] = held_s


async def kafka_disk_full(ctx: Context) -> None:
    """Fill Kafka's filesystem to the last byte, hold it past the publish deadline, free it,
    and start Kafka again if the full disk stopped it."""
    pid = stack.get("kafka").pid()
    assert pid, "kafka is not running"
    held_s = settings.publish_timeout_s + 3

    async def halted() -> bool:
        return not procs.alive(pid)

    filled_at = time.monotonic()
    try:
        ctx.notes["filler_mb"] = await asyncio.to_thread(KAFKA.fill, 0)
        if await apoll(halted, timeout=held_s, every=0.2):
            ctx.notes["kafka_halted_after_s"] = round(time.monotonic() - filled_at, 1)
        await asyncio.sleep(max(0.0, held_s - (time.monotonic() - filled_at)))
    finally:
        KAFKA.free_filler()
    ctx.notes["held_s"] = round(time.monotonic() - filled_at, 1)
    ctx.checks["kafka_stopped_on_full_disk"] = not procs.alive(pid)
    started = time.monotonic()
    await asyncio.to_thread(stack.start, "kafka")
    ctx.notes["restart_s"] = round(time.monotonic() - started, 1)
