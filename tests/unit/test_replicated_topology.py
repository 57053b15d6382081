"""The replicated topology's configuration as written (no server started): what the
application is told, and what each member's config promises."""

from __future__ import annotations

from devstack.config import stack_config, topology_settings
from devstack.servers import SINGLE, servers_of
from devstack.servers.replicated import (
    KafkaBroker,
    RabbitNode,
    RedisSentinel,
    replicated_servers,
)
from serve_app.settings import Settings


def test_the_single_topology_changes_no_setting() -> None:
    assert topology_settings("single") == {}


def test_the_application_learns_every_member() -> None:
    env = topology_settings("replicated")
    settings = Settings(**{k.lower(): v for k, v in env.items()})  # type: ignore[arg-type]
    assert settings.kafka_bootstrap_servers.count(",") == 2
    assert (settings.kafka_replication_factor, settings.kafka_min_insync_replicas) == (3, 2)
    assert len(settings.rabbitmq_urls) == 3
    assert len(settings.sentinels("redis")) == len(settings.sentinels("valkey")) == 3
    assert (settings.store_wait_local, settings.store_wait_replicas) == (1, 1)


def test_every_member_is_a_server_of_its_own() -> None:
    names = list(replicated_servers())
    assert len(names) == len(set(names)) == 3 + 3 + 2 * (2 + 3) + 1  # + the shared epmd
    assert names[-1] == "epmd"  # stopped after the RabbitMQ nodes
    assert set(servers_of("replicated")) - set(names) == {"ray"}
    assert servers_of("single") is SINGLE
    ports = [p for factory in replicated_servers().values() for p in factory().ports()]
    assert len(ports) == len(set(ports))


def test_kafka_brokers_replicate_and_never_elect_an_unclean_leader() -> None:
    props = dict(
        line.split("=", 1) for line in KafkaBroker(2).properties().splitlines() if "=" in line
    )
    assert props["node.id"] == "2"
    assert props["controller.quorum.voters"].count("@") == 3
    assert props["default.replication.factor"] == "3"
    assert props["min.insync.replicas"] == "2"
    assert props["unclean.leader.election.enable"] == "false"
    assert props["offsets.topic.replication.factor"] == "3"


def test_rabbitmq_nodes_cluster_from_one_list() -> None:
    conf = RabbitNode(3).conf()
    assert "cluster_formation.peer_discovery_backend = classic_config" in conf
    for i in (1, 2, 3):
        assert f"cluster_formation.classic_config.nodes.{i} = weather-{i}@localhost" in conf
    assert conf.count("listeners.tcp.1 =") == 1


def test_sentinels_agree_two_of_three(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    sentinel = RedisSentinel(1)
    monkeypatch.setattr(sentinel, "dir", tmp_path)
    sentinel.prepare()
    conf = (tmp_path / "sentinel.conf").read_text()
    primary = stack_config.members("redis")[0]  # 6379 unless DEVSTACK_REDIS_PORTS says else
    assert f"sentinel monitor weather-redis 127.0.0.1 {primary} 2" in conf
    assert sentinel.command()[-1] == "--sentinel"
