"""Keep a replica's background task running for the replica's whole life (no Ray in here).

The Gateway's backlog poller is what lets admission control admit anything: if it ended,
every reading would go stale and the replica would refuse all tweets for ever while its
readiness still said 200. :func:`supervise` restarts such a task whenever it ends, after a
capped exponential backoff, and :class:`TaskHealth` says in ``GET /health`` (and a metric)
whether it runs, how often it was restarted and why it last ended.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, NoReturn

from serve_app.errors import describe

FIRST_RESTART_DELAY_S = 0.5
MAX_RESTART_DELAY_S = 30.0
ENDED = "ended without an error (it must run for the replica's lifetime)"


@dataclass
class TaskHealth:
    """What ``/health`` shows of one supervised task."""

    name: str
    running: bool = False
    restarts: int = 0
    last_error: str = ""

    def report(self) -> dict[str, Any]:
        return {
            "running": self.running,
            "restarts": self.restarts,
            "last_error": self.last_error,
        }


def restart_delay_s(restarts: int) -> float:
    """0.5 s after the first end, doubling up to 30 s: a task that keeps failing at once
    (a broker's address wrong) costs little, one that failed once is back quickly."""
    return min(MAX_RESTART_DELAY_S, FIRST_RESTART_DELAY_S * 2 ** max(0, restarts - 1))


async def supervise(
    run: Callable[[], Awaitable[Any]],
    health: TaskHealth,
    on_restart: Callable[[TaskHealth], None] = lambda health: None,
    sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
) -> NoReturn:
    """Run ``run()`` again whenever it returns or raises, until cancelled."""
    while True:
        health.running = True
        try:
            await run()
            health.last_error = ENDED
        except asyncio.CancelledError:
            health.running = False
            raise
        except Exception as exc:  # any end is restarted; the reason is shown, not raised
            health.last_error = describe(exc)
        health.running = False
        health.restarts += 1
        on_restart(health)
        await sleep(restart_delay_s(health.restarts))
