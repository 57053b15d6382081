"""The Benthos anchor's generated config has our pipeline's contract (offline).

Answer 2xx only after Kafka (idempotent producer, so acks=all) AND RabbitMQ (persistent,
mandatory, publisher-confirmed) acknowledged; bad input reaches neither; arrays are split
into one message per tweet after validation; everything on loopback; the anchor's own
topic and queue. The behaviour of the Bloblang itself is checked with the Benthos binary
when it has been built (``python -m loadtest.benthos --build-only``), skipped otherwise.
"""

from __future__ import annotations

import json
import subprocess
from typing import Any

import pytest
import yaml

from loadtest.benthos import build
from loadtest.benthos.config import (
    ACCEPTED_STATUS,
    ANCHOR_NAME,
    LOOPBACK,
    REJECTED_STATUS,
    AnchorNames,
    Ports,
    anchor_config,
    country_codes,
    is_loopback,
    render,
    validation_mapping,
)

PORTS = Ports(input=18_401, service=18_402)


def _settings(**overrides: Any) -> Any:
    from serve_app.settings import Settings

    return Settings(**overrides)


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    return anchor_config(_settings(), PORTS)


def _cases(config: dict[str, Any]) -> list[dict[str, Any]]:
    return config["output"]["switch"]["cases"]


def _broker_outputs(config: dict[str, Any]) -> list[dict[str, Any]]:
    [valid] = [c for c in _cases(config) if "check" not in c]
    broker = valid["output"]["broker"]
    assert broker["pattern"] == "fan_out"  # acked only when every output acked
    return broker["outputs"]


def _output(config: dict[str, Any], kind: str) -> dict[str, Any]:
    [found] = [o for o in _broker_outputs(config) if kind in o]
    return found


def test_kafka_output_is_idempotent_franz_producer_on_the_anchor_topic(config) -> None:
    settings = _settings()
    kafka = _output(config, "kafka_franz")["kafka_franz"]
    # franz-go runs an idempotent producer with acks=all only (its default AllISRAcks);
    # the sarama `kafka` output is not used (no idempotence with > 1 request in flight).
    assert kafka["idempotent_write"] is True
    assert kafka["topic"] == ANCHOR_NAME != settings.kafka_topic
    assert kafka["seed_brokers"] == settings.kafka_bootstrap_servers.split(",")
    assert kafka["key"] == '${! json("country") }'  # keyed by country, like ours
    assert kafka["compression"] == "none"  # like ours
    assert not any("kafka" in o and "kafka_franz" not in o for o in _broker_outputs(config))


def test_amqp_output_is_persistent_mandatory_and_confirmed(config) -> None:
    settings = _settings()
    amqp = _output(config, "amqp_0_9")["amqp_0_9"]
    # the amqp_0_9 output always puts its channel in confirm mode and waits per message
    assert amqp["persistent"] is True  # delivery mode 2
    assert amqp["mandatory"] is True  # unroutable = returned = not acknowledged
    assert amqp["exchange"] == ANCHOR_NAME != settings.rabbitmq_exchange
    assert amqp["urls"] == [settings.rabbitmq_url]
    assert amqp["exchange_declare"] == {"enabled": False}  # made with its quorum queue


def test_answer_waits_for_both_brokers_and_says_202(config) -> None:
    outputs = _broker_outputs(config)
    assert {next(iter(o)) for o in outputs} == {"kafka_franz", "amqp_0_9", "sync_response"}
    [sync] = [o for o in outputs if "sync_response" in o]
    assert f'"{ACCEPTED_STATUS}"' in sync["processors"][0]["mapping"]
    http = config["input"]["http_server"]
    assert http["path"] == "/input" and http["allowed_verbs"] == ["POST"]
    assert "meta(" in http["sync_response"]["status"]


def test_bad_input_is_answered_400_and_published_nowhere(config) -> None:
    [errored] = [c for c in _cases(config) if c.get("check") == "errored()"]
    assert list(errored["output"]) == ["sync_response", "processors"]
    assert f'"{REJECTED_STATUS}"' in errored["output"]["processors"][0]["mapping"]
    assert _cases(config)[0] is errored  # checked before the publishing case


def test_arrays_are_validated_whole_then_split_one_message_per_tweet(config) -> None:
    [step] = config["pipeline"]["processors"]
    mapping, split = step["try"]  # `try`: nothing is split once validation threw
    assert "map_each" in mapping["mapping"]
    assert split == {"unarchive": {"format": "json_array"}}


def test_everything_listens_and_connects_on_loopback_only(config) -> None:
    assert config["http"]["address"] == f"{LOOPBACK}:{PORTS.service}"
    assert config["input"]["http_server"]["address"] == f"{LOOPBACK}:{PORTS.input}"
    kafka = _output(config, "kafka_franz")["kafka_franz"]
    assert all(is_loopback(b.rsplit(":", 1)[0]) for b in kafka["seed_brokers"])
    assert "@127.0.0.1:" in _output(config, "amqp_0_9")["amqp_0_9"]["urls"][0]


@pytest.mark.parametrize(
    "overrides",
    [
        {"kafka_bootstrap_servers": "10.0.0.7:9092"},
        {"kafka_bootstrap_servers": "127.0.0.1:9092,kafka.example.com:9092"},
        {"rabbitmq_host": "rabbit.example.com"},
    ],
)
def test_non_loopback_brokers_are_refused(overrides: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="loopback"):
        anchor_config(_settings(**overrides), PORTS)


def test_the_pipeline_topic_or_queue_is_refused() -> None:
    settings = _settings()
    for names in (
        AnchorNames(topic=settings.kafka_topic),
        AnchorNames(queue=settings.rabbitmq_queue),
        AnchorNames(exchange=settings.rabbitmq_exchange),
    ):
        with pytest.raises(ValueError, match="must not be the pipeline's"):
            anchor_config(settings, PORTS, names=names)


def test_yaml_round_trips(config) -> None:
    assert yaml.safe_load(render(config)) == config


def test_wrapper_imports_only_the_needed_components() -> None:
    main_go = build.main_go()
    assert "service.RunCLI(context.Background())" in main_go
    imported = {line.split('"')[1] for line in main_go.splitlines() if "/components/" in line}
    assert imported == {f"{build.MODULE}/public/components/{c}" for c in build.COMPONENTS}
    assert set(build.COMPONENTS) == {"io", "pure", "kafka", "amqp09"}
    assert build.VERSION in build.binary().name  # a version bump builds anew


def test_arrays_get_enough_in_flight_for_one_publish_wave() -> None:
    from loadtest.benthos.run import default_max_in_flight

    assert default_max_in_flight(64, 1) == 64
    assert default_max_in_flight(64, 100) == 100


# --- with the built binary (skipped until it exists) -------------------------------------
GOOD = {"id": "t-1", "description": "Llueve", "country": "gt", "weather": "LLUVIOSO"}
BAD_INPUTS = [
    "not json",
    "[]",
    json.dumps({**GOOD, "country": "XX"}),
    json.dumps({**GOOD, "weather": "Nieve"}),
    json.dumps({**GOOD, "description": ""}),
    json.dumps({**GOOD, "id": "has space"}),
    json.dumps({**GOOD, "extra": 1}),
    json.dumps([GOOD, {**GOOD, "country": "ıo"}]),  # one bad tweet rejects the array
]


@pytest.fixture(scope="module")
def benthos() -> str:
    if not build.binary().exists():
        pytest.skip("Benthos not built (python -m loadtest.benthos --build-only)")
    return str(build.binary())


def _blobl(benthos: str, mapping: str, lines: list[str], tmp_path) -> list[str]:
    path = tmp_path / "mapping.blobl"
    path.write_text(mapping)
    result = subprocess.run(
        [benthos, "blobl", "-f", str(path)],
        input="\n".join(lines) + "\n",
        capture_output=True,
        text=True,
        timeout=30,
    )
    return (result.stdout + result.stderr).splitlines()


def test_benthos_lints_the_config(benthos: str, config, tmp_path) -> None:
    path = tmp_path / "anchor.yaml"
    path.write_text(render(config))
    result = subprocess.run(
        [benthos, "lint", str(path)], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_mapping_normalises_good_tweets_and_rejects_bad_ones(benthos: str, tmp_path) -> None:
    settings = _settings()
    mapping = validation_mapping(settings.weathers, 3, country_codes())
    array = json.dumps([GOOD, {k: v for k, v in GOOD.items() if k != "id"}])
    too_many = json.dumps([GOOD] * 4)
    out = _blobl(benthos, mapping, [json.dumps(GOOD), array, too_many, *BAD_INPUTS], tmp_path)
    single, pair = json.loads(out[0]), json.loads(out[1])
    assert [{k: t[k] for k in ("id", "country", "weather")} for t in single] == [
        {"id": "t-1", "country": "GT", "weather": "Lluvioso"}
    ]
    assert len(pair) == 2 and pair[1]["id"] and "accepted_at" in pair[1]
    assert len(out) == 3 + len(BAD_INPUTS)
    assert all(line.startswith("failed to execute map") for line in out[2:]), out[2:]
