"""The weather pipeline's Grafana dashboard, as code (grafana-foundation-sdk).

Writes ``k8s/infra/grafana/dashboards/weather.json``, which kustomize ships to Grafana as a
ConfigMap (``grafana-weather-dashboards``). ``tests/unit/test_grafana_dashboard.py`` fails when the
committed JSON is stale or when a Redis command reads a key that ``serve_app.store.core.KEYS`` does
not define.

    python -m grafana.dashboard           # rewrite the JSON
    python -m grafana.dashboard --check   # exit 1 if it is out of date

Panels: total tweets in Redis (fed by Kafka) and Valkey (fed by RabbitMQ) side by side; per
store tweets by country, by weather, country x weather, the latest tweets, memory and ops/s;
from Prometheus, requests/s and healthy replicas per Serve deployment, and the pipeline's own
metrics (``serve_app.model.metrics``: accepted, refused, published, consumed, backlog,
publish latency quantiles, each store's freshness).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from grafana_foundation_sdk.builders import barchart, stat, table, timeseries
from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.builders import dashboard as dash
from grafana_foundation_sdk.builders import prometheus as prom
from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.cog import variants as cogvariants
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as models

from codegen import write_or_check
from serve_app.model import metrics
from serve_app.model.metrics import Metric
from serve_app.store.core import KEYS

ROOT = Path(__file__).resolve().parent.parent
OUTPUT = ROOT / "k8s" / "infra" / "grafana" / "dashboards" / "weather.json"
DASHBOARD_UID = "weather-pipeline"
LATEST_ROWS = 50

# Data source uids, provisioned in k8s/infra/grafana/provisioning/datasources/datasources.yaml.
PROMETHEUS = models.DataSourceRef(type_val="prometheus", uid="prometheus")


@dataclass(frozen=True)
class Store:
    title: str
    source: str
    ref: models.DataSourceRef


STORES = (
    Store("Redis", "Kafka", models.DataSourceRef(type_val="redis-datasource", uid="redis")),
    Store("Valkey", "RabbitMQ", models.DataSourceRef(type_val="redis-datasource", uid="valkey")),
)


class RedisQuery(cogvariants.Dataquery):
    """A target of the Redis data source plugin (redis-datasource): no SDK model exists for it."""

    def __init__(self, ref_id: str, datasource: models.DataSourceRef, **fields: Any) -> None:
        self.ref_id = ref_id
        self.datasource = datasource
        self.fields = fields

    def to_json(self) -> dict[str, object]:
        return {"refId": self.ref_id, "datasource": self.datasource, **self.fields}


class Redis(cogbuilder.Builder[cogvariants.Dataquery]):
    def __init__(self, query: RedisQuery) -> None:
        self._query = query

    def build(self) -> RedisQuery:
        return self._query

    @classmethod
    def command(cls, store: Store, command: str, key: str = "", **extra: Any) -> Redis:
        """One of the plugin's built-in commands (get, hgetall, info, ...)."""
        fields: dict[str, Any] = {"type": "command", "command": command, "query": ""}
        if key:
            fields["keyName"] = key
        fields.update(extra)
        return cls(RedisQuery("A", store.ref, **fields))

    @classmethod
    def cli(cls, store: Store, *args: str | int) -> Redis:
        """A raw command (the plugin has no built-in LRANGE)."""
        query = " ".join(str(a) for a in args)
        return cls(RedisQuery("A", store.ref, type="command", command="", query=query))

    @classmethod
    def info_stream(cls, store: Store, section: str) -> Redis:
        """INFO <section> polled every second into a time series (plugin streaming)."""
        return cls.command(
            store,
            "info",
            section=section,
            streaming=True,
            streamingInterval=1000,
            streamingCapacity=900,
            streamingDataType="TimeSeries",
        )


def _transform(id_val: str, options: dict[str, Any]) -> models.DataTransformerConfig:
    return models.DataTransformerConfig(id_val=id_val, options=options)


def _hash_to_numbers() -> list[models.DataTransformerConfig]:
    """HGETALL answers a Field/Value frame of strings: numbers, biggest first."""
    return [
        _transform(
            "convertFieldType",
            {"conversions": [{"targetField": "Value", "destinationType": "number"}], "fields": {}},
        ),
        _transform("sortBy", {"sort": [{"field": "Value", "desc": True}]}),
    ]


def _only_fields(*names: str) -> models.DataTransformerConfig:
    return _transform("filterFieldsByName", {"include": {"names": ["#time", *names]}})


def _counter(
    store: Store, title: str, key: str, description: str, span: int, command: str = "GET"
) -> stat.Panel:
    """A number read from the store: ``GET`` a string key, or ``HLEN`` / ``HGETALL``."""
    target = (
        Redis.cli(store, command, key)
        if command in ("LLEN", "HLEN")
        else Redis.command(store, command.lower(), key)
    )
    return (
        stat.Panel()
        .title(title)
        .description(f"{command} {key}: {description}")
        .datasource(store.ref)
        .with_target(target)
        .reduce_options(common_builders.ReduceDataOptions().calcs(["lastNotNull"]).fields("/.*/"))
        .graph_mode(common.BigValueGraphMode.NONE)
        .color_mode(common.BigValueColorMode.VALUE)
        .unit("short")
        .height(6)
        .span(span)
    )


def _total(store: Store) -> stat.Panel:
    return _counter(
        store,
        f"Tweets in {store.title} (from {store.source})",
        KEYS.total,
        f"tweets counted once each by the {store.source} consumer.",
        6,
    )


def _conflicts(store: Store) -> stat.Panel:
    return _counter(
        store,
        f"Id conflicts in {store.title}",
        KEYS.conflicts,
        "losers of two tweets with one id and other content (the smaller content "
        "fingerprint wins in both stores; the loser is dead-lettered with reason id-conflict).",
        2,
    )


def _unsettled(store: Store) -> list[stat.Panel]:
    """What is normally 0: dead letters not yet confirmed, broker records skipped."""
    return [
        _counter(
            store,
            f"Parked dead letters in {store.title}",
            KEYS.dead_letter_outbox,
            f"dead letters in the store's outbox the {store.source} dead-letter broker has not "
            "confirmed yet (published as fast as it takes them; it is down, full or has no "
            "queue bound while this stays above 0); 0 normally.",
            2,
            command="HLEN",
        ),
        _counter(
            store,
            f"Skipped records ({store.title})",
            KEYS.skipped,
            f"{store.source} records deleted by the broker before the consumer read them, "
            "per topic/partition: never counted; 0 normally.",
            2,
            command="HGETALL",
        ),
    ]


def _breakdown(store: Store, title: str, key: str, span: int) -> barchart.Panel:
    return (
        barchart.Panel()
        .title(f"{store.title}: {title}")
        .description(f"HGETALL {key}")
        .datasource(store.ref)
        .with_target(Redis.command(store, "hgetall", key))
        .transformations(_hash_to_numbers())
        .x_field("Field")
        .orientation(common.VizOrientation.HORIZONTAL)
        .show_value(common.VisibilityMode.AUTO)
        .legend(common_builders.VizLegendOptions().show_legend(False))
        .unit("short")
        .height(9)
        .span(span)
    )


def _country_weather(store: Store) -> table.Panel:
    return (
        table.Panel()
        .title(f"{store.title}: tweets by country x weather")
        .description(f"HGETALL {KEYS.by_country_weather} (fields are country:weather)")
        .datasource(store.ref)
        .with_target(Redis.command(store, "hgetall", KEYS.by_country_weather))
        .transformations(
            [
                *_hash_to_numbers(),
                _transform(
                    "organize",
                    {"renameByName": {"Field": "country:weather", "Value": "tweets"}},
                ),
            ]
        )
        .cell_height(common.TableCellHeight.SM)
        .height(9)
        .span(8)
    )


def _latest(store: Store) -> table.Panel:
    return (
        table.Panel()
        .title(f"{store.title}: latest tweets")
        .description(f"LRANGE {KEYS.latest} 0 {LATEST_ROWS - 1} (newest first)")
        .datasource(store.ref)
        .with_target(Redis.cli(store, "LRANGE", KEYS.latest, 0, LATEST_ROWS - 1))
        .with_transformation(
            _transform("extractFields", {"source": "Value", "format": "json", "replace": True})
        )
        .cell_height(common.TableCellHeight.SM)
        .height(9)
        .span(24)
    )


def _info_series(store: Store, title: str, section: str, field: str, unit: str) -> timeseries.Panel:
    return (
        timeseries.Panel()
        .title(f"{store.title}: {title}")
        .description(f"INFO {section}: {field}, sampled every second while the dashboard is open.")
        .datasource(store.ref)
        .with_target(Redis.info_stream(store, section))
        .with_transformation(_only_fields(field))
        .unit(unit)
        .fill_opacity(10)
        .height(7)
        .span(12)
    )


def _prom_series(
    title: str, description: str, expr: str, legend: str, unit: str
) -> timeseries.Panel:
    return _prom_queries(title, description, [(expr, legend)], unit)


def _prom_queries(
    title: str, description: str, queries: list[tuple[str, str]], unit: str
) -> timeseries.Panel:
    """A time series panel of one or more PromQL queries, each (expression, legend)."""
    panel = timeseries.Panel().title(title).description(description).datasource(PROMETHEUS)
    for index, (expr, legend) in enumerate(queries):
        ref_id = chr(ord("A") + index)
        panel = panel.with_target(
            prom.Dataquery().expr(expr).legend_format(legend).ref_id(ref_id).datasource(PROMETHEUS)
        )
    return (
        panel.unit(unit)
        .fill_opacity(10)
        .legend(
            common_builders.VizLegendOptions()
            .show_legend(True)
            .display_mode(common.LegendDisplayMode.TABLE)
            .placement(common.LegendPlacement.RIGHT)
            .calcs(["lastNotNull", "max"])
        )
        .height(8)
        .span(12)
    )


def _legend(tags: tuple[str, ...]) -> str:
    return " ".join(f"{{{{{tag}}}}}" for tag in tags)


def _rate_panel(title: str, metric: Metric, by: tuple[str, ...], unit: str) -> timeseries.Panel:
    """Per-second rate of one of our counters, summed over replicas/actors by ``by``."""
    expr = f"sum by ({', '.join(by)}) (rate({metric.prometheus}[1m]))"
    return _prom_series(
        title, f"{metric.prometheus}: {metric.description}", expr, _legend(by), unit
    )


def _gauge_panel(
    title: str, metric: Metric, by: tuple[str, ...], agg: str = "max", unit: str = "short"
) -> timeseries.Panel:
    """One of our gauges; ``max`` since a second Dashboard replica may briefly overlap."""
    expr = f"{agg} by ({', '.join(by)}) ({metric.prometheus})"
    return _prom_series(
        title, f"{metric.prometheus}: {metric.description}", expr, _legend(by), unit
    )


LATENCY_QUANTILES = (0.5, 0.95, 0.99)


def _latency_panel(title: str, metric: Metric, outcome: str) -> timeseries.Panel:
    """Quantiles of one of our histograms over every replica, from its buckets."""
    buckets = f'{metric.prometheus}_bucket{{outcome="{outcome}"}}'
    queries = [
        (f"histogram_quantile({q}, sum by (le) (rate({buckets}[1m])))", f"p{round(q * 100)}")
        for q in LATENCY_QUANTILES
    ]
    description = f"{metric.prometheus} (outcome={outcome}): {metric.description}"
    return _prom_queries(title, description, queries, "s")


def _pipeline_panels() -> list[timeseries.Panel]:
    """The application metrics of serve_app.model.metrics, one panel each."""
    return [
        _rate_panel("Accepted tweets/s by face", metrics.ACCEPTED, ("face",), "cps"),
        _rate_panel("Refused requests/s by status", metrics.REJECTED, ("face", "code"), "reqps"),
        _rate_panel(
            "503 / UNAVAILABLE per broker", metrics.UNAVAILABLE, ("face", "broker"), "reqps"
        ),
        _rate_panel("Published chunks/s per broker", metrics.CHUNKS_PUBLISHED, ("broker",), "cps"),
        _rate_panel(
            "Consumer tweets/s: applied, duplicate, dead-lettered",
            metrics.CONSUMER_TWEETS,
            ("consumer", "outcome"),
            "cps",
        ),
        _gauge_panel("Consumer backlog (Kafka lag, RabbitMQ ready)", metrics.BACKLOG, ("broker",)),
        _gauge_panel("Dead letters per broker", metrics.DEAD_LETTERS, ("broker",)),
        _gauge_panel(
            "Dead letters parked in the stores (not yet confirmed by the broker)",
            metrics.PARKED_DEAD_LETTERS,
            ("consumer",),
        ),
        _rate_panel(
            "Skipped broker records/s (deleted before read)",
            metrics.SKIPPED_RECORDS,
            ("consumer",),
            "cps",
        ),
        _gauge_panel(
            "Ingest refusing (admission control), per broker or store",
            metrics.ADMISSION_REFUSING,
            ("broker",),
        ),
        _rate_panel(
            "Overload: requests/s refused at the concurrency limit",
            metrics.OVERLOAD_REFUSED,
            ("face",),
            "reqps",
        ),
        # sum: each replica has its own limit; together they are what the Gateway takes
        _gauge_panel(
            "Concurrency limit, all Gateway replicas (moved by publish latency)",
            metrics.CONCURRENCY_LIMIT,
            ("face",),
            agg="sum",
        ),
        _rate_panel(
            "Admission poller restarts/s (reason in GET /health)",
            metrics.POLLER_RESTARTS,
            ("task",),
            "cps",
        ),
        _latency_panel(
            "Publish latency: write start to both brokers confirmed",
            metrics.PUBLISH_LATENCY,
            "confirmed",
        ),
        # min: the store's newest tweet is the newest any of its consumers counted
        _gauge_panel(
            "Store freshness: age of the newest tweet counted",
            metrics.FRESHNESS,
            ("store",),
            agg="min",
            unit="s",
        ),
    ]


def build() -> dash.Dashboard:
    board = (
        dash.Dashboard("Weather pipeline")
        .uid(DASHBOARD_UID)
        .description(
            "Tweets ingested through Ray Serve: Kafka drains into Redis, RabbitMQ into Valkey. "
            "Generated by grafana/dashboard.py - do not edit in Grafana."
        )
        .tags(["weather", "ray-serve", "redis", "valkey"])
        .time("now-30m", "now")
        .refresh("10s")
        .timezone("browser")
        .tooltip(models.DashboardCursorSync.CROSSHAIR)
        .readonly()
    )
    board.with_row(dash.Row("Totals: Redis (Kafka) vs Valkey (RabbitMQ)"))
    for store in STORES:
        board.with_panel(_total(store))
        board.with_panel(_conflicts(store))
        for panel in _unsettled(store):
            board.with_panel(panel)
    for store in STORES:
        board.with_row(dash.Row(f"{store.title} (fed by {store.source})"))
        board.with_panel(_breakdown(store, "tweets by country", KEYS.by_country, 8))
        board.with_panel(_breakdown(store, "tweets by weather", KEYS.by_weather, 8))
        board.with_panel(_country_weather(store))
        board.with_panel(_latest(store))
        board.with_panel(_info_series(store, "memory used", "memory", "used_memory", "bytes"))
        board.with_panel(_info_series(store, "ops/s", "stats", "instantaneous_ops_per_sec", "ops"))
    board.with_row(dash.Row("Ray Serve (Prometheus)"))
    board.with_panel(
        _prom_series(
            "Requests/s per Serve deployment",
            "Requests processed by the replicas of each deployment.",
            "sum by (application, deployment) "
            "(rate(ray_serve_deployment_request_counter_total[1m]))",
            "{{application}}/{{deployment}}",
            "reqps",
        )
    )
    board.with_panel(
        _prom_series(
            "Healthy replicas per Serve deployment",
            "Serve autoscaling at work: replicas per deployment (worker pods follow).",
            "sum by (application, deployment) (ray_serve_deployment_replica_healthy)",
            "{{application}}/{{deployment}}",
            "short",
        )
    )
    board.with_panel(
        _prom_series(
            "HTTP requests/s at the ingress",
            "REST requests through the Serve HTTP ingress, by route and status code.",
            "sum by (application, route, status_code) "
            "(rate(ray_serve_num_http_requests_total[1m]))",
            "{{route}} {{status_code}}",
            "reqps",
        )
    )
    board.with_panel(
        _prom_series(
            "gRPC requests/s",
            "Calls to the Publisher over gRPC (:9000), by method and status code.",
            "sum by (application, method, status_code) "
            "(rate(ray_serve_num_grpc_requests_total[1m]))",
            "{{method}} {{status_code}}",
            "reqps",
        )
    )
    board.with_row(dash.Row("Pipeline metrics (serve_app.model.metrics, Prometheus)"))
    for panel in _pipeline_panels():
        board.with_panel(panel)
    return board


def render() -> str:
    model = build().build()
    for panel_id, panel in enumerate(model.panels or [], start=1):
        panel.id_val = panel_id  # stable, unique ids: the Ray dashboard embeds panels by id
    return json.dumps(model, cls=JSONEncoder, indent=2, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    return write_or_check(
        {OUTPUT: render()}, "python -m grafana.dashboard", __doc__.splitlines()[0], argv
    )


if __name__ == "__main__":
    sys.exit(main())
