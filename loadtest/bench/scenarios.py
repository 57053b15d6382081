"""Every scenario of the benchmark, in the order they run: one entry each. A scenario
names its driver and settings (``plan``), whether a pipeline stands behind it (ceilings
have none: no counts, no freshness), and the Serve config variant it needs, if any."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from loadtest.bench import drivers
from loadtest.bench.drivers import Load
from loadtest.bench.variants import NOOP_APP, NOOP_ROUTE, Config, replica_variant

Results = dict[str, Any]
Plan = Callable[[argparse.Namespace, Results], tuple[str, Load]]
"""(args, results so far) -> (title, load)."""


@dataclass(frozen=True)
class Scenario:
    name: str
    plan: Plan
    ceiling: bool = False
    variant: Callable[[Config, argparse.Namespace], Config] | None = None
    autoscaling: bool = False  # sample replicas during the runs, then cool down


def _half_rate(a: argparse.Namespace, results: Results) -> tuple[str, Load]:
    """Paced at half the measured ``rest`` rate (or ``--half-rate``)."""
    rest = (results.get("rest") or {}).get("median", {})
    measured = rest.get("e2e_tweets_per_s") or rest.get("accepted_per_s")
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


SCENARIOS: tuple[Scenario, ...] = (
    Scenario(
        "noop",
        lambda a, _: ("Ceiling: no-op Serve app, POST /noop (wrk)", drivers.wrk(a, NOOP_ROUTE)),
        ceiling=True,
    ),
    Scenario(
        "noop_grpc",
        lambda a, _: (
            "Ceiling: no-op Serve gRPC method, Publish on app noop (grpc.aio)",
            drivers.grpc(a, batch=1, application=NOOP_APP),
        ),
        ceiling=True,
    ),
    Scenario(
        "rest",
        lambda a, _: ("Pipeline, REST POST /input (wrk, closed loop)", drivers.wrk(a, "/input")),
    ),
    Scenario("rest_half", _half_rate),
    Scenario(
        "rest_batch",
        lambda a, _: (
            f"Pipeline, REST arrays of {a.big_batch} tweets (wrk, closed loop)",
            drivers.wrk(a, "/input", batch=a.big_batch),
        ),
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
    Scenario(
        "replicas_auto",
        lambda a, _: (
            "Gateway autoscaling (REST, wrk)",
            drivers.wrk(a, "/input", duration=a.replica_duration),
        ),
        variant=lambda base, a: replica_variant(base, None, a.autoscale),
        autoscaling=True,
    ),
)

ALL_SCENARIOS = tuple(s.name for s in SCENARIOS)
