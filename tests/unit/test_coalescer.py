"""The Gateway's group commit (serve_app.ingest.core.Coalescer), with a plain fake publish."""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Sequence

import pytest

from serve_app.errors import PublishFailed
from serve_app.ingest.core import Coalescer, accept
from serve_app.model.schema import TweetIn


def tweets(n: int, prefix: str) -> list:
    raw = [TweetIn(description=f"d{i}", country="GT", weather="Lluvioso") for i in range(n)]
    return accept(raw, prefix=prefix)


class GatedPublish:
    """Records every write; each write waits until the test opens the gate."""

    def __init__(self, gated: bool = True) -> None:
        self.writes: list[list[str]] = []
        self.gate = asyncio.Event()
        if not gated:
            self.gate.set()
        self.fail_next: BaseException | None = None
        self.in_flight = 0
        self.most_in_flight = 0

    async def __call__(self, batch: Sequence) -> None:
        self.writes.append([t.id for t in batch])
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await self.gate.wait()
            if self.fail_next is not None:
                exc, self.fail_next = self.fail_next, None
                raise exc
        finally:
            self.in_flight -= 1


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_a_lone_request_is_written_at_once() -> None:
    publish = GatedPublish(gated=False)
    coalescer = Coalescer(publish, max_tweets=1000)
    await asyncio.wait_for(coalescer.submit(tweets(1, "a")), 1)
    assert publish.writes == [["a-0"]]


async def test_requests_of_one_loop_turn_share_a_write() -> None:
    publish = GatedPublish(gated=False)
    coalescer = Coalescer(publish, max_tweets=1000)
    await asyncio.wait_for(asyncio.gather(*(coalescer.submit(tweets(1, p)) for p in "ab")), 1)
    assert [sorted(w) for w in publish.writes] == [["a-0", "b-0"]]


async def test_arrivals_during_a_write_share_the_next_one() -> None:
    publish = GatedPublish()
    coalescer = Coalescer(publish, max_tweets=1000)
    first = asyncio.create_task(coalescer.submit(tweets(1, "a")))
    await settle()
    waiting = [asyncio.create_task(coalescer.submit(tweets(2, p))) for p in "bcd"]
    await settle()
    assert publish.writes == [["a-0"]]  # one write in flight; the others wait for it
    publish.gate.set()
    await asyncio.wait_for(asyncio.gather(first, *waiting), 1)
    assert publish.writes == [["a-0"], ["b-0", "b-1", "c-0", "c-1", "d-0", "d-1"]]


async def test_a_write_holds_whole_requests_up_to_max_tweets() -> None:
    publish = GatedPublish()
    coalescer = Coalescer(publish, max_tweets=4)
    first = asyncio.create_task(coalescer.submit(tweets(1, "a")))
    await settle()
    rest = [asyncio.create_task(coalescer.submit(tweets(n, p))) for n, p in ((3, "b"), (2, "c"))]
    big = asyncio.create_task(coalescer.submit(tweets(5, "e")))  # larger than max: alone
    await settle()
    publish.gate.set()
    await asyncio.wait_for(asyncio.gather(first, *rest, big), 1)
    assert [len(w) for w in publish.writes] == [1, 3, 2, 5]


async def test_a_failed_write_fails_only_its_own_requests() -> None:
    publish = GatedPublish()
    coalescer = Coalescer(publish, max_tweets=1000)
    first = asyncio.create_task(coalescer.submit(tweets(1, "a")))
    await settle()
    second = [asyncio.create_task(coalescer.submit(tweets(1, p))) for p in "bc"]
    await settle()
    publish.fail_next = PublishFailed({"kafka": "down"})
    publish.gate.set()
    with pytest.raises(PublishFailed):
        await asyncio.wait_for(first, 1)
    third = asyncio.create_task(coalescer.submit(tweets(1, "d")))
    await asyncio.wait_for(asyncio.gather(*second, third), 1)
    assert publish.writes == [["a-0"], ["b-0", "c-0"], ["d-0"]]


async def test_a_request_given_up_before_its_write_is_left_out() -> None:
    publish = GatedPublish()
    coalescer = Coalescer(publish, max_tweets=1000)
    first = asyncio.create_task(coalescer.submit(tweets(1, "a")))
    await settle()
    abandoned = asyncio.create_task(coalescer.submit(tweets(1, "b")))
    kept = asyncio.create_task(coalescer.submit(tweets(1, "c")))
    await settle()
    abandoned.cancel()
    publish.gate.set()
    await asyncio.wait_for(asyncio.gather(first, kept), 1)
    assert abandoned.cancelled()
    assert publish.writes == [["a-0"], ["c-0"]]


async def test_a_deadline_inside_a_write_does_not_disturb_the_others() -> None:
    publish = GatedPublish()
    coalescer = Coalescer(publish, max_tweets=1000)
    impatient = asyncio.create_task(asyncio.wait_for(coalescer.submit(tweets(1, "a")), 0.01))
    patient = asyncio.create_task(coalescer.submit(tweets(1, "b")))
    with pytest.raises(TimeoutError):
        await impatient  # gave up while its tweets were being written with b's
    publish.gate.set()
    await asyncio.wait_for(patient, 1)
    assert [sorted(w) for w in publish.writes] == [["a-0", "b-0"]]


async def test_max_in_flight_bounds_concurrent_writes() -> None:
    publish = GatedPublish()
    coalescer = Coalescer(publish, max_tweets=1000, max_in_flight=2)
    calls = []
    for p in "abcd":
        calls.append(asyncio.create_task(coalescer.submit(tweets(1, p))))
        await settle()
    assert publish.writes == [["a-0"], ["b-0"]]
    publish.gate.set()
    await asyncio.wait_for(asyncio.gather(*calls), 1)
    assert publish.most_in_flight == 2
    assert publish.writes[2:] == [["c-0", "d-0"]]


async def trickle(coalescer: Coalescer, prefixes: str, turns_apart: int) -> list[asyncio.Task]:
    """Requests submitted ``turns_apart`` loop turns after one another (a busy loop)."""
    calls = []
    for p in prefixes:
        calls.append(asyncio.create_task(coalescer.submit(tweets(1, p))))
        for _ in range(turns_apart):
            await asyncio.sleep(0)
    return calls


async def test_linger_gathers_requests_while_the_loop_keeps_bringing_them() -> None:
    publish = GatedPublish(gated=False)
    coalescer = Coalescer(publish, max_tweets=1000, linger_s=5.0, quiet_turns=3)
    calls = await trickle(coalescer, "abcdef", turns_apart=2)
    await asyncio.wait_for(asyncio.gather(*calls), 1)
    assert [sorted(w) for w in publish.writes] == [["a-0", "b-0", "c-0", "d-0", "e-0", "f-0"]]


async def test_linger_ends_when_the_loop_has_nothing_else_to_read() -> None:
    """Not the whole ``linger_s``: a request alone goes after a few idle turns, and one that
    comes after the loop went quiet is the next write's."""
    publish = GatedPublish(gated=False)
    coalescer = Coalescer(publish, max_tweets=1000, linger_s=5.0, quiet_turns=3)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await asyncio.wait_for(coalescer.submit(tweets(1, "a")), 1)
    assert loop.time() - started < 0.5
    calls = await trickle(coalescer, "bc", turns_apart=6)
    await asyncio.wait_for(asyncio.gather(*calls), 1)
    assert publish.writes == [["a-0"], ["b-0"], ["c-0"]]


async def test_linger_never_outlasts_linger_s_or_max_tweets() -> None:
    publish = GatedPublish(gated=False)
    coalescer = Coalescer(publish, max_tweets=1000, linger_s=0.02, quiet_turns=3)
    calls: list[asyncio.Task] = []

    async def busy() -> None:  # a request every turn until the first write went
        for i in range(100_000):
            if publish.writes:
                return
            calls.append(asyncio.create_task(coalescer.submit(tweets(1, f"r{i}."))))
            await asyncio.sleep(0)

    await asyncio.wait_for(busy(), 2)
    assert publish.writes and len(publish.writes[0]) > 1  # it went while requests kept coming
    await asyncio.wait_for(asyncio.gather(*calls), 2)
    capped = GatedPublish(gated=False)
    full = Coalescer(capped, max_tweets=4, linger_s=5.0, quiet_turns=50)
    calls = await trickle(full, "abcdefgh", turns_apart=1)
    await asyncio.wait_for(asyncio.gather(*calls), 1)
    assert [len(w) for w in capped.writes] == [4, 4]  # it went once 4 were waiting


async def test_configure_applies_to_the_next_write_and_refuses_nonsense() -> None:
    publish = GatedPublish()
    coalescer = Coalescer(publish, max_tweets=1000)
    coalescer.configure(max_tweets=1000, max_in_flight=3, linger_s=0.0)
    calls = []
    for p in "abcd":
        calls.append(asyncio.create_task(coalescer.submit(tweets(1, p))))
        await settle()
    assert publish.writes == [["a-0"], ["b-0"], ["c-0"]]
    publish.gate.set()
    await asyncio.wait_for(asyncio.gather(*calls), 1)
    for bad in ((0, 1, 0.0), (10, 0, 0.0), (10, 1, -1.0)):
        with pytest.raises(ValueError):
            coalescer.configure(*bad)


REQUEST = contextvars.ContextVar("request", default=None)
"""Stands in for what a framework keeps per request (Serve: its request context, under
which the calls a request makes are cancelled when its client disconnects)."""


async def test_a_write_does_not_run_in_the_context_of_the_request_that_started_it() -> None:
    """Seen with Serve: the write started by a WebSocket whose client then left was
    cancelled with it, and a frame of another connection in the same write got a 503 after
    both brokers had confirmed it."""
    seen: list[object] = []

    async def publish(batch: Sequence) -> None:
        seen.append(REQUEST.get())

    async def request(name: str, prefix: str) -> None:
        REQUEST.set(name)
        await Coalescer(publish, max_tweets=1000).submit(tweets(1, prefix))

    await asyncio.wait_for(asyncio.gather(request("first", "a"), request("second", "b")), 1)
    assert seen == [None, None]
