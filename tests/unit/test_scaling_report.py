"""The scaling runs' targets (loadtest.bench.scaling): 2 consumer actors per broker against
one, each actor's rate, and 2 Gateway replicas against one, from plain result dicts."""

from __future__ import annotations

from typing import Any

from loadtest.bench import report
from loadtest.bench.scaling import consumer_rows, gateway_row
from loadtest.bench.scenarios import ALL_SCENARIOS, SCENARIOS
from loadtest.bench.variants import consumer_variant


def drain(redis: float | None, valkey: float | None) -> dict[str, Any]:
    median = {"drain_redis_tweets_per_s": redis, "drain_valkey_tweets_per_s": valkey}
    return {"median": median, "runs": [{"zero_loss": True}]}


def rows_by_target(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {row["target"]: row for row in consumer_rows(results)}


SCALE = "2 actors per broker >= 1.6 x one (drain tweets/s)"
EACH = "each consumer actor >= 25,000 tweets/s"


def test_two_actors_per_broker_must_reach_1_6_x_one_on_both_brokers() -> None:
    results = {"drain_1": drain(26_000, 30_000), "drain_2": drain(52_000, 45_000)}
    rows = rows_by_target(results)
    assert not rows[SCALE]["met"]  # Valkey 45,000 / 30,000 = 1.50
    assert "Kafka -> Redis: 52,000 / 26,000 = 2.00" in rows[SCALE]["value"]
    assert "RabbitMQ -> Valkey: 45,000 / 30,000 = 1.50" in rows[SCALE]["value"]
    results["drain_2"] = drain(52_000, 48_000)
    assert rows_by_target(results)[SCALE]["met"]


def test_each_actor_is_its_store_rate_over_its_actors() -> None:
    rows = rows_by_target({"drain_1": drain(26_000, 30_000), "drain_2": drain(52_000, 48_000)})
    assert not rows[EACH]["met"]  # 48,000 over 2 actors is 24,000 each
    assert "RabbitMQ -> Valkey 2/broker 24,000 tweets/s" in rows[EACH]["value"]
    assert "Kafka -> Redis 2/broker 26,000 tweets/s" in rows[EACH]["value"]
    rows = rows_by_target({"drain_1": drain(26_000, 30_000), "drain_2": drain(52_000, 50_000)})
    assert rows[EACH]["met"]


def test_one_actor_below_the_rate_misses() -> None:
    rows = rows_by_target({"drain_1": drain(26_000, 24_999), "drain_2": drain(60_000, 60_000)})
    assert not rows[EACH]["met"]
    assert "RabbitMQ -> Valkey 1/broker 24,999 tweets/s" in rows[EACH]["value"]


def test_a_store_that_never_drained_misses_both_targets() -> None:
    rows = rows_by_target({"drain_1": drain(26_000, None), "drain_2": drain(60_000, 60_000)})
    assert not rows[SCALE]["met"] and not rows[EACH]["met"]
    assert "RabbitMQ -> Valkey: 60,000 / - = -" in rows[SCALE]["value"]


def test_no_scaling_rows_without_the_runs() -> None:
    assert consumer_rows({}) == []
    assert [r["target"] for r in consumer_rows({"drain_1": drain(30_000, 30_000)})] == [EACH]
    assert gateway_row({"replicas_1": {"median": {"e2e_tweets_per_s": 900.0}}}) is None


def test_a_second_gateway_replica_must_not_lose() -> None:
    results = {
        "replicas_1": {"median": {"e2e_tweets_per_s": 1000.0}},
        "replicas_2": {"median": {"e2e_tweets_per_s": 950.0}},
    }
    row = gateway_row(results)
    assert row is not None and not row["met"] and row["value"] == "950 / 1,000 = 0.95"
    results["replicas_2"]["median"]["e2e_tweets_per_s"] = 1200.0
    assert gateway_row(results)["met"]  # type: ignore[index]


def test_the_rows_are_among_the_bench_targets() -> None:
    results = {"drain_1": drain(26_000, 30_000), "drain_2": drain(52_000, 48_000)}
    targets = [row["target"] for row in report.targets(results)]
    assert SCALE in targets and EACH in targets


def test_the_consumer_variants_set_both_counts_and_keep_other_args() -> None:
    config = {
        "applications": [
            {"name": "ingest", "args": {}},
            {"name": "consumers", "args": {"fingerprint_key": "k" * 40}},
        ]
    }
    out = consumer_variant(config, 2)
    assert out["applications"][1]["args"] == {
        "fingerprint_key": "k" * 40,
        "kafka_consumers": 2,
        "rabbit_consumers": 2,
    }
    assert config["applications"][1]["args"] == {"fingerprint_key": "k" * 40}  # a copy
    assert {"drain_1", "drain_2"} <= set(ALL_SCENARIOS)
    variants = {s.name: s.variant for s in SCENARIOS}
    deployed = variants["drain_1"](config, None)  # type: ignore[misc,arg-type]
    assert deployed["applications"][1]["args"]["kafka_consumers"] == 1


def test_the_scaling_drains_release_one_store_at_a_time_and_drain_both() -> None:
    by_name = {s.name: s for s in SCENARIOS}
    assert by_name["drain_1"].one_store_at_a_time and by_name["drain_2"].one_store_at_a_time
    assert not by_name["drain"].one_store_at_a_time  # both consumers at once, as before
