"""The ``weather`` command and the stores comparison behind ``weather verify`` (no server:
the input checks happen before any connection, the rest is driven with fakes)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
from click.testing import CliRunner
from weather_client import AsyncClient, Refusal, SendResult
from weather_client.cli import _send, main, render_stats, render_verdict, send_exit_code, summary
from weather_client.verify import differences, losses, verify

TWEET = {"description": "Está lloviendo", "country": "GT", "weather": "Lluvioso"}
STATS = {
    "total": 3,
    "conflicts": 0,
    "parked_dead_letters": 0,
    "skipped": {},
    "by_country": {"GT": 2, "HN": 1},
    "by_weather": {"Lluvioso": 3},
    "by_country_weather": {"GT:Lluvioso": 2, "HN:Lluvioso": 1},
}


def test_send_names_the_bad_line_and_sends_nothing(tmp_path: Path) -> None:
    source = tmp_path / "tweets.jsonl"
    source.write_text(json.dumps(TWEET) + "\n{oops\n", encoding="utf-8")
    run = CliRunner().invoke(main, ["send", str(source), "--url", "http://127.0.0.1:9"])
    assert run.exit_code == 2
    assert f"{source}:2: not JSON" in run.output


def test_send_refuses_an_unknown_transport(tmp_path: Path) -> None:
    source = tmp_path / "t.jsonl"
    source.write_text(json.dumps(TWEET) + "\n", encoding="utf-8")
    run = CliRunner().invoke(main, ["send", str(source), "--via", "smoke"])
    assert run.exit_code == 2 and "smoke" in run.output


async def test_send_reports_accepted_and_refused_and_fails_unless_all_accepted() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path != "/input":
            return httpx.Response(404, json={"error": "no route"})
        sent = json.loads(request.content)
        bad = [i for i, t in enumerate(sent) if t["country"] == "ZZ"]
        if bad:
            details = [{"loc": [i, "country"], "msg": "'ZZ' is not a code"} for i in bad]
            return httpx.Response(422, json={"error": "invalid tweet", "details": details})
        return httpx.Response(202, json={"accepted": len(sent), "ids": [t["id"] for t in sent]})

    base = "http://pipeline.test"
    http = httpx.AsyncClient(base_url=base, transport=httpx.MockTransport(answer))
    tweets = [TWEET, {**TWEET, "id": "bad-1", "country": "ZZ"}, TWEET]
    result = await _send(AsyncClient(base, http=http), tweets)
    report = summary(result, len(tweets))
    assert "accepted: 2 of 3" in report
    assert "refused: 1" in report and "bad-1: 422 country: 'ZZ' is not a code" in report
    assert send_exit_code(result, 3) == 1
    assert send_exit_code(SendResult(accepted=["a", "b"]), 2) == 0
    assert send_exit_code(SendResult(accepted=["a", "a"]), 2) == 1


def test_summary_names_what_the_deadline_left_and_why_it_retried() -> None:
    result = SendResult(accepted=["a"], not_accepted=["b", "c"], requests=5, retries=4)
    result.retried_because.update({"503": 3, "ConnectError": 1})
    result.refused.append(Refusal("d", "422", "weather: not one of"))
    report = summary(result, 4)
    assert "not accepted before the deadline: 2" in report and "b, c" in report
    assert "retries: 4 (503 ×3, ConnectError ×1)" in report
    assert "1 × 422: weather: not one of" in report


def test_stats_are_rendered_side_by_side() -> None:
    text = render_stats({"redis": STATS, "valkey": {**STATS, "total": 2}})
    lines = text.splitlines()
    assert lines[0].split() == ["redis", "valkey"]
    assert lines[1].split() == ["total", "3", "2"]
    assert any(line.split() == ["GT:Lluvioso", "2", "2"] for line in lines)
    assert "valkey: cannot be read: down" in render_stats(
        {"redis": STATS, "valkey": {"error": "down"}}
    )


def test_differences_name_every_count_that_differs() -> None:
    valkey = {**STATS, "total": 4, "by_country": {"GT": 3, "HN": 1}}
    assert differences({"redis": STATS, "valkey": STATS}) == []
    assert differences({"redis": STATS, "valkey": valkey}) == [
        "total: redis 3 != valkey 4",
        "by_country[GT]: redis 2 != valkey 3",
    ]
    assert differences({"redis": STATS, "valkey": {"error": "refused"}}) == ["valkey: refused"]
    assert differences({"redis": STATS}) == ["valkey: missing from /stats"]


def test_losses_name_skipped_records_and_parked_dead_letters() -> None:
    hurt = {**STATS, "skipped": {"tweets-0": 4}, "parked_dead_letters": 2}
    assert losses({"redis": hurt, "valkey": STATS}) == [
        "redis: 4 records of tweets-0 skipped before they were read",
        "redis: 2 dead letters still parked",
    ]


class FakePipeline:
    """``stats`` and ``health`` from scripts (the last answer repeats)."""

    def __init__(self, stats: list[dict[str, Any]], backlogs: list[dict[str, int | None]]):
        self.stats_script, self.backlog_script = stats, backlogs

    async def stats(self) -> dict[str, Any]:
        return self.stats_script.pop(0) if len(self.stats_script) > 1 else self.stats_script[0]

    async def health(self) -> dict[str, Any]:
        script = self.backlog_script
        backlog = script.pop(0) if len(script) > 1 else script[0]
        return {"admission": {b: {"backlog_messages": n} for b, n in backlog.items()}}


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds


async def test_verify_waits_for_the_backlog_to_drain_then_agrees() -> None:
    behind = {"redis": STATS, "valkey": {**STATS, "total": 2}}
    pipeline = FakePipeline(
        [behind, behind, {"redis": STATS, "valkey": STATS}],
        [{"kafka": 5, "rabbitmq": 0}, {"kafka": 0, "rabbitmq": 0}],
    )
    time = FakeTime()
    verdict = await verify(pipeline, wait_s=30, every_s=1, clock=time, sleep=time.sleep)  # type: ignore[arg-type]
    assert verdict.ok and time.now == 2.0
    assert render_verdict(verdict).startswith("ok: both stores counted 3 tweets")


async def test_verify_gives_up_after_the_wait_naming_what_is_wrong() -> None:
    pipeline = FakePipeline(
        [{"redis": STATS, "valkey": {**STATS, "total": 2}}], [{"kafka": 0, "rabbitmq": None}]
    )
    time = FakeTime()
    verdict = await verify(pipeline, wait_s=5, every_s=1, clock=time, sleep=time.sleep)  # type: ignore[arg-type]
    assert not verdict.ok and time.now <= 5
    assert verdict.problems() == [
        "rabbitmq: backlog unknown",
        "total: redis 3 != valkey 2",
    ]
    assert "the stores do not agree" in render_verdict(verdict)


async def test_verify_without_backlog_readings_wants_two_equal_readings() -> None:
    pipeline = FakePipeline([{"redis": STATS, "valkey": STATS}], [{}])
    time = FakeTime()
    verdict = await verify(pipeline, wait_s=10, every_s=1, clock=time, sleep=time.sleep)  # type: ignore[arg-type]
    assert verdict.ok and time.now == 1.0
