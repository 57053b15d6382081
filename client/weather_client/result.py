"""What a send did: the ids accepted, the tweets refused and why, and what it took."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Refusal:
    """A tweet the pipeline refused (a 4xx or INVALID_ARGUMENT): sending it again as it is
    would be refused again, so it is never retried."""

    id: str
    status: str
    reason: str


@dataclass
class SendResult:
    """Totals of one :meth:`send` (or several, merged with :meth:`add`)."""

    accepted: list[str] = field(default_factory=list)
    refused: list[Refusal] = field(default_factory=list)
    not_accepted: list[str] = field(default_factory=list)
    """Ids still unanswered when the deadline passed (safe to send again, same ids)."""
    requests: int = 0
    retries: int = 0
    """Attempts that repeated ids already sent, after a failure of the pipeline's."""
    resends: int = 0
    """Requests that carried the rest of a batch again after some of it was refused."""
    retried_because: Counter[str] = field(default_factory=Counter)
    """Failures that led to a retry, by kind: ``503``, ``UNAVAILABLE``, ``ConnectError``..."""

    @property
    def ok(self) -> bool:
        """Every tweet accepted: nothing refused, nothing left over."""
        return not self.refused and not self.not_accepted

    @property
    def unavailable(self) -> int:
        """How many 503 / UNAVAILABLE answers were retried."""
        return self.retried_because["503"] + self.retried_because["UNAVAILABLE"]

    def add(self, other: SendResult) -> None:
        self.accepted.extend(other.accepted)
        self.refused.extend(other.refused)
        self.not_accepted.extend(other.not_accepted)
        self.requests += other.requests
        self.retries += other.retries
        self.resends += other.resends
        self.retried_because.update(other.retried_because)

    def refusal_reasons(self) -> Counter[str]:
        """How many tweets were refused for each reason."""
        return Counter(f"{r.status}: {r.reason}" for r in self.refused)
