"""How big each volume of k8s/infra must be, derived from the settings and the manifests.

A full volume stops a broker or a store, so every size is the worst case of what the server
may keep on disk, plus a reserve for what the model leaves out (files a server keeps open
for a moment, growth between two retention checks, filesystem overhead):

* Kafka, per broker (replication factor 3 on 3 brokers: every broker holds a copy of every
  partition): for each partition of the app's topics (``kafka_partitions`` + 1 dead-letter
  partition) its retention plus the segment retention cannot delete yet plus the two
  preallocated index files of the active segment; the committed offsets (compacted: at most
  two segments and their indexes per partition); the KRaft metadata log (its retention,
  plus two segments).
* Redis and Valkey: the AOF base (at most ``maxmemory``), the increment that triggers a
  rewrite (100 % of the base), and the rewrite's new base, written beside both.
* RabbitMQ: the quorum queue's backlog at the admission limit twice (the write-ahead log
  and the segment files hold it until a snapshot releases it), two write-ahead logs, the
  free-disk alarm's margin, and room for as many bytes of dead letters as one backlog.

    python -m kuberay.volumes      # the table of docs/kubernetes.md ("Volume sizes")
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kuberay.kustomize import render
from serve_app.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
INFRA = ROOT / "k8s" / "infra"
MIB = 1024**2
GIB = 1024**3
RESERVE = 0.25  # of the modelled need
KAFKA_INDEX_BYTES = 10 * MIB  # log.index.size.max.bytes (default), offset + time index each
AOF_REWRITE_GROWTH = 1.0  # auto-aof-rewrite-percentage 100 (default)
RABBITMQ_DISK_FREE_LIMIT = 50_000_000  # disk_free_limit.absolute (default)

Obj = dict[str, Any]


@dataclass(frozen=True)
class Need:
    """What one volume must hold: named parts in bytes, the reserve, the manifest's request."""

    workload: str
    parts: tuple[tuple[str, int], ...]
    requested: int

    @property
    def modelled(self) -> int:
        return sum(size for _, size in self.parts)

    @property
    def minimum(self) -> int:
        return math.ceil(self.modelled * (1 + RESERVE))

    @property
    def fits(self) -> bool:
        return self.requested >= self.minimum


def quantity_bytes(quantity: str) -> int:
    """A Kubernetes storage quantity in binary units (``8Gi``, ``512Mi``) as bytes."""
    match = re.fullmatch(r"(\d+)(Mi|Gi|Ti)", quantity)
    if not match:
        raise ValueError(f"storage quantity {quantity!r}: use Mi, Gi or Ti")
    return int(match.group(1)) * {"Mi": MIB, "Gi": GIB, "Ti": 1024 * GIB}[match.group(2)]


def _workload(objects: Iterable[Obj], name: str) -> Obj:
    found = [o for o in objects if o["kind"] == "StatefulSet" and o["metadata"]["name"] == name]
    if len(found) != 1:
        raise ValueError(f"expected one StatefulSet {name}, found {len(found)}")
    return found[0]


def requested_bytes(statefulset: Obj) -> int:
    """The storage request of the StatefulSet's one volume claim template."""
    (claim,) = statefulset["spec"]["volumeClaimTemplates"]
    return quantity_bytes(claim["spec"]["resources"]["requests"]["storage"])


def _env(statefulset: Obj) -> dict[str, str]:
    container = statefulset["spec"]["template"]["spec"]["containers"][0]
    return {v["name"]: v["value"] for v in container.get("env", []) if "value" in v}


def _flag(statefulset: Obj, flag: str) -> str:
    args = statefulset["spec"]["template"]["spec"]["containers"][0]["args"]
    return args[args.index(flag) + 1]


def kafka_need(objects: list[Obj], settings: Settings) -> Need:
    kafka = _workload(objects, "kafka")
    env = _env(kafka)
    segment = int(env["KAFKA_LOG_SEGMENT_BYTES"])
    per_partition = int(env["KAFKA_LOG_RETENTION_BYTES"]) + segment + 2 * KAFKA_INDEX_BYTES
    partitions = settings.kafka_partitions + 1  # the tweets' + the dead letters' one
    offsets_segment = int(env["KAFKA_OFFSETS_TOPIC_SEGMENT_BYTES"])
    offsets = (
        int(env["KAFKA_OFFSETS_TOPIC_NUM_PARTITIONS"]) * 2 * (offsets_segment + KAFKA_INDEX_BYTES)
    )
    metadata = int(env["KAFKA_METADATA_MAX_RETENTION_BYTES"]) + 2 * int(
        env["KAFKA_METADATA_LOG_SEGMENT_BYTES"]
    )
    parts = (
        (f"{partitions} partitions x (retention + segment + indexes)", partitions * per_partition),
        ("committed offsets", offsets),
        ("KRaft metadata log", metadata),
    )
    return Need("kafka", parts, requested_bytes(kafka))


def store_need(objects: list[Obj], name: str) -> Need:
    store = _workload(objects, name)
    maxmemory = _memory_bytes(_flag(store, "--maxmemory"))
    parts = (
        ("AOF base (maxmemory)", maxmemory),
        ("AOF increment before a rewrite", int(maxmemory * AOF_REWRITE_GROWTH)),
        ("the rewrite's new base", maxmemory),
    )
    return Need(name, parts, requested_bytes(store))


def _memory_bytes(value: str) -> int:
    match = re.fullmatch(r"(\d+)(mb|gb)", value.lower())
    if not match:
        raise ValueError(f"maxmemory {value!r}: use mb or gb")
    return int(match.group(1)) * {"mb": MIB, "gb": GIB}[match.group(2)]


def rabbitmq_need(objects: list[Obj], settings: Settings, wal_bytes: int) -> Need:
    rabbitmq = _workload(objects, "rabbitmq")
    backlog = settings.admission_rabbitmq_max_bytes
    parts = (
        ("backlog at the admission limit, log + segments", 2 * backlog),
        ("two write-ahead logs", 2 * wal_bytes),
        ("dead letters (one backlog's worth)", backlog),
        ("free-disk alarm margin", RABBITMQ_DISK_FREE_LIMIT),
    )
    return Need("rabbitmq", parts, requested_bytes(rabbitmq))


def wal_max_bytes(objects: list[Obj]) -> int:
    """raft.wal_max_size_bytes of the RabbitMQ ConfigMap's 10-memory.conf."""
    config = next(
        o
        for o in objects
        if o["kind"] == "ConfigMap" and o["metadata"]["name"] == "rabbitmq-config"
    )
    match = re.search(
        r"^raft\.wal_max_size_bytes\s*=\s*(\d+)$", config["data"]["10-memory.conf"], re.M
    )
    if not match:
        raise ValueError("10-memory.conf sets no raft.wal_max_size_bytes")
    return int(match.group(1))


def needs(objects: list[Obj] | None = None, settings: Settings | None = None) -> list[Need]:
    """Every replicated workload's volume need, from the rendered k8s/infra."""
    objects = render(INFRA) if objects is None else objects
    settings = Settings() if settings is None else settings
    return [
        kafka_need(objects, settings),
        rabbitmq_need(objects, settings, wal_max_bytes(objects)),
        store_need(objects, "redis"),
        store_need(objects, "valkey"),
    ]


def table(rows: list[Need]) -> str:
    """The Markdown table of docs/kubernetes.md."""
    lines = [
        "| Volume (each pod) | What it must hold | Modelled | + 25 % reserve | Requested |",
        "| --- | --- | --- | --- | --- |",
    ]
    for need in rows:
        held = "; ".join(f"{label} {size / MIB:,.0f} MiB" for label, size in need.parts)
        lines.append(
            f"| {need.workload} | {held} | {need.modelled / GIB:.2f} GiB "
            f"| {need.minimum / GIB:.2f} GiB | {need.requested / GIB:.0f} GiB |"
        )
    return "\n".join(lines)


def main() -> int:
    rows = needs()
    print(table(rows))
    short = [n.workload for n in rows if not n.fits]
    if short:
        print(f"too small: {', '.join(short)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
