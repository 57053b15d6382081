"""The client's retry rule (weather_client.retry): pure policy, driven by a fake clock."""

from __future__ import annotations

import itertools

import pytest
from weather_client.retry import Deadline, RetryPolicy, parse_retry_after


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_the_jitter_window_doubles_from_base_up_to_the_cap() -> None:
    policy = RetryPolicy(base_s=0.25, cap_s=2.0)
    assert [policy.window(n) for n in range(1, 7)] == [0.25, 0.5, 1.0, 2.0, 2.0, 2.0]
    assert policy.window(10_000) == 2.0  # no overflow however long it fails


@pytest.mark.parametrize("failures", [1, 2, 3, 8, 50])
def test_full_jitter_stays_within_zero_and_the_window(failures: int) -> None:
    policy = RetryPolicy(base_s=0.5, cap_s=4.0)
    window = policy.window(failures)
    assert policy.delay(failures, None, lambda: 0.0) == 0.0
    assert policy.delay(failures, None, lambda: 0.999999) == pytest.approx(window, rel=1e-5)
    draws = itertools.cycle([0.1, 0.5, 0.9])
    delays = [policy.delay(failures, None, lambda: next(draws)) for _ in range(3)]
    assert delays == pytest.approx([0.1 * window, 0.5 * window, 0.9 * window])


def test_retry_after_is_a_floor_the_jitter_adds_to() -> None:
    policy = RetryPolicy(base_s=0.25, cap_s=8.0)
    assert policy.delay(1, 2.0, lambda: 0.0) == 2.0
    assert policy.delay(3, 2.0, lambda: 0.5) == 2.0 + 0.5 * 1.0


def test_an_absurd_retry_after_is_capped() -> None:
    policy = RetryPolicy(max_retry_after_s=30.0)
    assert policy.delay(1, 86_400.0, lambda: 0.0) == 30.0
    assert policy.delay(1, -5.0, lambda: 0.0) == 0.0


def test_a_deadline_counts_down_on_the_given_clock() -> None:
    clock = FakeClock()
    deadline = RetryPolicy(deadline_s=10.0).deadline(clock)
    assert deadline.remaining() == 10.0 and not deadline.expired()
    assert deadline.allows_wait(9.9) and not deadline.allows_wait(10.0)
    clock.now += 7.5
    assert deadline.remaining() == 2.5 and not deadline.allows_wait(3.0)
    clock.now += 2.5
    assert deadline.expired() and deadline.remaining() == 0.0
    clock.now += 100
    assert deadline.remaining() == 0.0


def test_deadline_is_plain_data() -> None:
    clock = FakeClock(5.0)
    assert Deadline(8.0, clock).remaining() == 3.0


@pytest.mark.parametrize(
    ("header", "seconds"),
    [("2", 2.0), (" 1.5 ", 1.5), ("0", 0.0), (None, None), ("soon", None), ("-1", None),
     ("nan", None), ("Wed, 21 Oct 2015 07:28:00 GMT", None)],
)  # fmt: skip
def test_retry_after_header_parsing(header: str | None, seconds: float | None) -> None:
    assert parse_retry_after(header) == seconds


@pytest.mark.parametrize(
    "options",
    [{"base_s": 0}, {"base_s": 2, "cap_s": 1}, {"deadline_s": 0}, {"max_retry_after_s": -1}],
)
def test_nonsense_policies_are_refused(options: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        RetryPolicy(**options)
