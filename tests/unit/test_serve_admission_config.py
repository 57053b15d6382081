"""Serve's own admission limits in serve_config.yaml (and so in the RayService): excess load
gets a fast 503 + Retry-After instead of a growing queue (no servers, no Ray)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from serve_app.ingest.core import BatchConfig
from serve_app.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def gateway() -> dict:
    config = yaml.safe_load((ROOT / "serve_config.yaml").read_text(encoding="utf-8"))
    [ingest] = [a for a in config["applications"] if a["name"] == "ingest"]
    [deployment] = [d for d in ingest["deployments"] if d["name"] == "Gateway"]
    return deployment


def test_the_gateway_bounds_its_queue_and_answers_503_with_retry_after() -> None:
    deployment = gateway()
    assert 0 < deployment["max_queued_requests"] <= deployment["max_ongoing_requests"]
    assert deployment["max_ongoing_requests"] <= 512  # ~0.35 s of work at 1,400 requests/s
    assert deployment["backpressure_config"] == {"status_code": 503, "retry_after_s": 2}
    target = deployment["autoscaling_config"]["target_ongoing_requests"]
    assert target < deployment["max_ongoing_requests"]  # autoscaling reacts before refusing


def test_the_gateway_user_config_is_what_its_reconfigure_accepts() -> None:
    """A stale or misspelt key would fail the deploy (BatchConfig forbids extras)."""
    batching = BatchConfig.model_validate(gateway()["user_config"])
    assert batching.max_batch_tweets >= Settings().max_batch_tweets
    assert batching.max_writes_in_flight >= 1
    with pytest.raises(ValidationError):
        BatchConfig.model_validate({**gateway()["user_config"], "batch_wait_timeout_s": 0.005})
