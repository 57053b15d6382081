"""The consumer_actor_kill round's choices (loadtest.chaos.scaleout), on plain dicts: which
actor it kills per store, and when a killed actor counts as back."""

from __future__ import annotations

from loadtest.chaos.runner import ROUNDS
from loadtest.chaos.scaleout import back, victims

REPORT = {
    "actors": {
        "kafka-consumer-0": {"pid": 10, "connected": True},
        "kafka-consumer-1": {"pid": 11, "connected": True},
        "rabbit-consumer-0": {"pid": 20, "connected": True},
        "rabbit-consumer-1": {"pid": 21, "connected": True},
    }
}


def test_the_lease_holder_of_each_store_is_killed() -> None:
    holders = {"redis": "kafka-consumer-1", "valkey": "rabbit-consumer-0"}
    assert victims(REPORT, holders) == {
        "redis": "kafka-consumer-1",
        "valkey": "rabbit-consumer-0",
    }


def test_without_a_holder_of_its_broker_the_first_actor_is_killed() -> None:
    holders = {"redis": None, "valkey": "kafka-consumer-0"}  # not a RabbitMQ actor
    assert victims(REPORT, holders) == {
        "redis": "kafka-consumer-0",
        "valkey": "rabbit-consumer-0",
    }


def test_back_means_a_new_process_that_is_connected() -> None:
    killed = {"kafka-consumer-1": 11}
    assert not back(REPORT, killed)  # the same pid: not restarted yet
    restarted = {"actors": {"kafka-consumer-1": {"pid": 12, "connected": False}}}
    assert not back(restarted, killed)
    restarted["actors"]["kafka-consumer-1"]["connected"] = True
    assert back(restarted, killed)
    assert not back({}, killed)  # the supervisor did not answer


def test_the_round_is_registered() -> None:
    assert "consumer_actor_kill" in ROUNDS
