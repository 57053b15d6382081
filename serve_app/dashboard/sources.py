"""Where the dashboard's readings come from: every broker and store probe read at once.

The probes live with their clients (:mod:`serve_app.brokers.kafka`,
:mod:`serve_app.brokers.rabbitmq`, :mod:`serve_app.store.client`); each keeps its client open
between reads (the dashboard polls every second), bounds every read with a timeout, and
never raises: a down broker or store becomes ``{"ok": False, "detail": ...}``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any, Self

from serve_app.brokers.kafka import KafkaProbe
from serve_app.brokers.rabbitmq import RabbitProbe
from serve_app.dashboard.core import DashboardCore, ReplicaCounts
from serve_app.model.health import READ_TIMEOUT_S, close_quietly
from serve_app.model.metrics import NO_METRICS, MetricsSink
from serve_app.settings import Settings
from serve_app.store.client import (
    StoreClient,
    StoreProbe,
    TweetStore,
    connect_redis,
    connect_valkey,
)


class Monitor:
    """Every probe read at once: what the dashboard shows next to the counts.

    It owns the store clients it is given and closes them in :meth:`close`.
    """

    def __init__(
        self,
        settings: Settings,
        store_clients: Mapping[str, StoreClient],
        timeout_s: float = READ_TIMEOUT_S,
    ) -> None:
        self.kafka = KafkaProbe(settings, timeout_s)
        self.rabbitmq = RabbitProbe(settings, timeout_s)
        self.stores = {
            name: StoreProbe(client, timeout_s) for name, client in store_clients.items()
        }

    async def read(self) -> dict[str, Any]:
        """``{"kafka": {...}, "rabbitmq": {...}, "stores": {name: {...}}}``; never raises."""
        names = list(self.stores)
        kafka, rabbitmq, *stores = await asyncio.gather(
            self.kafka.read(), self.rabbitmq.read(), *(self.stores[n].read() for n in names)
        )
        return {
            "kafka": kafka,
            "rabbitmq": rabbitmq,
            "stores": dict(zip(names, stores, strict=True)),
        }

    async def close(self) -> None:
        await asyncio.gather(self.kafka.close(), self.rabbitmq.close())
        await close_quietly(*(probe.client.aclose() for probe in self.stores.values()))

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


def build_core_from_settings(
    settings: Settings, replicas: ReplicaCounts, metrics: MetricsSink = NO_METRICS
) -> DashboardCore:
    """The production wiring: both stores' clients, shared with (and closed by) the monitor."""
    clients = {"redis": connect_redis(settings), "valkey": connect_valkey(settings)}
    stores = {name: TweetStore(client, settings) for name, client in clients.items()}
    monitor = Monitor(settings, clients)
    return DashboardCore(stores, monitor, replicas, weathers=settings.weathers, metrics=metrics)
