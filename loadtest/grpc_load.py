"""A bounded, multi-process gRPC load client for ``weather.v1.Publisher`` (Serve port 9000).

Each process runs ``concurrency`` grpc.aio workers calling ``Publish`` (batch 1) or
``PublishBatch`` until the shared start time + ``duration_s`` (or ``max_requests``), and
reports its latencies, accepted tweets and its own CPU time, so the reader can judge
whether the client was the bottleneck.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import resource
import time
from dataclasses import dataclass, field
from typing import Any

from devstack.config import stack_config
from loadtest.tweets import TweetFactory

PIPELINE_APP = "ingest"
GRPC_TARGET = stack_config.serve_grpc_target


@dataclass
class GrpcResult:
    requests: int = 0
    ok: int = 0
    accepted: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    latencies_ms: list[float] = field(default_factory=list)
    cpu_s: float = 0.0
    wall_s: float = 0.0
    processes: int = 0


async def _worker(stub: Any, pb: Any, factory: TweetFactory, batch: int, stop_at: float,
                  budget: list[int], out: dict[str, Any], app: str) -> None:  # fmt: skip
    metadata = (("application", app),)
    while time.time() < stop_at and budget[0] > 0:
        budget[0] -= 1
        tweets = factory.many(batch)
        started = time.perf_counter()
        try:
            if batch == 1:
                reply = await stub.Publish(pb.Tweet(**tweets[0]), metadata=metadata, timeout=10)
                n = 1 if reply.id else 0
            else:
                message = pb.TweetBatch(tweets=[pb.Tweet(**t) for t in tweets])
                reply = await stub.PublishBatch(message, metadata=metadata, timeout=10)
                n = len(reply.ids)
        except Exception as exc:  # noqa: BLE001 - counted by kind
            code = getattr(exc, "code", lambda: None)()
            key = code.name if code is not None else type(exc).__name__
            out["errors"][key] = out["errors"].get(key, 0) + 1
            out["requests"] += 1
            continue
        out["latencies_ms"].append((time.perf_counter() - started) * 1000)
        out["requests"] += 1
        out["ok"] += 1
        out["accepted"] += n


async def _process_main(args: dict[str, Any], start_at: float) -> dict[str, Any]:
    import grpc

    from serve_app.pb.weather.v1 import weather_pb2, weather_pb2_grpc

    out: dict[str, Any] = {"requests": 0, "ok": 0, "accepted": 0, "errors": {}, "latencies_ms": []}
    factory = TweetFactory(args["tag"])
    budget = [args["max_requests"]]
    async with grpc.aio.insecure_channel(GRPC_TARGET) as channel:
        await asyncio.wait_for(channel.channel_ready(), timeout=10)
        stub = weather_pb2_grpc.PublisherStub(channel)
        await asyncio.sleep(max(0.0, start_at - time.time()))
        stop_at = start_at + args["duration_s"]
        await asyncio.gather(
            *(
                _worker(
                    stub, weather_pb2, factory, args["batch"], stop_at, budget, out, args["app"]
                )
                for _ in range(args["concurrency"])
            )
        )
    return out


def _child(args: dict[str, Any], start_at: float, queue: Any) -> None:
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    try:
        out = asyncio.run(_process_main(args, start_at))
    except Exception as exc:  # noqa: BLE001 - reported to the parent
        out = {"requests": 0, "ok": 0, "accepted": 0, "latencies_ms": [],
               "errors": {f"client: {type(exc).__name__}: {exc}"[:200]: 1}}  # fmt: skip
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    out["cpu_s"] = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    queue.put(out)


def run(
    *,
    duration_s: float,
    processes: int = 1,
    concurrency: int = 64,
    batch: int = 1,
    tag: str = "grpc",
    max_requests: int = 5_000_000,
    start_delay_s: float = 3.0,
    application: str = PIPELINE_APP,
) -> GrpcResult:
    """Run the load (blocking); ``start_delay_s`` lets every process import and connect."""
    ctx = mp.get_context("spawn")  # never fork a process that may hold gRPC state
    queue = ctx.Queue()
    start_at = time.time() + start_delay_s
    per_process = max(1, max_requests // processes)
    children = []
    for i in range(processes):
        args = {
            "tag": f"{tag}-p{i}",
            "batch": batch,
            "concurrency": concurrency,
            "duration_s": duration_s,
            "max_requests": per_process,
            "app": application,
        }
        child = ctx.Process(target=_child, args=(args, start_at, queue), daemon=True)
        child.start()
        children.append(child)
    result = GrpcResult(processes=processes)
    deadline = start_at + duration_s + 60
    for _ in children:
        out = queue.get(timeout=max(1.0, deadline - time.time()))
        result.requests += out["requests"]
        result.ok += out["ok"]
        result.accepted += out["accepted"]
        result.cpu_s += out["cpu_s"]
        result.latencies_ms.extend(out["latencies_ms"])
        for key, value in out["errors"].items():
            result.errors[key] = result.errors.get(key, 0) + value
    result.wall_s = max(0.0, time.time() - start_at)
    for child in children:
        child.join(timeout=10)
        if child.is_alive():
            child.terminate()
    return result
