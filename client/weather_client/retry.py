"""The retry rule, as pure policy (no I/O; the clock and the randomness are passed in).

A request that did not get a 202 for a reason of the pipeline's (503, 5xx, a connection
error, a timeout) is sent again with the same ids. Before each retry the client waits the
server's ``Retry-After`` (capped) plus a full-jitter share of an exponentially growing
window (``uniform(0, min(cap, base * 2**n))`` after the n-th failure in a row), so many
clients refused at once come back spread out instead of together. An overall deadline
bounds the whole send: a retry that could not start before it is not made.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass

Clock = Callable[[], float]
Uniform = Callable[[], float]
"""A source of floats in [0, 1): ``random.random`` or a test's fixed values."""


@dataclass(frozen=True)
class RetryPolicy:
    """How long to wait between attempts and for how long to keep trying."""

    base_s: float = 0.25
    """The jitter window after the first failure; it doubles with every further one."""
    cap_s: float = 8.0
    """The largest jitter window."""
    max_retry_after_s: float = 30.0
    """The most of a server's ``Retry-After`` honoured (a bound against a bad header)."""
    deadline_s: float = 120.0
    """The whole send, first attempt to last retry."""

    def __post_init__(self) -> None:
        if self.base_s <= 0 or self.cap_s < self.base_s:
            raise ValueError(f"need 0 < base_s <= cap_s, got {self.base_s} and {self.cap_s}")
        if self.max_retry_after_s < 0 or self.deadline_s <= 0:
            raise ValueError("max_retry_after_s must be >= 0 and deadline_s > 0")

    def window(self, failures: int) -> float:
        """The jitter window after ``failures`` failures in a row (1 for the first)."""
        exponent = min(max(failures - 1, 0), 62)  # 2**62 s is past any cap
        return min(self.cap_s, self.base_s * 2**exponent)

    def delay(self, failures: int, retry_after_s: float | None, uniform: Uniform) -> float:
        """Seconds to wait before the next attempt: the honoured ``Retry-After`` plus full
        jitter over the window, so never sooner than the server asked."""
        honoured = min(max(retry_after_s or 0.0, 0.0), self.max_retry_after_s)
        return honoured + uniform() * self.window(failures)

    def deadline(self, clock: Clock = time.monotonic) -> Deadline:
        return Deadline(clock() + self.deadline_s, clock)


@dataclass(frozen=True)
class Deadline:
    """A point on ``clock`` after which no attempt starts."""

    at: float
    clock: Clock

    def remaining(self) -> float:
        return max(0.0, self.at - self.clock())

    def expired(self) -> bool:
        return self.remaining() <= 0.0

    def allows_wait(self, seconds: float) -> bool:
        """Whether an attempt after waiting ``seconds`` would still start before it."""
        return seconds < self.remaining()


def parse_retry_after(value: str | None) -> float | None:
    """A ``Retry-After`` in seconds (the pipeline sends whole seconds); None if absent or
    not a number (an HTTP date is treated as absent: the backoff alone then applies)."""
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    return seconds if seconds >= 0 and seconds == seconds else None  # NaN is not >= 0


def system_uniform() -> Uniform:
    """Jitter from an unseeded generator of its own (not the shared ``random`` state)."""
    return random.Random().random
