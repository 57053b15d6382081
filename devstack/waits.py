"""Bounded polling for devstack and loadtest, paced by tenacity.

Every wait of the tooling is "ask again every ``every`` s until the answer is good or
``timeout`` s have passed"; these two functions are the only place that loop is written.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import tenacity

T = TypeVar("T")


def _policy(done: Callable[[Any], bool], timeout: float, every: float) -> dict[str, Any]:
    """Stop at the deadline with the last answer, never a RetryError; an exception ends
    the wait at once (callers turn "not yet" failures into answers)."""
    return {
        "stop": tenacity.stop_after_delay(timeout),
        "wait": tenacity.wait_fixed(every),
        "retry": tenacity.retry_if_result(lambda answer: not done(answer)),
        "retry_error_callback": lambda state: state.outcome.result(),
    }


def poll(
    ask: Callable[[], T],
    done: Callable[[T], bool] = bool,
    *,
    timeout: float,
    every: float,
) -> T:
    """``ask()`` until ``done(answer)`` or ``timeout``; returns the last answer."""
    return tenacity.Retrying(**_policy(done, timeout, every))(ask)


async def apoll(
    ask: Callable[[], Awaitable[T]],
    done: Callable[[T], bool] = bool,
    *,
    timeout: float,
    every: float,
) -> T:
    """The asyncio twin of :func:`poll`."""
    return await tenacity.AsyncRetrying(**_policy(done, timeout, every))(ask)
