"""RabbitMQ on a small filesystem that fills up: its disk alarm must turn into 503s, never
a lost 202, and clear once space is back.

For the round, RabbitMQ's data directory (``<state>/rabbitmq/mnesia``) lives on a tmpfs at
``STAGE`` sized to its data plus ``HEADROOM_MB``: RabbitMQ is stopped (devstack's own stop),
its data copied onto the tmpfs, which is bind-mounted over the data directory, and RabbitMQ
started again. The
fault writes ``FILLER`` until less than its disk limit (50 MB, RabbitMQ's default) is free,
holds the alarm past the publish deadline and deletes the filler. Afterwards RabbitMQ is
stopped, the tmpfs content (the queues as they are now, dead letters included) replaces the
data directory (copy beside it, then two renames), both mounts are removed by exact path and
RabbitMQ started again. After each restart the round waits until the dead-letter queue
reads the depth it had before (a quorum queue reads empty while it replays its log), so the
dead-letter counts before and after the round compare like with like. A killed run leaves
the mounts behind: the next run finds them by path and restores the same way.

Kafka is not put on a full disk here: with its one log directory full, the single broker
takes itself offline, which is `kafka_kill` again after a log recovery, and its ~300 MB of
data would have to be copied twice per round.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path

from devstack import stack
from devstack.config import stack_config
from devstack.waits import apoll
from loadtest.chaos.core import Context, rabbitmq_dead_letters, rabbitmq_recovered, settings

DATA = stack_config.state_dir / "rabbitmq" / "mnesia"
STAGE = Path("/tmp/weather-chaos-rabbitmq-disk")
FILLER = DATA / "chaos-filler"
NEW = DATA.with_name("mnesia.chaos-new")
OLD = DATA.with_name("mnesia.chaos-old")
HEADROOM_MB = 110
"""Free space on the tmpfs once the data is on it: above RabbitMQ's disk limit (50 MB), so
the alarm rises only when the round fills the disk, and clears once the filler is gone."""
LEAVE_FREE_MB = 20
"""Free space left by the filler: below RabbitMQ's default disk_free_limit (50 MB)."""


def _mount(*args: str) -> None:
    done = subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: {done.stderr.strip()}")


def mounted(path: Path) -> bool:
    return os.path.ismount(path)


def _free_mb(path: Path) -> float:
    return shutil.disk_usage(path).free / 2**20


def tmpfs_mb(data: Path) -> int:
    """The tmpfs for ``data``: its current size plus :data:`HEADROOM_MB`. A fixed size fails
    once the queues grow (161,000 dead letters of earlier runs took 122 MB of a 160 MB
    tmpfs, under the limit before the round began, and the alarm could never clear)."""
    used = sum(f.stat().st_size for f in data.rglob("*") if f.is_file() and not f.is_symlink())
    return int(used / 2**20) + HEADROOM_MB


def onto_tmpfs() -> None:
    """RabbitMQ stopped, its data on a fresh tmpfs bind-mounted over the data directory."""
    stack.stop("rabbitmq")
    STAGE.mkdir(exist_ok=True)
    _mount("mount", "-t", "tmpfs", "-o", f"size={tmpfs_mb(DATA)}m,mode=0755", "tmpfs", str(STAGE))
    shutil.copytree(DATA, STAGE, dirs_exist_ok=True, symlinks=True)
    _mount("mount", "--bind", str(STAGE), str(DATA))
    stack.start("rabbitmq")


def back_to_disk() -> list[str]:
    """Undo :func:`onto_tmpfs` from whatever state it (or a killed run) left; returns the
    steps taken (nothing when nothing of ours is there)."""
    steps: list[str] = []
    if mounted(DATA) or mounted(STAGE) or NEW.exists() or OLD.exists():
        stack.stop("rabbitmq")
        steps.append("stopped rabbitmq")
    if mounted(DATA):
        FILLER.unlink(missing_ok=True)
        if NEW.exists():
            shutil.rmtree(NEW)
        shutil.copytree(DATA, NEW, symlinks=True)  # the data as RabbitMQ left it
        _mount("umount", str(DATA))
        steps.append("copied the tmpfs data beside the data directory; unmounted the bind")
    if mounted(STAGE):
        _mount("umount", str(STAGE))
        steps.append(f"unmounted {STAGE}")
    if NEW.exists():
        if OLD.exists():
            shutil.rmtree(OLD)
        DATA.rename(OLD)
        NEW.rename(DATA)
        steps.append("data directory replaced by the round's data")
    if OLD.exists() and DATA.exists():
        shutil.rmtree(OLD)
    elif OLD.exists():
        OLD.rename(DATA)
    with contextlib.suppress(OSError):
        STAGE.rmdir()
    if steps:
        stack.start("rabbitmq")
        steps.append("started rabbitmq")
    return steps


@contextlib.asynccontextmanager
async def small_disk(ctx: Context) -> AsyncIterator[None]:
    """The round runs with RabbitMQ's data on a small tmpfs; put back even on failure."""
    ctx.notes["leftover_restored"] = await asyncio.to_thread(back_to_disk)
    started = time.monotonic()
    try:
        dead_letters = await rabbitmq_dead_letters()
        await asyncio.to_thread(onto_tmpfs)
        if dead_letters is not None:
            ctx.notes["recovered_on_tmpfs_s"] = await rabbitmq_recovered(dead_letters)
        ctx.notes["setup_s"] = round(time.monotonic() - started, 1)
        yield
    finally:
        dead_letters = await rabbitmq_dead_letters()
        ctx.notes["teardown"] = await asyncio.to_thread(back_to_disk)
        ctx.checks["mounts_removed"] = not (mounted(DATA) or mounted(STAGE))
        if dead_letters is not None:  # the next round's snapshot must not see it recovering
            ctx.notes["recovered_on_disk_s"] = await rabbitmq_recovered(dead_letters)


def _fill() -> int:
    """Write the filler until ``LEAVE_FREE_MB`` is left; returns its MB."""
    size_mb = max(0, int(_free_mb(DATA) - LEAVE_FREE_MB))
    chunk = b"\0" * 2**20
    with open(FILLER, "wb") as fh:
        for _ in range(size_mb):
            fh.write(chunk)
    return size_mb


def _alarms_now() -> str:
    done = stack.get("rabbitmq").ctl("eval", "rabbit_alarm:get_alarms().")  # type: ignore[attr-defined]
    return done.stdout.strip()


async def _alarms() -> str:
    """RabbitMQ's active alarms, as rabbitmqctl prints them."""
    return await asyncio.to_thread(_alarms_now)


async def rabbitmq_disk_full(ctx: Context) -> None:
    """Fill RabbitMQ's filesystem, hold the disk alarm past the publish deadline, free it."""
    assert mounted(DATA), "the data directory is not on the round's tmpfs"
    held_s = settings.publish_timeout_s + 3
    try:
        ctx.notes["filler_mb"] = await asyncio.to_thread(_fill)
        alarm = await apoll(_alarms, lambda a: "disk" in a, timeout=20, every=0.5)
        ctx.checks["disk_alarm_raised"] = "disk" in alarm
        ctx.notes["free_mb_filled"] = round(_free_mb(DATA), 1)
        await asyncio.sleep(held_s)
    finally:
        FILLER.unlink(missing_ok=True)
    cleared = await apoll(_alarms, lambda a: "disk" not in a, timeout=60, every=0.5)
    ctx.checks["disk_alarm_cleared"] = "disk" not in cleared
    ctx.notes["held_s"] = held_s
