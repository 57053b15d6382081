"""DurableWait: a store write returns only once WAITAOF (or WAIT on an older server) reached
the count the settings ask for; short of it the write failed (plain fake connection)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from redis.exceptions import ResponseError

from serve_app.settings import Settings
from serve_app.store.client import WAIT_STEP_MS, DurableWait, NotDurable
from serve_app.store.core import KEYS


class FakeConnection:
    """Answers WAITAOF/WAIT with scripted replies and records every command in order."""

    def __init__(self, waitaof: Any = (1, 1), wait: int = 1, short_first: int = 0) -> None:
        self.waitaof = waitaof
        self.wait = wait
        self.short_first = short_first  # this many WAITAOF replies reach nothing first
        self.commands: list[tuple[Any, ...]] = []

    async def incr(self, key: str) -> int:
        self.commands.append(("INCR", key))
        return len(self.commands)

    async def execute_command(self, *args: Any) -> Any:
        self.commands.append(args)
        if args[0] == "WAITAOF":
            if isinstance(self.waitaof, Exception):
                raise self.waitaof
            if self.short_first:
                self.short_first -= 1
                return [0, 0]
            return list(self.waitaof)
        return self.wait


def run(wait: DurableWait, connection: FakeConnection) -> None:
    asyncio.run(wait.wait(connection))


def test_waitaof_after_a_write_of_its_own() -> None:
    connection = FakeConnection(waitaof=(1, 1))
    run(DurableWait(1, 1, 500), connection)
    assert connection.commands == [("INCR", KEYS.durable_mark), ("WAITAOF", 1, 1, WAIT_STEP_MS)]


def test_asked_again_until_reached_within_the_timeout() -> None:
    connection = FakeConnection(waitaof=(1, 1), short_first=3)
    run(DurableWait(1, 1, 500), connection)
    assert [c[0] for c in connection.commands] == ["INCR", *["WAITAOF"] * 4]


def test_asked_no_longer_than_the_timeout() -> None:
    connection = FakeConnection(waitaof=(1, 1), short_first=1000)
    with pytest.raises(NotDurable):
        run(DurableWait(1, 1, 10 * WAIT_STEP_MS), connection)
    assert len(connection.commands) == 1 + 10


class SlowConnection(FakeConnection):
    """A server whose short WAITAOFs each take 20 ms (a primary that wakes up rarely)."""

    async def execute_command(self, *args: Any) -> Any:
        await asyncio.sleep(0.02)
        return await super().execute_command(*args)


def test_slow_steps_stop_at_the_timeout_not_at_the_count() -> None:
    connection = SlowConnection(waitaof=(1, 1), short_first=1000)
    with pytest.raises(NotDurable):
        run(DurableWait(1, 1, 100), connection)
    assert len(connection.commands) <= 1 + 7  # 100 ms of 20 ms steps, not 100 steps


def test_a_replica_short_of_the_count_fails_the_write() -> None:
    with pytest.raises(NotDurable, match="0 of 1 replicas"):
        run(DurableWait(1, 1, 500), FakeConnection(waitaof=(1, 0)))


def test_a_primary_disk_short_of_the_count_fails_the_write() -> None:
    with pytest.raises(NotDurable, match="0 of 1 primary AOF"):
        run(DurableWait(1, 0, 500), FakeConnection(waitaof=(0, 0)))


def test_nothing_asked_sends_nothing() -> None:
    connection = FakeConnection()
    run(DurableWait(0, 0, 500), connection)
    assert connection.commands == []


def test_a_server_without_waitaof_gets_wait_from_then_on() -> None:
    wait = DurableWait(1, 1, 500)
    connection = FakeConnection(waitaof=ResponseError("unknown command 'WAITAOF'"), wait=1)
    run(wait, connection)
    run(wait, connection)
    sent = [c[0] for c in connection.commands]
    assert sent == ["INCR", "WAITAOF", "WAIT", "INCR", "WAIT"]
    assert wait.waitaof is False


def test_wait_short_of_the_replicas_fails_the_write() -> None:
    connection = FakeConnection(waitaof=ResponseError("ERR unknown command 'WAITAOF'"), wait=0)
    with pytest.raises(NotDurable, match="0 of 2 replicas"):
        run(DurableWait(1, 2, 500), connection)


def test_other_errors_of_waitaof_are_not_hidden() -> None:
    refused = ResponseError("WAITAOF cannot be used when numlocal is set but appendonly is off")
    with pytest.raises(ResponseError, match="appendonly"):
        run(DurableWait(1, 0, 500), FakeConnection(waitaof=refused))


def test_not_durable_survives_pickling() -> None:
    import pickle

    error = pickle.loads(pickle.dumps(NotDurable((1, 1), (1, 0))))
    assert str(error).endswith("0 of 1 replicas")


def test_settings_default_to_the_primary_disk_only() -> None:
    wait = DurableWait.of(Settings())
    assert wait.wanted == (1, 0)


def test_member_lists_of_the_settings() -> None:
    settings = Settings(
        rabbitmq_addresses="127.0.0.1:5672, 127.0.0.1:5682",
        redis_sentinels="127.0.0.1:26379,127.0.0.1:26380",
    )
    assert [u.split("@")[1] for u in settings.rabbitmq_urls] == [
        "127.0.0.1:5672/%2F",
        "127.0.0.1:5682/%2F",
    ]
    assert settings.sentinels("redis") == [("127.0.0.1", 26379), ("127.0.0.1", 26380)]
    assert settings.sentinels("valkey") == []
    assert Settings().rabbitmq_urls == [Settings().rabbitmq_url]


def test_a_malformed_member_is_named() -> None:
    with pytest.raises(ValueError, match="'127.0.0.1' is not host:port"):
        Settings(rabbitmq_addresses="127.0.0.1")
