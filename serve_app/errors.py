"""The pipeline's one error root, and the one way any failure is put into words.

Every error the pipeline raises on purpose is a :class:`PipelineError`; :func:`describe`
turns any exception (ours, a client library's, one Ray wrapped) into the one line that
goes into a 503, a log line, a health reading or a dead-letter reason.
"""

from __future__ import annotations

DEFAULT_LIMIT = 300
"""Characters of a description: enough to name the cause, small enough for a header."""


class PipelineError(Exception):
    """Root of every error the pipeline raises on purpose."""


class ConfigError(PipelineError, ValueError):
    """Settings that cannot work together (e.g. more Kafka consumers than partitions)."""


class BrokerUnavailable(PipelineError):
    """A broker did not confirm in time; nothing of the write may be reported accepted."""

    def __init__(self, broker: str, reason: str) -> None:
        self.broker = broker
        self.reason = reason
        super().__init__(broker, reason)  # both in args, so the error survives pickling

    def __str__(self) -> str:
        return f"{self.broker} unavailable: {self.reason}"


class ConnectFailed(PipelineError):
    """Connecting to a broker or store failed or timed out (refused, an untrusted
    certificate, a wrong password): names the server, where it is and why, never a secret."""

    def __init__(self, server: str, address: str, reason: str) -> None:
        self.server = server
        self.address = address
        self.reason = reason
        super().__init__(server, address, reason)  # all in args: survives pickling

    def __str__(self) -> str:
        return f"{self.server} at {self.address}: cannot connect: {self.reason}"


class PublishFailed(PipelineError):
    """Not every broker confirmed; ``reasons`` names each one that did not."""

    def __init__(self, reasons: dict[str, str]) -> None:
        self.reasons = reasons
        super().__init__(reasons)

    def __str__(self) -> str:
        return "; ".join(f"{broker} unavailable: {why}" for broker, why in self.reasons.items())


def connect_reason(exc: BaseException, timeout_s: float) -> str:
    """Why connecting failed: "no answer" when it ran out of time, else the failure itself."""
    if isinstance(exc, TimeoutError):
        return f"no answer within {timeout_s:g} s"
    return describe(exc)


def describe(exc: BaseException, limit: int = DEFAULT_LIMIT) -> str:
    """One line naming a failure (``str()`` of a Ray-wrapped error would carry a traceback)."""
    if isinstance(exc, BrokerUnavailable):
        return exc.reason[:limit]
    if isinstance(exc, PublishFailed | ConnectFailed):
        return str(exc)[:limit]
    if isinstance(exc, TimeoutError):
        return "timed out"
    cause = getattr(exc, "cause", None)  # RayTaskError wraps the original exception
    if isinstance(cause, BaseException) and cause is not exc:
        return describe(cause, limit)
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}"[:limit] if text else type(exc).__name__
