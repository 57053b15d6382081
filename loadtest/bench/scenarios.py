"""Every scenario of the benchmark, in the order they run: one entry each. A scenario
names its driver and settings (``plan``), what stands behind it (``kind``: our pipeline,
counted in both stores; a ceiling, no counts; the Benthos anchor, verified in its
brokers; the consumers' drain rate) and the Serve config variant it needs, if any.
``make bench`` runs them all."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from loadtest.bench import drivers
from loadtest.bench.drivers import Load
from loadtest.bench.variants import (
    NOOP_APP,
    NOOP_ROUTE,
    Config,
    consumer_variant,
    replica_variant,
)

Results = dict[str, Any]
Plan = Callable[[argparse.Namespace, Results], tuple[str, Load]]
"""(args, results so far) -> (title, load)."""
Kind = Literal["pipeline", "ceiling", "anchor", "drain"]


@dataclass(frozen=True)
class Scenario:
    name: str
    plan: Plan
    kind: Kind = "pipeline"
    variant: Callable[[Config, argparse.Namespace], Config] | None = None
    autoscaling: bool = False  # sample replicas during the runs, then cool down
    one_store_at_a_time: bool = False  # drain: release Redis, then Valkey once it is done


def median_of(results: Results, name: str, key: str) -> Any:
    return (results.get(name) or {}).get("median", {}).get(key)


def max_rate(a: argparse.Namespace, results: Results) -> tuple[float, str]:
    """The measured max single-tweet rate (accepted/s of ``rest``) or ``--max-rate``."""
    if a.max_rate:
        return a.max_rate, "--max-rate"
    measured = median_of(results, "rest", "accepted_per_s")
    if not measured:
        raise RuntimeError("overload needs the rest scenario first or --max-rate")
    return measured, "the rest median"


def _overload(a: argparse.Namespace, results: Results) -> tuple[str, Load]:
    """2 x the max single-tweet rate, open loop, then half the max (recovery)."""
    top, how = max_rate(a, results)
    rate = a.overload_factor * top
    title = (
        f"Overload: open loop at {rate:.0f} req/s ({a.overload_factor:g} x {top:.0f}, {how})"
        f" for {a.overload_duration:g} s, then {top / 2:.0f} req/s for {a.overload_tail:g} s"
    )
    normal = median_of(results, "rest_half", "p99_ms")
    return title, drivers.overload(a, rate, top / 2, normal)


def _benthos_overload(a: argparse.Namespace, results: Results) -> tuple[str, Load]:
    """The overload run, same generator and phases, against Benthos at 2 x its own max."""
    if a.benthos_max_rate:
        top, how = a.benthos_max_rate, "--benthos-max-rate"
    else:
        top, how = median_of(results, "benthos", "accepted_per_s"), "the benthos median"
        if not top:
            raise RuntimeError("benthos_overload needs the benthos scenario first or "
                               "--benthos-max-rate")  # fmt: skip
    rate = a.overload_factor * top
    title = (
        f"Anchor: Benthos v4.27 overload, open loop at {rate:.0f} req/s "
        f"({a.overload_factor:g} x {top:.0f}, {how}) for {a.overload_duration:g} s, then "
        f"{top / 2:.0f} req/s for {a.overload_tail:g} s"
    )
    return title, drivers.benthos_overload(a, top, rate, top / 2)


def _half_rate(a: argparse.Namespace, results: Results) -> tuple[str, Load]:
    """Paced at half the measured ``rest`` rate (or ``--half-rate``)."""
    measured = median_of(results, "rest", "e2e_tweets_per_s") or median_of(
        results, "rest", "accepted_per_s"
    )
    if a.half_rate:
        half, how = a.half_rate, "--half-rate"
    elif measured:
        half, how = measured / 2, "half the rest median"
    else:  # nothing measured (e.g. `rest` not run or it failed): a token rate
        half, how = 10.0, "fallback, no rest figure"
    title = f"Pipeline, REST paced at {half:.0f} tweets/s ({how}; wrk delay())"
    return title, drivers.wrk(a, "/input", rate=half / a.batch)


def _fixed(n: int) -> Scenario:
    return Scenario(
        f"replicas_{n}",
        lambda a, _: (
            f"Gateway fixed at {n} replica(s) (REST, wrk)",
            drivers.wrk(a, "/input", duration=a.replica_duration),
        ),
        variant=lambda base, _: replica_variant(base, n),
    )


def _consumers(n: int) -> Scenario:
    """The drain with ``n`` consumer actors per broker (the scaling run of the consumers):
    one broker's actors at a time, so that on a small machine the other broker's actors and
    store do not take the cores a second actor would use."""
    return Scenario(
        f"drain_{n}",
        lambda a, _: (
            f"Consumers, {n} actor(s) per broker: a backlog of REST arrays of {a.big_batch} "
            "built with the stores' writes paused, then drained one broker at a time",
            drivers.wrk(a, "/input", batch=a.big_batch),
        ),
        kind="drain",
        variant=lambda base, _: consumer_variant(base, n),
        one_store_at_a_time=True,
    )


def _anchor(name: str, scenario: Literal["single", "array100"], what: str) -> Scenario:
    return Scenario(
        name,
        lambda a, _: (f"Anchor: Benthos v4.27, {what} (wrk)", drivers.benthos(a, scenario)),
        kind="anchor",
    )


SCENARIOS: tuple[Scenario, ...] = (
    Scenario(
        "noop",
        lambda a, _: ("Ceiling: no-op Serve app, POST /noop (wrk)", drivers.wrk(a, NOOP_ROUTE)),
        kind="ceiling",
    ),
    Scenario(
        "noop_grpc",
        lambda a, _: (
            "Ceiling: no-op Serve gRPC method, Publish on app noop (grpc.aio)",
            drivers.grpc(a, batch=1, application=NOOP_APP),
        ),
        kind="ceiling",
    ),
    Scenario(
        "rest",
        lambda a, _: ("Pipeline, REST POST /input (wrk, closed loop)", drivers.wrk(a, "/input")),
    ),
    _anchor("benthos", "single", "single-tweet POSTs, same brokers and contract"),
    Scenario(
        "stream",
        lambda a, _: (
            "Pipeline, WebSocket /input/stream, one tweet per frame (websockets)",
            drivers.stream(a),
        ),
    ),
    Scenario("rest_half", _half_rate),
    Scenario(
        "rest_batch",
        lambda a, _: (
            f"Pipeline, REST arrays of {a.big_batch} tweets (wrk, closed loop)",
            drivers.wrk(a, "/input", batch=a.big_batch),
        ),
    ),
    _anchor("benthos_batch", "array100", "arrays of 100 split per tweet"),
    Scenario(
        "drain",
        lambda a, _: (
            f"Consumers: a backlog of REST arrays of {a.big_batch} built with the stores' "
            "writes paused, then drained (each consumer's rate)",
            drivers.wrk(a, "/input", batch=a.big_batch),
        ),
        kind="drain",
    ),
    Scenario(
        "grpc",
        lambda a, _: (
            "Pipeline, gRPC Publisher.Publish via :9000 (grpc.aio client)",
            drivers.grpc(a, batch=1),
        ),
    ),
    Scenario(
        "grpc_batch",
        lambda a, _: (
            f"Pipeline, gRPC PublishBatch of {a.big_batch} via :9000 (grpc.aio client)",
            drivers.grpc(a, batch=a.big_batch),
        ),
    ),
    _fixed(1),
    _fixed(2),
    _consumers(1),
    _consumers(2),
    Scenario(
        "replicas_auto",
        lambda a, _: (
            "Gateway autoscaling (REST, wrk)",
            drivers.wrk(a, "/input", duration=a.replica_duration),
        ),
        variant=lambda base, a: replica_variant(base, None, a.autoscale),
        autoscaling=True,
    ),
    Scenario("benthos_overload", _benthos_overload, kind="anchor"),
    Scenario("overload", _overload),
)

ALL_SCENARIOS = tuple(s.name for s in SCENARIOS)
