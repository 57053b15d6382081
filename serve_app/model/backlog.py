"""What admission control reads from the brokers and stores (plain data, no clients): each
broker's unconsumed backlog per partition (queue) with the limits the broker applies, and
each store's memory. The probes in ``serve_app.brokers`` and ``serve_app.store`` build
them; ``serve_app.ingest.core.Admission`` decides from them."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PartBacklog:
    """One Kafka partition or one RabbitMQ queue: what its consumers have not taken yet, as
    the broker measures it (not as this replica remembers publishing it)."""

    name: str
    messages: int
    unconsumed_bytes: int
    oldest_age_s: float | None = None
    """Age of the oldest record not consumed yet (None: there is none, or the broker cannot
    tell, see :attr:`BrokerLimits.ages_measured`)."""


@dataclass(frozen=True)
class BrokerLimits:
    """What the broker deletes records beyond, as it reports it for the tweet topic or queue
    at the time of the reading (an operator's change is seen at the next one); None: no
    such limit."""

    part_bytes: int | None = None
    """Unconsumed bytes a partition (queue) keeps whatever their age: Kafka's
    ``retention.bytes`` less one segment (whole segments are deleted), RabbitMQ's
    ``x-max-length-bytes``."""
    part_messages: int | None = None
    """Messages a queue keeps (RabbitMQ's ``x-max-length``)."""
    age_s: float | None = None
    """Age from which a record may be deleted unread (``retention.ms``, ``x-message-ttl``)."""
    ages_measured: bool = True
    """False where the broker cannot tell its oldest message's age (a quorum queue)."""


@dataclass(frozen=True)
class BacklogReading:
    """One broker's backlog and limits, read from the broker in one round."""

    parts: tuple[PartBacklog, ...]
    limits: BrokerLimits = BrokerLimits()

    @property
    def messages(self) -> int:
        return sum(p.messages for p in self.parts)

    @property
    def unconsumed_bytes(self) -> int:
        return sum(p.unconsumed_bytes for p in self.parts)

    @property
    def oldest_age_s(self) -> float | None:
        return max((p.oldest_age_s for p in self.parts if p.oldest_age_s is not None), default=None)


@dataclass(frozen=True)
class StoreMemory:
    """A store's ``INFO memory``: beyond ``maxmemory`` (``noeviction``) every script fails."""

    used_bytes: int
    max_bytes: int
    """``maxmemory``; 0: none set (the host's memory is the limit, not watched here)."""
