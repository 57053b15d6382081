"""The health reading every probe returns (``{"ok": ..., "detail": ...}``), never raising."""

from __future__ import annotations

import contextlib
from typing import Any, TypedDict

from serve_app.errors import describe

READ_TIMEOUT_S = 2.0
"""Upper bound of one dashboard read; a slower broker or store is reported as down."""
TOOLING_TIMEOUT_S = 10.0
"""Upper bound of a one-shot reading: the benchmark reads while the brokers are busy."""


class Health(TypedDict):
    ok: bool
    detail: str


def healthy(detail: str = "ok") -> Health:
    return {"ok": True, "detail": detail}


def failed(exc: BaseException, timeout_s: float = READ_TIMEOUT_S) -> Health:
    """An error as the dashboard shows it."""
    if isinstance(exc, TimeoutError):
        return {"ok": False, "detail": f"no answer within {timeout_s:g} s"}
    return {"ok": False, "detail": describe(exc)}


async def close_quietly(*closing: Any) -> None:
    """Await each close, ignoring failures: the peer may already be gone."""
    for awaitable in closing:
        if awaitable is not None:
            with contextlib.suppress(Exception):
                await awaitable
