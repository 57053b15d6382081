"""Counters summed in the process and flushed once per interval (no servers, no Ray)."""

from __future__ import annotations

import asyncio

from serve_app.model.metrics import ACCEPTED, ADMISSION_REFUSING, PUBLISH_LATENCY, REJECTED
from serve_app.model.metrics_buffer import BufferedMetrics
from tests.support.fakes import RecordingMetrics


class CountingSink(RecordingMetrics):
    """Also counts the calls the real sink receives (what the buffer saves)."""

    def __init__(self) -> None:
        super().__init__()
        self.inc_calls = 0

    def inc(self, metric, value=1, **tags):  # type: ignore[no-untyped-def]
        self.inc_calls += 1
        super().inc(metric, value, **tags)


async def test_increments_are_summed_and_handed_on_once_per_interval() -> None:
    sink = CountingSink()
    metrics = BufferedMetrics(sink, interval_s=0.05)
    for _ in range(500):
        metrics.inc(ACCEPTED, 2, face="rest")
        metrics.inc(REJECTED, face="rest", code="422")
    metrics.inc(ACCEPTED, 1, face="grpc")
    assert sink.inc_calls == 0  # nothing reached the sink yet
    await asyncio.sleep(0.15)
    assert sink.count(ACCEPTED, face="rest") == 1000
    assert sink.count(REJECTED, face="rest", code="422") == 500
    assert sink.count(ACCEPTED, face="grpc") == 1
    assert sink.inc_calls == 3  # one call per series, not one per increment


async def test_an_idle_process_schedules_nothing_and_the_next_burst_is_flushed_too() -> None:
    sink = CountingSink()
    metrics = BufferedMetrics(sink, interval_s=0.02)
    metrics.inc(ACCEPTED, face="rest")
    await asyncio.sleep(0.08)
    assert sink.count(ACCEPTED, face="rest") == 1
    scheduled = asyncio.get_running_loop()._scheduled  # type: ignore[attr-defined]
    ours = [h for h in scheduled if getattr(h, "_callback", None) == metrics.flush]
    assert ours == []  # idle: no timer of this buffer left behind (other tests' may be)
    metrics.inc(ACCEPTED, 4, face="rest")
    await asyncio.sleep(0.08)
    assert sink.count(ACCEPTED, face="rest") == 5 and sink.inc_calls == 2


def test_without_a_running_loop_each_increment_goes_straight_on() -> None:
    sink = CountingSink()
    metrics = BufferedMetrics(sink)
    metrics.inc(ACCEPTED, 3, face="stream")
    metrics.inc(ACCEPTED, 1, face="stream")
    assert sink.count(ACCEPTED, face="stream") == 4 and sink.inc_calls == 2


async def test_gauges_and_histograms_are_not_delayed() -> None:
    sink = CountingSink()
    metrics = BufferedMetrics(sink, interval_s=60)
    metrics.set(ADMISSION_REFUSING, 1.0, broker="kafka")
    metrics.observe(PUBLISH_LATENCY, 0.004, outcome="confirmed")
    assert sink.gauges and sink.observed(PUBLISH_LATENCY, outcome="confirmed") == [0.004]


async def test_flush_hands_on_what_is_summed_so_far() -> None:
    sink = CountingSink()
    metrics = BufferedMetrics(sink, interval_s=60)
    metrics.inc(ACCEPTED, 7, face="rest")
    metrics.flush()
    assert sink.count(ACCEPTED, face="rest") == 7
    metrics.flush()  # nothing new: nothing handed on
    assert sink.inc_calls == 1
