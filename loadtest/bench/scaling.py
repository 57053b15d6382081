"""The scaling runs' targets: what a second consumer actor per broker and a second Gateway
replica add, each against one within the same run (``drain_1``/``drain_2``,
``replicas_1``/``replicas_2``)."""

from __future__ import annotations

from typing import Any

Row = dict[str, Any]

SCALE_OUT_TARGET = 1.6
"""2 consumer actors per broker drain at least this many times what one does."""
ACTOR_TARGET = 25_000
"""Tweets/s each consumer actor drains (the rate of its store over its actors)."""
STORES = (("redis", "Kafka -> Redis"), ("valkey", "RabbitMQ -> Valkey"))


def _drain(results: dict[str, Any], scenario: str, store: str) -> float | None:
    median = (results.get(scenario) or {}).get("median", {})
    value = median.get(f"drain_{store}_tweets_per_s")
    return float(value) if value else None


def _figures(values: list[tuple[str, float | None]], unit: str = "") -> str:
    return ", ".join(f"{name} {'-' if v is None else f'{v:,.0f}'}{unit}" for name, v in values)


def consumer_rows(results: dict[str, Any]) -> list[Row]:
    """ "2 actors per broker >= 1.6 x one" (per store, drain_2 / drain_1) and "each consumer
    actor >= 25,000 tweets/s" (each store's rate over its actors, in both runs); no row for
    a run that was not made."""
    rows: list[Row] = []
    one = {store: _drain(results, "drain_1", store) for store, _ in STORES}
    two = {store: _drain(results, "drain_2", store) for store, _ in STORES}
    if any(one.values()) and any(two.values()):
        ratios = {s: (two[s] / one[s] if one[s] and two[s] else None) for s, _ in STORES}
        value = "; ".join(
            f"{label}: {'-' if two[s] is None else f'{two[s]:,.0f}'} / "
            f"{'-' if one[s] is None else f'{one[s]:,.0f}'} = "
            f"{'-' if ratios[s] is None else f'{ratios[s]:.2f}'}"
            for s, label in STORES
        )
        rows.append(
            {
                "target": f"2 actors per broker >= {SCALE_OUT_TARGET:g} x one (drain tweets/s)",
                "value": value,
                "met": all(r is not None and r >= SCALE_OUT_TARGET for r in ratios.values()),
            }
        )
    per_actor: list[tuple[str, float | None]] = []
    for n, rates in ((1, one), (2, two)):
        if any(rates.values()):
            per_actor += [
                (f"{label} {n}/broker", None if rates[s] is None else rates[s] / n)
                for s, label in STORES
            ]
    if per_actor:
        rows.append(
            {
                "target": f"each consumer actor >= {ACTOR_TARGET:,} tweets/s",
                "value": _figures(per_actor, " tweets/s"),
                "met": all(v is not None and v >= ACTOR_TARGET for _, v in per_actor),
            }
        )
    return rows


def gateway_row(results: dict[str, Any]) -> Row | None:
    """What a second Gateway replica adds (end to end tweets/s): at least no loss here,
    where both replicas share the same 2 cores; the capacity model's check."""

    def rate(name: str) -> float | None:
        value = (results.get(name) or {}).get("median", {}).get("e2e_tweets_per_s")
        return float(value) if value else None

    one, two = rate("replicas_1"), rate("replicas_2")
    if not one or not two:
        return None
    return {
        "target": "2 Gateway replicas >= 1.0 x one (REST e2e tweets/s, same cores)",
        "value": f"{two:,.0f} / {one:,.0f} = {two / one:.2f}",
        "met": two / one >= 1.0,
    }
