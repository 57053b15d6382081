"""The adaptive concurrency limit (serve_app/ingest/limiter.py) under a fake clock: it
shrinks when publish latency rises over the measured minimum, grows back when latency
falls, never leaves [floor, ceiling], and refuses exactly at the limit."""

from __future__ import annotations

import asyncio

import pytest

from serve_app.ingest.limiter import GradientConfig, GradientLimiter

CONFIG = GradientConfig(initial=100, floor=10, ceiling=400, window_s=0.1, min_window_samples=5)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def busy(limiter: GradientLimiter) -> None:
    """Hold as many requests as the limit allows (the limiter is what bounds them)."""
    while limiter.try_acquire():
        pass


def windows(limiter: GradientLimiter, clock: Clock, latency_s: float, count: int) -> list[int]:
    """``count`` windows of 10 samples of ``latency_s`` each, under full use; the limit
    after each."""
    limits = []
    for _ in range(count):
        busy(limiter)
        for _ in range(10):
            clock.now += 0.011
            limiter.observe(latency_s)
        limits.append(limiter.limit)
    return limits


def test_refuses_exactly_at_the_limit_and_counts_it() -> None:
    limiter = GradientLimiter(GradientConfig(initial=3, floor=1, ceiling=3), Clock())
    assert [limiter.try_acquire() for _ in range(4)] == [True, True, True, False]
    assert limiter.refused == 1
    limiter.release()
    assert limiter.try_acquire()
    assert limiter.in_flight == 3


def test_shrinks_when_latency_rises_over_the_measured_minimum() -> None:
    clock = Clock()
    limiter = GradientLimiter(CONFIG, clock)
    windows(limiter, clock, 0.010, 3)  # the minimum: 10 ms
    before = limiter.limit
    after = windows(limiter, clock, 0.060, 5)  # 6 x the minimum, over the tolerance of 2
    assert after[0] < before
    assert after == sorted(after, reverse=True) and after[-1] < before * 0.75
    assert limiter.no_load_s == pytest.approx(0.010)


def test_each_change_of_the_limit_is_reported() -> None:
    clock, seen = Clock(), []
    limiter = GradientLimiter(CONFIG, clock, on_limit=seen.append)
    windows(limiter, clock, 0.010, 3)
    after = windows(limiter, clock, 0.060, 5)
    assert seen[-len(after) :] == after  # it fell in each window, and each fall was told


def test_latency_within_the_tolerance_does_not_shrink_it() -> None:
    clock = Clock()
    limiter = GradientLimiter(CONFIG, clock)
    windows(limiter, clock, 0.010, 3)
    before = limiter.limit
    assert min(windows(limiter, clock, 0.019, 5)) >= before


def test_grows_back_when_latency_falls() -> None:
    clock = Clock()
    limiter = GradientLimiter(CONFIG, clock)
    windows(limiter, clock, 0.010, 3)
    low = windows(limiter, clock, 0.080, 20)[-1]
    regained = windows(limiter, clock, 0.010, 20)
    assert regained[-1] > low * 1.5
    assert regained == sorted(regained)


def test_never_below_the_floor_nor_above_the_ceiling() -> None:
    clock = Clock()
    limiter = GradientLimiter(CONFIG, clock)
    windows(limiter, clock, 0.001, 2)
    assert windows(limiter, clock, 5.0, 200)[-1] == CONFIG.floor
    assert windows(limiter, clock, 0.001, 400)[-1] == CONFIG.ceiling


def test_does_not_move_while_the_load_stays_below_half_the_limit() -> None:
    """A replica at a tenth of its limit gives no evidence either way: not that more would
    be fine, and not that its latency (a slow moment of a shared machine) comes from the
    limit; the measured minimum is still learned."""
    clock = Clock()
    limiter = GradientLimiter(CONFIG, clock)
    for latency_s in (0.010, 0.500):
        for _ in range(20):
            for _ in range(10):
                clock.now += 0.011
                limiter.observe(latency_s)
    assert limiter.limit == CONFIG.initial
    assert limiter.no_load_s == pytest.approx(0.010)


def test_a_short_window_moves_nothing() -> None:
    clock = Clock()
    limiter = GradientLimiter(CONFIG, clock)
    busy(limiter)
    for _ in range(4):  # under min_window_samples, though the window is over
        clock.now += 0.2
        limiter.observe(5.0)
    assert limiter.limit == CONFIG.initial and limiter.no_load_s is None


def test_the_minimum_is_forgotten_so_a_slower_broker_is_not_held_to_its_old_speed() -> None:
    clock = Clock()
    limiter = GradientLimiter(CONFIG, clock)
    windows(limiter, clock, 0.002, 3)
    clock.now += CONFIG.reset_min_after_s
    windows(limiter, clock, 0.050, 2)
    assert limiter.no_load_s == pytest.approx(0.050)


def test_timed_observes_a_failure_too() -> None:
    clock = Clock()
    limiter = GradientLimiter(GradientConfig(initial=10, floor=1, ceiling=10,
                                             min_window_samples=1), clock)  # fmt: skip

    async def slow_failure() -> None:
        clock.now += 0.5
        raise TimeoutError

    with pytest.raises(TimeoutError):
        asyncio.run(limiter.timed(slow_failure))
    assert limiter.no_load_s == pytest.approx(0.5)


@pytest.mark.parametrize(
    "kwargs",
    [{"floor": 0}, {"initial": 5, "floor": 10}, {"initial": 500}, {"tolerance": 0.5},
     {"smoothing": 0}],
)  # fmt: skip
def test_a_config_that_cannot_work_is_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        GradientConfig(**{"initial": 100, "floor": 10, "ceiling": 400, **kwargs})
