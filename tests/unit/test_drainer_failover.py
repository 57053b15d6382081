"""Two consumer actors per broker share one store's dead-letter outbox: only the holder of
the drainer lease publishes, and when it dies (stops renewing) the lease passes to its
sibling once it expires, so every letter is published once (plain fakes, a fake clock)."""

from __future__ import annotations

from serve_app.brokers.base import Envelope
from serve_app.consume.actors import kafka_actor_name
from serve_app.consume.core import OutboxDrain
from tests.unit.test_consume import FakeDeadLetters, FakeStore

LEASE_S = 30.0


class LeasedStore(FakeStore):
    """The claim script's rule (SET PX unless another owner holds it) on a fake clock."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0
        self.expires = 0.0

    async def claim_drainer(self, owner: str, lease_s: float) -> bool:
        if self.drainer in (None, owner) or self.now >= self.expires:
            self.drainer, self.expires = owner, self.now + lease_s
            return True
        return False

    def add_letter(self, body: bytes) -> None:
        self.outbox_entries[body.decode()] = Envelope.of(body, "undecodable").to_json()


def drains(store: LeasedStore) -> tuple[OutboxDrain[str], OutboxDrain[str], list[FakeDeadLetters]]:
    sinks = [FakeDeadLetters([]), FakeDeadLetters([])]
    first, second = (
        OutboxDrain(store, sink, kafka_actor_name(i), lease_s=LEASE_S)
        for i, sink in enumerate(sinks)
    )
    return first, second, sinks


def sent(sink: FakeDeadLetters) -> list[bytes]:
    return [e.body for e in sink.sent]


async def test_the_sibling_takes_the_lease_once_the_holder_stopped_renewing() -> None:
    store = LeasedStore()
    first, second, (sink0, sink1) = drains(store)
    store.add_letter(b"a")
    await first.step()  # the holder publishes
    await second.step()  # the sibling only reads the pending count
    assert sent(sink0) == [b"a"] and sent(sink1) == []
    store.add_letter(b"b")  # the holder dies here: nobody renews its lease
    store.now = LEASE_S - 1
    await second.step()
    assert sent(sink1) == [] and store.outbox_entries  # not before the lease ran out
    store.now = LEASE_S
    await second.step()
    assert sent(sink1) == [b"b"] and store.drainer == kafka_actor_name(1)
    assert store.outbox_entries == {}


async def test_a_restarted_holder_waits_for_its_sibling_s_lease() -> None:
    store = LeasedStore()
    first, second, (sink0, sink1) = drains(store)
    store.now = 0.0
    await second.step()  # the sibling holds it now
    store.add_letter(b"c")
    await first.step()  # the restarted actor (same name) finds it taken
    assert sent(sink0) == [] and store.outbox_entries
    await second.step()
    assert sent(sink1) == [b"c"]
