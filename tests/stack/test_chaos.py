"""The cheapest rounds of the chaos suite (`make chaos` runs all of them, twice): a store
killed (-9) and restarted, Kafka frozen for longer than the publish deadline, and each
store cut off by a loopback partition (iptables, our own chain, removed by name) for longer
than the publish deadline. Under a client that retries every non-202 with the same ids,
accepted = Redis = Valkey, the two stores' breakdowns grow alike, nothing good is
dead-lettered, and the partition's rules are gone afterwards."""

from __future__ import annotations

import json

import pytest

from loadtest import chaos
from loadtest.chaos import network

pytestmark = [pytest.mark.usefixtures("devstack_serve"), pytest.mark.timeout(600)]


@pytest.mark.parametrize("name", chaos.QUICK)
async def test_fault_round_keeps_both_stores_exact(name: str) -> None:
    report = await chaos.run_round(name)
    print(json.dumps(report, default=str))
    assert report["accepted"] > 0
    assert report["passed"], report
    assert not network.chain_exists()
