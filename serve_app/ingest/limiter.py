"""An adaptive concurrency limit for a Gateway replica, driven by publish latency.

Why: a replica that takes every request it is offered queues them on its own event loop,
so at twice its capacity every request waits seconds and most of them time out. The
limit caps the requests a replica works on at once; one more is refused at once with a
503 (before its body is read), which costs a small fraction of an accepted request.

Which algorithm: the gradient of Netflix's concurrency-limits (``GradientLimit``), not
AIMD. AIMD only learns of overload from failures (timeouts, 503s), so it lets latency
grow to the publish deadline before it backs off, and then halves blindly. The gradient
reacts to latency itself: ``no_load / measured`` (the measured minimum over the
window's mean) shrinks the limit as soon as the publish latency rises above what the
brokers answer when nothing queues, and lets it grow by ``sqrt(limit)`` (the queue
allowed on top) while latency stays near that minimum. ``tolerance`` is how much slower
than the minimum still counts as "no queue" (2.0: up to twice the minimum).

Ray-free and clock-injected: the Gateway feeds it publish latencies; the unit tests a
fake clock.
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")
Clock = Callable[[], float]


@dataclass(frozen=True)
class GradientConfig:
    """How the limit moves; see the module's docstring for the algorithm."""

    initial: int = 256
    floor: int = 16
    """The limit never falls below this: enough in flight to fill a group commit."""
    ceiling: int = 2048
    tolerance: float = 2.0
    """Latency up to ``tolerance`` x the measured minimum does not shrink the limit."""
    smoothing: float = 0.2
    """Weight of each window's new limit (the rest is the old one): damps the steps."""
    window_s: float = 0.1
    """Latencies are averaged per window of this length; the limit moves once per window."""
    min_window_samples: int = 5
    """A window with fewer samples is merged into the next (too few to mean anything)."""
    reset_min_after_s: float = 30.0
    """The measured minimum is forgotten this often, so a broker that became slower for
    good is not held to its old speed (the limit would otherwise sit at the floor)."""

    def __post_init__(self) -> None:
        if not 1 <= self.floor <= self.initial <= self.ceiling:
            raise ValueError(f"need 1 <= floor <= initial <= ceiling, got {self}")
        if self.tolerance < 1 or not 0 < self.smoothing <= 1 or self.window_s <= 0:
            raise ValueError(f"need tolerance >= 1, 0 < smoothing <= 1, window_s > 0: {self}")


class GradientLimiter:
    """In-flight requests under an adaptive limit: :meth:`try_acquire` / :meth:`release`
    around a request, :meth:`observe` for every publish latency (or :meth:`timed`)."""

    def __init__(
        self,
        config: GradientConfig,
        clock: Clock = time.monotonic,
        on_limit: Callable[[int], None] | None = None,
    ) -> None:
        """``on_limit(limit)`` is called whenever the whole-number limit changes."""
        self.config = config
        self._clock = clock
        self._on_limit = on_limit
        self._limit = float(config.initial)
        self.in_flight = 0
        self.refused = 0
        self._no_load_s: float | None = None
        self._no_load_at = clock()
        self._window_start = clock()
        self._sum_s = 0.0
        self._samples = 0
        self._peak_in_flight = 0

    @property
    def limit(self) -> int:
        return int(self._limit)

    @property
    def no_load_s(self) -> float | None:
        """The measured minimum of the window means (None before the first window)."""
        return self._no_load_s

    def try_acquire(self) -> bool:
        """Take a slot if one is free; False (count it refused) at the limit."""
        if self.in_flight >= int(self._limit):
            self.refused += 1
            return False
        self.in_flight += 1
        self._peak_in_flight = max(self._peak_in_flight, self.in_flight)
        return True

    def release(self) -> None:
        self.in_flight -= 1

    def observe(self, latency_s: float) -> None:
        """One publish latency; closes the window (and moves the limit) when it is over."""
        self._sum_s += latency_s
        self._samples += 1
        now = self._clock()
        if now - self._window_start >= self.config.window_s:
            if self._samples >= self.config.min_window_samples:
                self._update(self._sum_s / self._samples, now)
                self._sum_s, self._samples = 0.0, 0
                self._peak_in_flight = self.in_flight
            self._window_start = now

    async def timed(self, call: Callable[[], Awaitable[T]]) -> T:
        """Await ``call()`` and observe how long it took (also when it failed: a timeout
        is the strongest sign of a queue)."""
        started = self._clock()
        try:
            return await call()
        finally:
            self.observe(self._clock() - started)

    def _update(self, mean_s: float, now: float) -> None:
        cfg = self.config
        if now - self._no_load_at >= cfg.reset_min_after_s:
            self._no_load_s, self._no_load_at = None, now
        if self._no_load_s is None or mean_s < self._no_load_s:
            self._no_load_s = mean_s
        if self._peak_in_flight < self._limit / 2:
            return  # the load never came near the limit: its latency says nothing about it
        no_load = self._no_load_s
        gradient = max(0.5, min(1.0, cfg.tolerance * no_load / mean_s)) if mean_s > 0 else 1.0
        queue = math.sqrt(self._limit)
        target = self._limit * gradient + queue
        smoothed = (1 - cfg.smoothing) * self._limit + cfg.smoothing * target
        before = self.limit
        self._limit = min(float(cfg.ceiling), max(float(cfg.floor), smoothed))
        if self._on_limit is not None and self.limit != before:
            self._on_limit(self.limit)

    def report(self) -> dict[str, float | int | None]:
        """For ``GET /health``: where the limit stands and why."""
        no_load = self._no_load_s
        return {
            "limit": self.limit,
            "in_flight": self.in_flight,
            "refused": self.refused,
            "no_load_latency_ms": round(no_load * 1000, 2) if no_load is not None else None,
        }
