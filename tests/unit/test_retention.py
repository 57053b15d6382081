"""Kafka never keeps a record longer than the stores remember its id.

A group reset to the earliest offset replays whatever Kafka still holds; the stores count
an id once only while its marker lives (``SEEN_ID_TTL_S``). Kafka deletes only closed
segments, so the oldest record can be as old as retention + one segment's roll time + one
retention check. Checked for the local stack's broker and for the Kubernetes one.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from devstack.servers.kafka import Kafka
from serve_app.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
HOUR_MS = 3_600_000


def oldest_record_ms(props: dict[str, str]) -> int:
    """How old a record can get before Kafka deletes it (time-based retention)."""
    retention = int(props["log.retention.hours"]) * HOUR_MS
    roll = int(props.get("log.roll.hours", 168)) * HOUR_MS  # Kafka's default: 7 days
    check = int(props.get("log.retention.check.interval.ms", 300_000))
    return retention + roll + check


def local_properties() -> dict[str, str]:
    lines = Kafka().properties().splitlines()
    return dict(line.split("=", 1) for line in lines if "=" in line)


def kubernetes_properties() -> dict[str, str]:
    """The broker properties the Kafka image makes of its KAFKA_* variables."""
    deployment = next(
        d
        for d in yaml.safe_load_all((ROOT / "k8s" / "infra" / "kafka.yaml").read_text())
        if d and d.get("kind") in {"Deployment", "StatefulSet"}
    )
    env = deployment["spec"]["template"]["spec"]["containers"][0]["env"]
    return {
        e["name"].removeprefix("KAFKA_").lower().replace("_", "."): str(e.get("value"))
        for e in env
        if e["name"].startswith("KAFKA_LOG_")
    }


def test_local_kafka_forgets_before_the_stores_do() -> None:
    dedup_window_ms = Settings().seen_id_ttl_s * 1000
    assert oldest_record_ms(local_properties()) < dedup_window_ms


def test_kubernetes_kafka_forgets_before_the_stores_do() -> None:
    dedup_window_ms = Settings().seen_id_ttl_s * 1000  # the ConfigMap keeps the default
    props = kubernetes_properties()
    assert oldest_record_ms(props) < dedup_window_ms
    segment = int(props["log.segment.bytes"])
    assert int(props["log.retention.bytes"]) + segment <= 1024 * 1024 * 1024  # per partition


def test_defaults_would_not_do() -> None:
    """Why the roll setting exists: with Kafka's 7-day default a quiet topic keeps records
    for a week, far past the 48 h window."""
    assert oldest_record_ms({"log.retention.hours": "24"}) > Settings().seen_id_ttl_s * 1000
