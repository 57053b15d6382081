"""One anchor run: Benthos on loopback, wrk + tweets.lua against it, both brokers verified.

Measured exactly as the benchmark measures our pipeline: the same wrk invocation and Lua
script (unique seed-shaped tweets, 202 x batch counted as accepted, a sending window of
``duration_s`` then a grace period so in-flight requests are answered and counted).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import math
import os
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from loadtest.benthos import brokers, build, process
from loadtest.benthos.config import INPUT_PATH, LOOPBACK, AnchorNames, Ports, anchor_config, render

if TYPE_CHECKING:
    from serve_app.settings import Settings

Scenario = Literal["single", "array100"]
BATCH: dict[Scenario, int] = {"single": 1, "array100": 100}
LUA = Path(__file__).resolve().parents[1] / "tweets.lua"
RUN_DIR = build.HOME / "run"
WRK_GRACE_S = 4.0  # as loadtest/bench.py: in-flight requests are answered and counted
WRK_TIMEOUT_S = 10


@dataclass(frozen=True)
class AnchorResult:
    """Figures of one anchor run; ``verified`` = every accepted tweet in both brokers."""

    scenario: str
    batch: int
    duration_s: float
    connections: int
    requests: int
    accepted: int  # tweets answered 202 (responses x batch)
    non_202: int
    socket_errors: int
    requests_per_s: float
    tweets_per_s: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    benthos_cpu_s: float
    cpu_ms_per_request: float | None
    cpu_ms_per_tweet: float | None
    machine_cpu_pct: float | None
    loadgen_cpu_pct: float
    kafka_records: int
    rabbitmq_messages: int
    verified: bool
    ready_s: float
    max_in_flight: int

    def as_bench_run(self) -> dict[str, Any]:
        """The keys the benchmark's tables read, so the anchor sits in the same rows:
        ``e2e_tweets_per_s`` is the accepted rate when every accepted tweet was found in
        both brokers (there are no stores to count in), else None; ``zero_loss`` stays
        None (it means "counted in Redis and Valkey"), ``verified`` says the rest."""
        row = dataclasses.asdict(self)
        row.update(
            accepted_per_s=self.tweets_per_s,
            e2e_tweets_per_s=self.tweets_per_s if self.verified else None,
            zero_loss=None,
            loadgen=f"wrk -t1 -c{self.connections}",
        )
        return row


def load_settings() -> Settings:
    """Built here, lazily: addresses and credentials come from the project's Settings."""
    from serve_app.settings import Settings

    return Settings()


def _wrk() -> str:
    return os.environ.get("WRK") or shutil.which("wrk") or "/usr/bin/wrk"


def _machine_cpu() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine, from the first line of /proc/stat."""
    fields = [float(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)
    return sum(fields) - idle, sum(fields)


def wrk_command(url: str, duration_s: float, connections: int, batch: int, tag: str) -> list[str]:
    """The benchmark's wrk call: -t1, tweets.lua, closed loop, stop sending at the window's
    end (CLOCK_MONOTONIC ms, as the Lua script reads it) and run WRK_GRACE_S longer."""
    stop_ms = (time.monotonic() + 0.2 + duration_s) * 1000
    return [
        _wrk(),
        "-t1",
        f"-c{connections}",
        f"-d{math.ceil(duration_s + 0.2 + WRK_GRACE_S)}s",
        f"--timeout={WRK_TIMEOUT_S}s",
        "-s",
        str(LUA),
        url,
        "--",
        str(batch),
        "0",
        tag,
        f"{stop_ms:.0f}",
    ]


def run_wrk(
    url: str,
    duration_s: float,
    connections: int,
    batch: int,
    tag: str,
    pid: int,
    on_window: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run wrk (bounded by -d and a hard kill timer) and return its WRK_JSON plus the CPU
    seconds of wrk itself (its rusage) and of process ``pid`` (Benthos) over the whole
    run, and the machine's busy % over the sending window (as the benchmark does).
    ``on_window("start")`` and ``on_window("end")`` are called as that window opens and
    closes (the benchmark samples the brokers' CPU there, not over startup and checks)."""
    cmd = wrk_command(url, duration_s, connections, batch, tag)

    def window_ends() -> None:
        window.setdefault("end", _machine_cpu())
        if on_window is not None:
            on_window("end")

    if on_window is not None:
        on_window("start")
    window = {"start": _machine_cpu()}
    benthos0 = process.cpu_seconds(pid)
    sampler = threading.Timer(duration_s + 0.2, window_ends)
    sampler.start()
    proc = subprocess.Popen(
        cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    killer = threading.Timer(duration_s + WRK_GRACE_S + 30, proc.kill)
    killer.start()
    assert proc.stdout is not None
    try:
        text = proc.stdout.read().decode(errors="replace")
    finally:
        _, status, usage = os.wait4(proc.pid, 0)  # wrk's own rusage
        proc.returncode = os.waitstatus_to_exitcode(status)
        killer.cancel()
        sampler.cancel()
        if "end" not in window:  # wrk ended before its window did (an error)
            window_ends()
    benthos_cpu = process.cpu_seconds(pid) - benthos0
    line = next((x for x in text.splitlines() if x.startswith("WRK_JSON ")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed (exit {proc.returncode}): {' '.join(cmd)}\n{text}")
    data = json.loads(line.removeprefix("WRK_JSON "))
    start, end = window["start"], window["end"]
    total = end[1] - start[1]
    data.update(
        benthos_cpu_s=benthos_cpu,
        machine_cpu_pct=round(100 * (end[0] - start[0]) / total, 1) if total else None,
        loadgen_cpu_s=usage.ru_utime + usage.ru_stime,
    )
    return data


def _result(
    scenario: Scenario,
    duration_s: float,
    connections: int,
    wrk: dict[str, Any],
    counts: brokers.BrokerCounts,
    ready_s: float,
    max_in_flight: int,
) -> AnchorResult:
    """Turn wrk's JSON and the broker counts into the run's figures."""
    batch = BATCH[scenario]
    lat = wrk["latency_us"]
    requests, accepted = int(wrk["requests"]), int(wrk["accepted"])
    cpu = float(wrk["benthos_cpu_s"])
    errors = sum(wrk["errors"].values()) - wrk["errors"]["status"]
    return AnchorResult(
        scenario=scenario,
        batch=batch,
        duration_s=duration_s,
        connections=connections,
        requests=requests,
        accepted=accepted,
        non_202=int(wrk["other_status"]),
        socket_errors=int(errors),
        requests_per_s=round(requests / duration_s, 1),
        tweets_per_s=round(accepted / duration_s, 1),
        p50_ms=lat["p50"] / 1000,
        p99_ms=lat["p99"] / 1000,
        max_ms=lat["max"] / 1000,
        benthos_cpu_s=round(cpu, 2),
        cpu_ms_per_request=round(1000 * cpu / requests, 3) if requests else None,
        cpu_ms_per_tweet=round(1000 * cpu / accepted, 4) if accepted else None,
        machine_cpu_pct=wrk["machine_cpu_pct"],
        loadgen_cpu_pct=round(100 * wrk["loadgen_cpu_s"] / (duration_s + 0.2), 1),
        kafka_records=counts.kafka,
        rabbitmq_messages=counts.rabbitmq,
        verified=counts.kafka == accepted and counts.rabbitmq == accepted,
        ready_s=round(ready_s, 2),
        max_in_flight=max_in_flight,
    )


def default_max_in_flight(connections: int, batch: int) -> int:
    """Per output, as a user would tune it: one publish per connection for single tweets,
    a whole array in one wave (Benthos's amqp_0_9 output takes one batch at a time and
    publishes its messages in parallel up to max_in_flight, so 64 would need two waves)."""
    return max(connections, batch)


def write_config(
    settings: Settings, ports: Ports, names: AnchorNames, max_in_flight: int, label: str
) -> Path:
    """The run's YAML under .devstack/benthos/run (kept, with its log, until the next run)."""
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    path = RUN_DIR / f"{names.topic}-{label}.yaml"  # own file per concurrent user
    config = anchor_config(settings, ports, names=names, max_in_flight=max_in_flight)
    path.write_text(render(config))
    return path


@dataclass(frozen=True)
class RunningAnchor:
    """A started, ready Benthos and what is needed to verify what it published."""

    url: str
    pid: int
    ready_s: float
    settings: Settings
    names: AnchorNames
    baseline: brokers.Offsets

    async def counts(self, expected: int) -> brokers.BrokerCounts:
        """What reached both brokers since the start (polled until ``expected``, bounded)."""
        return await brokers.count_settled(self.settings, self.names, self.baseline, expected)


@contextlib.asynccontextmanager
async def running_anchor(
    label: str = "anchor", *, max_in_flight: int = 64, names: AnchorNames | None = None
) -> AsyncIterator[RunningAnchor]:
    """Build (cached), prepare topic and queue, start Benthos and wait until it is ready;
    afterwards stop it (by pid) and purge the anchor's topic and queue."""
    settings, names = load_settings(), names or AnchorNames()
    binary = await asyncio.to_thread(build.build)
    ports = Ports(input=process.free_port(), service=process.free_port())
    config = write_config(settings, ports, names, max_in_flight, label)
    baseline = await brokers.prepare(settings, names)
    log = config.with_suffix(".log")
    proc = process.start(binary, config, log)
    try:
        ready_s = await asyncio.to_thread(process.wait_ready, proc, ports.service, log)
        url = f"http://{LOOPBACK}:{ports.input}{INPUT_PATH}"
        yield RunningAnchor(url, proc.pid, ready_s, settings, names, baseline)
    finally:
        await asyncio.to_thread(process.stop, proc)
        await _purge_quietly(settings, names)


async def _purge_quietly(settings: Settings, names: AnchorNames) -> None:
    """Purge after a run, also a failed one; a failure to purge must not hide the run's
    own result or error (the next run's ``prepare`` purges the queue and takes a new
    Kafka baseline anyway)."""
    try:
        await brokers.purge(settings, names)
    except Exception as exc:  # reported, not fatal
        print(f"warning: could not purge the anchor's topic/queue: {exc!r}", file=sys.stderr)


async def arun_anchor(
    scenario: Scenario = "single",
    duration_s: float = 10.0,
    connections: int = 64,
    *,
    max_in_flight: int | None = None,
    names: AnchorNames | None = None,
    tag: str | None = None,
    on_window: Callable[[str], None] | None = None,
) -> AnchorResult:
    """One run: Benthos started for it, wrk + tweets.lua for ``duration_s`` (plus the
    grace period), the accepted tweets counted in both brokers, Benthos stopped, the
    anchor's topic and queue purged. ``on_window``: see :func:`run_wrk`."""
    if scenario not in BATCH or duration_s <= 0 or connections < 1:
        raise ValueError(f"bad anchor run: {scenario=} {duration_s=} {connections=}")
    tag = tag or f"anchor-{scenario}-{uuid.uuid4().hex[:8]}"
    in_flight = max_in_flight or default_max_in_flight(connections, BATCH[scenario])
    async with running_anchor(scenario, max_in_flight=in_flight, names=names) as anchor:
        wrk = await asyncio.to_thread(
            run_wrk,
            anchor.url,
            duration_s,
            connections,
            BATCH[scenario],
            tag,
            anchor.pid,
            on_window,
        )
        counts = await anchor.counts(int(wrk["accepted"]))
    return _result(scenario, duration_s, connections, wrk, counts, anchor.ready_s, in_flight)


def run_anchor(
    scenario: Scenario = "single",
    duration_s: float = 10.0,
    connections: int = 64,
    *,
    max_in_flight: int | None = None,
    names: AnchorNames | None = None,
    tag: str | None = None,
    on_window: Callable[[str], None] | None = None,
) -> AnchorResult:
    """Blocking :func:`arun_anchor` (from a thread or a script, not inside an event loop)."""
    return asyncio.run(
        arun_anchor(
            scenario,
            duration_s,
            connections,
            max_in_flight=max_in_flight,
            names=names,
            tag=tag,
            on_window=on_window,
        )
    )


async def cleanup(names: AnchorNames | None = None) -> None:
    """Delete the anchor's topic, queue and exchange (nothing of ours is touched)."""
    await brokers.delete(load_settings(), names or AnchorNames())
