"""A store that is still loading its data at start-up is waited for (bounded), one that
does not answer is not: the wait of ``devstack.servers.resp`` with a scripted server."""

from __future__ import annotations

import time

import pytest

from devstack.servers.base import StackError
from devstack.servers.resp import Redis


class Scripted(Redis):
    """Answers ``-LOADING`` until ``ready_after`` s, then ``+PONG``; or nothing at all."""

    start_timeout = 0.4
    loading_timeout = 2.0

    def __init__(self, ready_after: float, listening: bool = True) -> None:
        super().__init__()
        self.started = time.monotonic()
        self.ready_after = ready_after
        self.listening = listening

    def ping(self) -> bytes:
        if not self.listening:
            raise ConnectionRefusedError("nothing listens")
        if time.monotonic() - self.started < self.ready_after:
            return b"-LOADING Redis is loading the dataset in memory\r\n"
        return b"+PONG\r\n"

    def answers(self) -> bool:  # the base class also checks the pid file and the port
        try:
            return self.probe()
        except OSError:
            return False


def test_a_store_loading_its_data_past_the_start_timeout_is_waited_for() -> None:
    server = Scripted(ready_after=1.0)
    server.wait_ready()
    assert time.monotonic() - server.started >= 1.0


def test_a_store_that_does_not_answer_fails_at_the_start_timeout() -> None:
    server = Scripted(ready_after=0.0, listening=False)
    with pytest.raises(StackError, match="did not answer within"):
        server.wait_ready()
    assert time.monotonic() - server.started < 1.5


def test_loading_is_waited_for_only_up_to_the_loading_timeout() -> None:
    server = Scripted(ready_after=60.0)
    with pytest.raises(StackError, match="did not answer within 2 s"):
        server.wait_ready()
