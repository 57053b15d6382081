"""The chaos suite's pure logic, without servers: the judge, the pause measure, the iptables
rules of a partition (and their exact removal), the topic overrides of the retention round,
the hostile collisions and the 'actors run the deployed version' test."""

from __future__ import annotations

import json

import pamqp.encode
import pytest

from loadtest.chaos import disk, hostile, network, processes, retention
from loadtest.chaos.core import (
    FAULT_AT_S,
    Tally,
    failures,
    grown,
    longest_pause,
    ours,
    same_breakdowns,
)
from loadtest.chaos.runner import QUICK, ROUNDS
from serve_app.model.codec import decode_message
from serve_app.store.core import fingerprint, wins


def tally(**changes: object) -> Tally:
    base: dict[str, object] = {
        "accepted": 100,
        "redis": 100,
        "valkey": 100,
        "breakdowns_equal": True,
        "dead": {"kafka": 0, "rabbitmq": 0},
        "expected_dead": {"kafka": 0, "rabbitmq": 0},
    }
    return Tally(**{**base, **changes})  # type: ignore[arg-type]


# --- the judge ------------------------------------------------------------------------------
def test_exact_counts_pass() -> None:
    assert failures(tally()) == []


@pytest.mark.parametrize(
    ("changes", "why"),
    [
        ({"redis": 99}, "redis 99 != accepted 100"),
        ({"valkey": 101}, "valkey 101 != accepted 100"),
        ({"breakdowns_equal": False}, "breakdowns"),
        ({"dead": {"kafka": 1, "rabbitmq": 0}}, "kafka dead letters grew by 1, expected 0"),
        ({"gave_up": 2}, "2 requests gave up"),
        ({"checks": {"rules_removed": False}}, "check failed: rules_removed"),
        ({"skipped": {"redis": 3}}, "redis reported 3 skipped records"),
    ],
)
def test_any_difference_fails(changes: dict[str, object], why: str) -> None:
    assert any(why in reason for reason in failures(tally(**changes)))


def test_poison_is_expected_per_broker() -> None:
    poisoned = {"kafka": 10, "rabbitmq": 15}
    assert failures(tally(dead=poisoned, expected_dead=poisoned)) == []
    assert failures(tally(dead={"kafka": 10, "rabbitmq": 14}, expected_dead=poisoned))


def test_a_skip_is_allowed_only_when_reported_and_valkey_is_exact() -> None:
    reported = tally(redis=90, skipped={"redis": 2}, breakdowns_equal=False)
    assert failures(reported, skips_allowed=True) == []
    assert failures(reported, skips_allowed=False)
    silent = tally(redis=90, breakdowns_equal=False)
    assert failures(silent, skips_allowed=True)
    assert failures(tally(redis=90, valkey=90, skipped={"redis": 2}), skips_allowed=True)


def test_growth_and_pause() -> None:
    before = {"total": 1, "by_country": {"ES": 1}, "by_weather": {}, "by_country_weather": {}}
    after = {**before, "total": 3, "by_country": {"ES": 2, "FR": 1}}
    assert grown(before, after)["by_country"] == {"ES": 1, "FR": 1}
    samples = [(0.0, 0, 0), (1.0, 1, 0), (1.5, 1, 0), (4.0, 1, 1), (4.2, 2, 2)]
    assert longest_pause(samples) == 3.0


def test_only_the_loads_countries_count_when_other_clients_share_the_stack() -> None:
    delta = {
        "total": 5,
        "by_country": {"GT": 3, "NU": 2},
        "by_weather": {"Soleado": 5},
        "by_country_weather": {"GT:Soleado": 3, "NU:Soleado": 2},
    }
    mine = ours(delta)
    assert (mine["total"], mine["other"]) == (3, 2)
    assert mine["by_country_weather"] == {"GT:Soleado": 3}
    assert mine["by_weather"] is None
    alone = ours(
        {**delta, "total": 3, "by_country": {"GT": 3}, "by_country_weather": {"GT:Soleado": 3}}
    )
    assert alone["by_weather"] == {"Soleado": 5}
    assert same_breakdowns(mine, alone)
    assert not same_breakdowns(mine, {**alone, "by_country": {"GT": 2}})


# --- partitions -----------------------------------------------------------------------------
def test_partition_rules_are_ours_on_loopback_only() -> None:
    commands = network.partition_commands(6379)
    assert commands[0] == ["iptables", "-w", "5", "-N", network.CHAIN]
    for cmd in commands:
        assert "-F" not in cmd and "-X" not in cmd
        assert network.CHAIN in cmd
    jump = commands[-1]
    assert jump[3:] == ["-I", "INPUT", "1", "-i", "lo", "-j", network.CHAIN]
    drops = [c for c in commands if "DROP" in c]
    assert {c[c.index("-p") + 3] for c in drops} == {"6379"}
    assert {c[c.index("-p") + 2] for c in drops} == {"--dport", "--sport"}


def _dropped(rules: list[list[str]], src: str, sport: int, dst: str, dport: int) -> bool:
    """Whether one TCP packet matches a rule (``-s``/``-d``/``--sport``/``--dport`` only)."""
    packet = {"-s": src, "-d": dst, "--sport": str(sport), "--dport": str(dport)}
    for rule in rules:
        wanted = {rule[i]: rule[i + 1] for i in range(0, len(rule), 2) if rule[i] != "-p"}
        if all(packet[key] == value for key, value in wanted.items()):
            return True
    return False


def test_an_isolated_primary_keeps_the_app_and_loses_its_replica_and_sentinels() -> None:
    app, side = "127.0.0.1", network.STORE_SIDE
    primary, replica, sentinels = 21379, 21389, (21400, 21401)
    rules = network.isolation_rules(primary, [replica, *sentinels])
    assert [r for r in network.chain_commands(rules) if "DROP" in r][0][3:5] == [
        "-A",
        network.CHAIN,
    ]
    cut = [
        (side, 40001, app, primary),  # the replica syncing, a Sentinel pinging
        (app, primary, side, 40001),  # the primary's answers
        (app, 40002, app, replica),  # the consumer finding the promoted replica
        (app, 40002, app, sentinels[0]),  # ... or asking a Sentinel
        (app, sentinels[1], app, 40002),
    ]
    kept = [
        (app, 40003, app, primary),  # the consumer still writes to the old primary
        (app, primary, app, 40003),
        (side, 40004, app, sentinels[0]),  # Sentinels reach each other ...
        (side, 40004, app, replica),  # ... and the replica they promote
        (app, replica, side, 40004),
        (app, 40005, app, 9092),  # Kafka
    ]
    assert all(_dropped(rules, *packet) for packet in cut)
    assert not any(_dropped(rules, *packet) for packet in kept)


def test_removal_is_by_exact_spec_of_our_chain_only() -> None:
    listing = (
        f"-N {network.CHAIN}\n"
        f"-A {network.CHAIN} -p tcp -m tcp --dport 9092 -j DROP\n"
        f"-A {network.CHAIN} -p tcp -m tcp --sport 9092 -j DROP\n"
        "-A KUBE-FIREWALL -j DROP\n"
    )
    assert network.rule_deletions(listing) == [
        [
            "iptables",
            "-w",
            "5",
            "-D",
            network.CHAIN,
            "-p",
            "tcp",
            "-m",
            "tcp",
            "--dport",
            "9092",
            "-j",
            "DROP",
        ],  # fmt: skip
        [
            "iptables",
            "-w",
            "5",
            "-D",
            network.CHAIN,
            "-p",
            "tcp",
            "-m",
            "tcp",
            "--sport",
            "9092",
            "-j",
            "DROP",
        ],  # fmt: skip
    ]


def test_every_server_has_its_port() -> None:
    assert network.server_port("kafka") == 9092
    assert {network.server_port(n) for n in ("rabbitmq", "redis", "valkey")} == {5672, 6379, 6380}


# --- retention ------------------------------------------------------------------------------
def test_only_the_topics_own_overrides_are_kept_and_restored() -> None:
    entries = [
        ("cleanup.policy", "delete", False, 5, False, []),
        ("retention.ms", "86400000", False, 5, False, []),
        ("max.message.bytes", "2000000", False, 1, False, []),
        ("retention.bytes", "1073741824", False, 4, False, []),
    ]
    current = retention.overrides(entries)
    assert current == {"max.message.bytes": "2000000"}
    short = retention.shortened(current)
    assert short["max.message.bytes"] == "2000000"
    assert int(short["retention.ms"]) == retention.RETENTION_MS
    assert retention.STALL_S < retention.RETENTION_MS / 1000 < retention.DOWN_S


def test_the_retention_round_leaves_ingest_as_deployed_and_refuses_from_the_broker() -> None:
    """Admission reads the shortened retention from Kafka: no ingest variant is deployed,
    and the refusal comes at the configured share of what the broker now keeps."""
    assert not hasattr(retention, "stalled_ingest_config")
    ratio = retention.settings.admission_broker_limit_ratio
    assert retention.RETENTION_MS / 1000 * ratio == retention.STALL_S


# --- hostile messages -----------------------------------------------------------------------
VICTIM = {"id": "v-1", "description": "hace sol", "country": "ES", "weather": "sunny"}
KEY = b"a key of the consumers, 32 bytes"


@pytest.mark.parametrize("smaller", [True, False])
def test_a_collision_wins_or_loses_as_asked_without_moving_breakdowns(smaller: bool) -> None:
    collider = hostile.colliding(VICTIM, smaller, KEY)
    assert (collider["id"], collider["country"], collider["weather"]) == ("v-1", "ES", "sunny")
    fp = fingerprint(KEY, collider["description"], "ES", "sunny")
    assert wins(fp, fingerprint(KEY, "hace sol", "ES", "sunny")) is smaller


def test_every_hostile_body_is_exactly_one_poison_or_a_valid_collision() -> None:
    victims = [VICTIM, {**VICTIM, "id": "v-2"}]
    bodies = hostile.hostile_bodies(victims, KEY)
    for name, body in bodies.items():
        decoded = decode_message(body)
        if name.startswith("collision"):
            assert len(decoded.tweets) == 1 and not decoded.poison, name
        else:
            assert len(decoded.poison) == 1 and not decoded.tweets, name
            assert decoded.poison[0].reason, name


def test_hostile_amqp_properties_are_at_their_limits() -> None:
    message = hostile.amqp_message(b"x")
    raw = message.properties
    assert len(pamqp.encode.short_string(raw.message_id or "")) == 1 + 255
    encoded = pamqp.encode.field_table(message.headers)
    assert b"\xff\xfe\xc3\x28" in encoded
    with pytest.raises(UnicodeDecodeError):
        b"\xff\xfe\xc3\x28".decode()
    assert json.dumps(hostile.kafka_headers()[0][0])


# --- consumers redeployed -------------------------------------------------------------------
def test_actors_run_only_when_every_one_reports_the_version() -> None:
    running = {"running": True, "config_version": "v2"}
    assert processes.actors_run({"actors": {"a": running, "b": running}}, "v2")
    old = {"running": True, "config_version": "v1"}
    assert not processes.actors_run({"actors": {"a": running, "b": old}}, "v2")
    gone = {"running": False, "unreachable": True}
    assert not processes.actors_run({"actors": {"a": running, "b": gone}}, "v2")
    assert not processes.actors_run({"actors": {}}, "v2")


def test_rounds_and_quick_subset() -> None:
    assert set(QUICK) <= set(ROUNDS)
    for name in ("kafka_partition", "rabbitmq_partition", "redis_partition", "valkey_partition",
                 "rabbitmq_disk_full", "kafka_disk_full", "redis_outage_retention",
                 "hostile_messages", "kafka_outage_poison", "consumers_setting",
                 "dead_letter_sink_outage"):  # fmt: skip
        assert name in ROUNDS


def test_the_disk_round_sizes_its_tmpfs_to_the_data_plus_headroom(tmp_path) -> None:
    """A fixed size left RabbitMQ under its disk limit before the fault once its queues held
    122 MB: the alarm could never clear. The data's size plus the headroom always leaves more
    than the 50 MB limit free until the round fills it."""
    (tmp_path / "quorum").mkdir()
    (tmp_path / "quorum" / "segment").write_bytes(b"\0" * (3 * 2**20))
    (tmp_path / "schema.DAT").write_bytes(b"\0" * 2**20)
    (tmp_path / "link").symlink_to(tmp_path / "schema.DAT")
    small = disk.SmallDisk("rabbitmq", tmp_path, headroom_mb=disk.RABBITMQ.headroom_mb)
    assert small.tmpfs_mb() == 4 + disk.RABBITMQ.headroom_mb
    assert disk.LEAVE_FREE_MB < 50 < disk.RABBITMQ.headroom_mb  # RabbitMQ's limit in between


def test_each_broker_has_its_own_tmpfs_and_side_directories() -> None:
    """A killed run is found again by exact paths; two brokers must never share one."""
    paths = [(small.data, small.stage, small.new, small.old, small.filler) for small in disk.DISKS]
    flat = [path for group in paths for path in group]
    assert len(set(flat)) == len(flat)
    assert disk.KAFKA.new == disk.KAFKA.data.with_name("data.chaos-new")
    assert disk.KAFKA.filler.parent == disk.KAFKA.data  # on the tmpfs, never beside it
    assert str(disk.KAFKA.stage).startswith("/tmp/weather-chaos-")


def test_the_filler_refuses_to_write_outside_the_rounds_tmpfs(tmp_path) -> None:
    """Filling is only ever done on the round's own tmpfs, never on a host disk."""
    with pytest.raises(AssertionError, match="not on the round's tmpfs"):
        disk.SmallDisk("kafka", tmp_path, headroom_mb=1).fill(0)
    assert not (tmp_path / "chaos-filler").exists()


def test_the_long_retention_round_stops_sending_well_before_admission_refuses() -> None:
    """Requests refused there are retried for 120 s and give up (Redis stays down for
    minutes): the load must end with half the stall limit to spare after Redis stops."""
    spec = ROUNDS["redis_outage_past_retention_check"]
    after_stop_s = spec.load_s - FAULT_AT_S
    assert 0 < after_stop_s <= retention.STALL_S / 2
