"""Smoke run of the benchmark machinery against the stack started by ``make up``.

REPEAT=1, a few seconds per scenario (no-op HTTP and gRPC ceilings, REST single, WebSocket
single tweets, REST at half rate and in arrays, gRPC Publish and PublishBatch, the Gateway
fixed at 1 replica, and the Benthos anchor when its binary is already built). It must
write bench.json and bench.md and lose nothing (accepted == Redis delta == Valkey delta in
every run, every Benthos run verified in both brokers), and report CPU per tweet; speed is
not asserted. The benchmark deploys config variants and always
deploys serve_config.yaml again at the end; this test checks that too.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from devstack import serve_ops
from devstack.config import REPO
from loadtest.bench.variants import NOOP_APP
from loadtest.benthos import build

pytestmark = pytest.mark.usefixtures("devstack_serve")


@pytest.mark.timeout(420)
def test_bench_smoke_writes_results_and_loses_nothing(tmp_path: Path) -> None:
    try:
        result = subprocess.run(
            [sys.executable, "-m", "loadtest.bench", "--smoke", "--out", str(tmp_path)],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=400,
        )
    finally:
        apps = serve_ops.applications()
        if NOOP_APP in apps or not serve_ops.matches(serve_ops.local_config(), apps):
            serve_ops.restore()  # the bench's own restore did not happen: do it here
    print(result.stdout[-5000:], result.stderr[-3000:])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    report = json.loads((tmp_path / "bench.json").read_text())
    assert (tmp_path / "bench.md").read_text().startswith("# Benchmark")
    assert report["error"] is None
    assert report["machine"]["cores"] >= 1
    scenarios = report["scenarios"]
    ceilings = {"noop", "noop_grpc"}
    pipeline = {"rest", "stream", "rest_half", "rest_batch", "grpc", "grpc_batch", "replicas_1",
                "drain"}  # fmt: skip
    anchors = {"benthos", "benthos_batch"} if build.binary().exists() else set()
    assert ceilings | pipeline | anchors <= set(scenarios)
    assert "overload" not in scenarios
    for name in ceilings:
        assert scenarios[name]["median"]["accepted"] > 0, name
    for name in anchors:
        assert scenarios[name]["median"]["verified_all"] is True, scenarios[name]["runs"]
        assert scenarios[name]["median"]["e2e_tweets_per_s"] > 0
    for name in ("rest", "rest_half"):
        assert scenarios[name]["median"]["stack_cpu_ms_per_tweet"] > 0
    for name, entry in scenarios.items():
        for run in entry["runs"]:
            if name in ceilings | anchors:
                continue
            assert run["accepted"] > 0, name
            assert run["accepted"] == run["redis_delta"] == run["valkey_delta"], (name, run)
            assert run["zero_loss"] is True
            if name == "drain":  # a backlog held by the paused stores, then drained
                assert run["drain_redis_tweets_per_s"] > 0 and run["drain_valkey_tweets_per_s"] > 0
                continue
            assert run["e2e_tweets_per_s"] is not None

    # Back on the one Serve config: pipeline apps only, the Gateway as configured.
    apps = serve_ops.applications()
    assert NOOP_APP not in apps
    assert serve_ops.matches(serve_ops.local_config(), apps)
