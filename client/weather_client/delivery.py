"""One batch's way to acceptance, without I/O: what each answer means for its tweets, and
whether and when to send what is left. The transports turn their answers into an
:data:`Outcome`; the clients loop ``send → record → wait``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from weather_client.result import Refusal, SendResult
from weather_client.retry import Deadline, RetryPolicy, Uniform
from weather_client.tweets import Tweet


@dataclass(frozen=True)
class Accepted:
    """Every tweet sent was accepted (a 202 / OK)."""


@dataclass(frozen=True)
class Retry:
    """A failure of the pipeline's (503, 5xx, lost connection, timeout): send again with
    the same ids. ``ids``: the ones the server named to retry with (None: all sent)."""

    kind: str
    reason: str
    ids: Sequence[str] | None = None
    retry_after_s: float | None = None


@dataclass(frozen=True)
class Refused:
    """Bad input (a 4xx / INVALID_ARGUMENT), never retried as it is. ``by_index``: the
    reason for each tweet the server named by its index in the request (the others were
    not judged bad and are sent again without them); empty: all are refused."""

    status: str
    reason: str
    by_index: dict[int, str] = field(default_factory=dict)


Outcome = Accepted | Retry | Refused


def classify_answer(status: int, body: Any, retry_after_s: float | None = None) -> Outcome:
    """What an HTTP status and JSON body mean (``POST /input`` and the WebSocket acks
    answer alike)."""
    document = body if isinstance(body, dict) else {}
    reason = str(document.get("error") or f"HTTP {status}")
    if 200 <= status < 300:
        return Accepted()
    if status >= 500:
        ids = document.get("ids")
        named = ids if isinstance(ids, list) and all(isinstance(i, str) for i in ids) else None
        return Retry(str(status), reason, named, retry_after_s)
    return Refused(str(status), reason, refusals_by_index(document.get("details")))


def refusals_by_index(details: Any) -> dict[int, str]:
    """The 422 ``details`` of a batch (``{"loc": [index, field], "msg": ...}``) by index."""
    found: dict[int, list[str]] = {}
    for error in details if isinstance(details, list) else []:
        loc = error.get("loc") if isinstance(error, dict) else None
        if not (isinstance(loc, list) and loc and type(loc[0]) is int):
            continue
        where = ".".join(str(part) for part in loc[1:])
        message = str(error.get("msg", "invalid"))
        found.setdefault(loc[0], []).append(f"{where}: {message}" if where else message)
    return {index: "; ".join(messages) for index, messages in found.items()}


class Delivery:
    """The tweets of one batch still to be accepted, and the tally of getting them there."""

    def __init__(
        self, tweets: Sequence[Tweet], policy: RetryPolicy, deadline: Deadline, uniform: Uniform
    ) -> None:
        self.pending: list[Tweet] = list(tweets)
        self.policy = policy
        self.deadline = deadline
        self.uniform = uniform
        self.result = SendResult()
        self.failures = 0
        self._after_failure = False

    def sending(self) -> list[Tweet]:
        """The tweets of the next attempt (a retry when the last one failed)."""
        self.result.requests += 1
        self.result.retries += self._after_failure
        return self.pending

    def record(self, outcome: Outcome) -> float | None:
        """Apply one answer to the tweets just sent. Returns the seconds to wait before
        sending what is left (0: at once), or None when there is nothing more to send:
        all answered, or the deadline would pass first (see ``result.not_accepted``)."""
        if isinstance(outcome, Accepted):
            self._accept(self.pending)
        elif isinstance(outcome, Refused):
            return self._refuse(outcome)
        else:
            return self._retry(outcome)
        return None

    def give_up(self) -> None:
        """The deadline passed: whatever is pending is reported not accepted."""
        self.result.not_accepted.extend(t["id"] for t in self.pending)
        self.pending = []

    def _accept(self, tweets: Sequence[Tweet]) -> None:
        taken = {t["id"] for t in tweets}
        self.result.accepted.extend(t["id"] for t in tweets)
        self.pending = [t for t in self.pending if t["id"] not in taken]

    def _refuse(self, outcome: Refused) -> float | None:
        named = {i: r for i, r in outcome.by_index.items() if 0 <= i < len(self.pending)}
        if not named or len(named) == len(self.pending):
            named = {i: named.get(i, outcome.reason) for i in range(len(self.pending))}
        self.result.refused.extend(
            Refusal(self.pending[i]["id"], outcome.status, reason) for i, reason in named.items()
        )
        self.pending = [t for i, t in enumerate(self.pending) if i not in named]
        if not self.pending:
            return None
        self.result.resends += 1
        self._after_failure = False
        return 0.0

    def _retry(self, outcome: Retry) -> float | None:
        if outcome.ids is not None:
            named = set(outcome.ids)
            to_retry = [t for t in self.pending if t["id"] in named]
            if to_retry:  # the server says which are not taken: the others are
                self._accept([t for t in self.pending if t["id"] not in named])
        self.failures += 1
        self.result.retried_because[outcome.kind] += 1
        wait = self.policy.delay(self.failures, outcome.retry_after_s, self.uniform)
        if not self.deadline.allows_wait(wait):
            self.give_up()
            return None
        self._after_failure = True
        return wait
