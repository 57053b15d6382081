"""Runs the scenarios: deploys what each needs, repeats its runs, and measures each run
against both stores and the stack's CPU (ceilings: the load generator's figures only;
the Benthos anchor: its own figures, verified in its brokers)."""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from devstack import serve_ops
from loadtest import counters
from loadtest.bench import measure, procs, report, variants
from loadtest.bench.drivers import WRK_GRACE_S, Figures, Load
from loadtest.bench.scenarios import SCENARIOS, Scenario
from loadtest.counters import Counters
from loadtest.probe import Probe


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.counters = Counters()
        self.results: dict[str, Any] = {}

    async def run(self) -> dict[str, Any]:
        """Every chosen scenario in registry order; returns the deploy times."""
        base = serve_ops.local_config()
        noop = variants.with_noop(base)
        deploys = {"pipeline+noop": await self.deploy(noop, "noop", "serve_config.yaml + noop app")}
        for scenario in SCENARIOS:
            if scenario.name not in self.args.scenarios:
                continue
            if scenario.variant is not None:
                config = scenario.variant(base, self.args)
                deploys[scenario.name] = await self.deploy(
                    config, scenario.name, scenario.name, allow_deleting=True
                )
            await self.scenario(scenario)
        return {"deploy_s": deploys}

    async def deploy(
        self, config: variants.Config, label: str, what: str, allow_deleting: bool = False
    ) -> float:
        """Deploy exactly ``config``. ``allow_deleting``: the replica variants drop the noop
        app, whose deletion takes Serve ~30 s and which no run needs to wait for."""
        seconds = await asyncio.to_thread(
            serve_ops.deploy_exactly, config, label, allow_deleting=allow_deleting
        )
        print(f"deployed {what} in {seconds:.0f}s", flush=True)
        return round(seconds, 1)

    async def scenario(self, scenario: Scenario) -> None:
        title, load = scenario.plan(self.args, self.results)
        if scenario.kind == "ceiling":
            await self.repeat(scenario.name, title, lambda: self.ceiling_run(scenario.name, load))
            return
        if scenario.kind == "drain":
            await self.repeat(
                scenario.name,
                title,
                lambda: self.drain_run(scenario.name, load, scenario.one_store_at_a_time),
            )
            return
        if scenario.kind == "anchor":
            await self.repeat(scenario.name, title, lambda: self.anchor_run(scenario.name, load))
            return
        timeline: list[dict[str, Any]] = []
        t0 = time.time()
        sampler = (
            asyncio.create_task(measure.sample_replicas(timeline, t0))
            if scenario.autoscaling
            else None
        )
        entry = await self.repeat(
            scenario.name, title, lambda: self.pipeline_run(scenario.name, load)
        )
        if sampler is not None:
            await measure.cooldown(self.args.autoscale_cooldown)
            sampler.cancel()
            entry["config"] = self.args.autoscale
            entry["timeline"] = timeline
            entry["load_windows_s"] = [
                [round(r["started_at"] - t0, 1), round(r["started_at"] + r["duration_s"] - t0, 1)]
                for r in entry["runs"]
            ]

    async def repeat(
        self, name: str, title: str, runner: Callable[[], Awaitable[Figures]]
    ) -> dict[str, Any]:
        runs = []
        for i in range(self.args.repeat):
            run = await runner()
            runs.append(run)
            print(f"  {name} #{i + 1}: {report.one_line(run)}", flush=True)
            await asyncio.sleep(self.args.pause)
        entry = {"title": title, "median": report.medians(runs), "runs": runs}
        entry["median"]["zero_loss_all"] = (
            all(r["zero_loss"] for r in runs) if runs[0]["zero_loss"] is not None else None
        )
        if "verified" in runs[0]:  # medians drop booleans: the anchor's check, all runs
            entry["median"]["verified_all"] = all(r["verified"] for r in runs)
        self.results[name] = entry
        return entry

    async def ceiling_run(self, name: str, load: Load) -> Figures:
        out = await asyncio.to_thread(load.run, f"{name}-{uuid.uuid4().hex[:8]}")
        out["accepted_per_s"] = round(out["accepted"] / out["duration_s"], 1)
        out["requests_per_s"] = round(out["requests"] / out["duration_s"], 1)
        out["e2e_tweets_per_s"] = None
        out["zero_loss"] = None
        return out

    async def anchor_run(self, name: str, load: Load) -> Figures:
        """Benthos: its figures as they are (e2e = accepted rate if verified in brokers),
        plus CPU per tweet of Benthos itself and of the two brokers it publishes to over
        wrk's sending window (not Benthos's startup nor the check that reads every tweet
        back from both brokers)."""
        out = await asyncio.to_thread(load.run, f"{name}-{uuid.uuid4().hex[:8]}")
        window = out.pop("window_usage")
        brokers = procs.cpu_between(window["start"], window["end"])
        cpu = out["benthos_cpu_s"] + brokers.get("kafka", 0.0) + brokers.get("rabbitmq", 0.0)
        out["stack_cpu_by_process_s"] = {**brokers, "benthos": out["benthos_cpu_s"]}
        out["stack_cpu_ms_per_tweet"] = measure.ms_per(cpu, out["accepted"])
        out["serve_cpu_ms_per_tweet"] = out["cpu_ms_per_tweet"]  # Benthos's own process
        return out

    async def drain_run(self, name: str, load: Load, one_store_at_a_time: bool = False) -> Figures:
        """The consumers' own rate: the load is accepted while both stores hold their
        writes, so the whole of it waits in the brokers; then the stores are released and
        each consumer drains its backlog with the machine to itself (``one_store_at_a_time``:
        Valkey is released only once Redis counted its backlog)."""
        a = self.args
        await measure.quiesce(self.counters, a.quiesce_timeout)
        before = await self.counters.totals()
        held_s = load.start_delay + load.duration + WRK_GRACE_S + 30
        await self.counters.pause_writes(held_s + (a.drain_timeout if one_store_at_a_time else 0))
        try:
            out = await asyncio.to_thread(load.run, f"{name}-{uuid.uuid4().hex[:8]}")
            out.update(await counters.lag())
            stack = await asyncio.to_thread(procs.stack_processes)
            at_release = await asyncio.to_thread(procs.sample, stack)
            released_at = time.time()
            recorder = measure.TotalsRecorder(self.counters)
            recorder.target = (before[0] + out["accepted"], before[1] + out["accepted"])
            if one_store_at_a_time:
                await self.counters.redis.client_unpause()
                first = measure.TotalsRecorder(self.counters)
                first.target = (recorder.target[0], 0)  # Valkey's is reached: held, not waited
                await first.run(a.drain_timeout)
                recorder.samples = first.samples
        finally:
            await self.counters.resume_writes()
        await recorder.run(a.drain_timeout)
        drained = await asyncio.to_thread(procs.sample, stack)
        # what each process (consumer actors, brokers, stores) spent draining: the capacity
        # model's per-core rates of the consumers' side
        out["drain_cpu_by_process_s"] = procs.cpu_between(at_release, drained)
        await asyncio.sleep(a.settle)
        after = await self.counters.totals()
        out.update(accepted_load=out["accepted"], backlog_before=None)
        out.update(measure.delivery(out, before, after, None))
        out.update(measure.drain_rates(recorder.samples, released_at, before, out["accepted"]))
        return out

    async def pipeline_run(self, name: str, load: Load) -> Figures:
        """One pipeline run: load + probe, lag at the end of the sending window, drain."""
        a = self.args
        backlog = await measure.quiesce(self.counters, a.quiesce_timeout)
        before = await self.counters.totals()
        probe = Probe(self.counters, rate=a.probe_rate)
        at_end: dict[str, Any] = {}

        stack = await asyncio.to_thread(procs.stack_processes)
        cpu_at: dict[str, tuple[procs.Usage, measure.CpuSample, float]] = {}

        async def take_cpu(which: str) -> None:
            usage = await asyncio.to_thread(procs.sample, stack)
            cpu_at[which] = (usage, measure.cpu_times(), time.time())

        async def start_probe() -> None:
            await asyncio.sleep(load.start_delay)
            await take_cpu("start")
            probe.start()

        async def end_of_window() -> None:  # consumer lag and replicas as the load stops
            await asyncio.sleep(load.start_delay + load.duration + 0.2)
            await take_cpu("end")  # CPU over the sending window (wrk's idle grace is not)
            await probe.stop_sending()  # the probe sends within the load's window only
            at_end.update(await counters.lag())
            at_end["replicas_end"] = await measure.replicas()

        recorder = measure.TotalsRecorder(self.counters)
        recording = asyncio.create_task(recorder.run(a.drain_timeout))
        side = [asyncio.create_task(start_probe()), asyncio.create_task(end_of_window())]
        try:
            out = await asyncio.to_thread(load.run, f"{name}-{uuid.uuid4().hex[:8]}")
            await asyncio.gather(*side)
            out.update(at_end)
            accepted = out["accepted"] + probe.result.accepted
            recorder.target = (before[0] + accepted, before[1] + accepted)
            done_r, done_v = await recording
        finally:
            recording.cancel()
        probe_result = await probe.finish(timeout=30)
        await asyncio.sleep(a.settle)  # anything beyond `accepted` would show up now
        after = await self.counters.totals()
        counted_at = max(done_r, done_v) if done_r and done_v else None
        out.update(
            backlog_before=backlog,
            accepted_load=out["accepted"],
            accepted_probe=probe_result.accepted,
            accepted=accepted,
        )
        out.update(measure.delivery(out, before, after, counted_at))
        ids = out.pop(measure.ACCEPTED_IDS, None)
        if ids is not None:
            out.update(measure.accepted_by_id(out, *await self.counters.counted(ids)))
        out.update(measure.freshness(probe_result))
        (u0, m0, t0), (u1, m1, t1) = cpu_at["start"], cpu_at["end"]
        by_process = procs.cpu_between(u0, u1)
        out["stack_cpu_by_process_s"] = by_process
        out.update(
            measure.cpu_per_tweet(by_process, m1[0] - m0[0], out.get("loadgen_cpu_s"), accepted)
        )
        out["cpu_span_s"] = round(t1 - t0, 2)
        return out
