"""``weather repair`` (client/weather_client/repair.py and the CLI command) against the
dashboard's real admin app on plain fake stores, through an in-process transport: no server.
The token is found where Ray's clients look for it; the dry run is the default; the report
is rendered per direction and the exit code says whether anything was left alone."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from starlette.applications import Starlette
from weather_client import cli
from weather_client.repair import (
    ProgressLine,
    RepairError,
    find_token,
    render_report,
    run,
)

from serve_app.dashboard.admin import repair_routes
from tests.support.repair_fakes import FakeMarkers, both, marker_of

TOKEN = "b" * 64
RAIN = marker_of("Está lloviendo", "GT", "Lluvioso")
SUN = marker_of("Hace sol", "HN", "Soleado")


def dashboard(stores: dict[str, FakeMarkers]) -> Starlette:
    """The admin app as the dashboard mounts it (under /dashboard)."""
    from starlette.routing import Mount

    routes = repair_routes(lambda: stores, lambda header: header == f"Bearer {TOKEN}")
    return Starlette(routes=[Mount("/dashboard", routes=routes)])


def http_for(stores: dict[str, FakeMarkers]) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=dashboard(stores))
    return httpx.AsyncClient(base_url="http://pipeline.test", transport=transport)


def valkey_ahead() -> dict[str, FakeMarkers]:
    stores = both()
    for i in range(4):
        stores["valkey"].count(f"r-{i}", RAIN if i % 2 else SUN)
    stores["redis"].count("r-0", SUN)
    stores["redis"].skip("weather-tweets/3", 10, 19)
    return stores


@pytest.fixture
def cli_against(monkeypatch: pytest.MonkeyPatch):
    """Run the ``weather`` CLI with its HTTP client talking to the fake dashboard."""

    def invoke(stores: dict[str, FakeMarkers], *args: str) -> Any:
        monkeypatch.setattr(cli, "repair_http", lambda url: http_for(stores))
        monkeypatch.setenv("RAY_AUTH_TOKEN", TOKEN)
        return CliRunner().invoke(cli.main, ["repair", *args])

    return invoke


def test_the_cli_dry_run_lists_what_it_would_count_and_changes_nothing(cli_against) -> None:
    stores = valkey_ahead()
    before = stores["redis"].state()
    run_ = cli_against(stores)
    assert run_.exit_code == 0, run_.output
    assert stores["redis"].state() == before
    out = run_.output
    assert "dry run: nothing was changed; run again with --apply" in out
    assert "valkey → redis: 4 markers read; Redis lacks 3 (would count), has 1 already" in out
    assert "by country: GT 2, HN 1" in out and "by weather: Lluvioso 2, Soleado 1" in out
    assert "redis → valkey: 1 markers read; Valkey lacks 0 (would count), has 1 already" in out
    assert "skip report of Redis (1 ranges): would be cleared" in out


def test_the_cli_applies_and_a_second_run_finds_nothing(cli_against) -> None:
    stores = valkey_ahead()
    first = cli_against(stores, "--apply", "--into", "redis")
    assert first.exit_code == 0, first.output
    assert "applied" in first.output and "Redis lacks 3 (counted)" in first.output
    assert "skip report of Redis (1 ranges): cleared" in first.output
    assert stores["redis"].counts() == stores["valkey"].counts()
    assert stores["redis"].ranges == {}
    again = cli_against(stores, "--apply", "--into", "redis", "--json")
    report = json.loads(again.stdout)
    assert again.exit_code == 0 and report["directions"][0]["missing"] == 0
    assert [d["target"] for d in report["directions"]] == ["redis"]


def test_a_conflict_is_named_and_exits_1(cli_against) -> None:
    stores = valkey_ahead()
    stores["redis"].count("r-1", SUN)  # Valkey holds RAIN for it
    run_ = cli_against(stores, "--apply", "--into", "redis")
    assert run_.exit_code == 1
    assert "conflicts: 1 ids hold another tweet in redis (left as they are): r-1" in run_.output
    assert "skip report of Redis (1 ranges): kept: 1 conflicts" in run_.output
    assert stores["redis"].seen["r-1"][0] == SUN


def test_the_prefix_and_the_guard_reach_the_server(cli_against) -> None:
    stores = valkey_ahead()
    stores["valkey"].count("other-1", RAIN)
    run_ = cli_against(stores, "--prefix", "r-", "--min-ttl", "0", "--into", "redis", "--json")
    report = json.loads(run_.stdout)
    assert (report["prefix"], report["min_ttl_s"]) == ("r-", 0)
    assert report["directions"][0]["read"] == 4  # other-1 not looked at
    kept = report["directions"][0]["skip_report_kept_because"]
    assert kept == "only ids starting with 'r-' were repaired"


def test_a_wrong_token_is_refused_with_the_server_reason(cli_against, monkeypatch) -> None:
    stores = valkey_ahead()
    monkeypatch.setattr(cli, "repair_http", lambda url: http_for(stores))
    monkeypatch.setenv("RAY_AUTH_TOKEN", "nope")
    run_ = CliRunner().invoke(cli.main, ["repair", "--apply"])
    assert run_.exit_code == 1
    assert "HTTP 403: the token is not the Ray cluster's token" in run_.output
    assert stores["redis"].total == 1


def test_without_a_token_it_says_where_to_find_one(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "absent"))
    run_ = CliRunner().invoke(cli.main, ["repair"])
    assert run_.exit_code == 2 and "cannot read the token file" in run_.output
    missing = tmp_path / "none"
    run_ = CliRunner().invoke(cli.main, ["repair", "--token-file", str(missing)])
    assert run_.exit_code == 2 and str(missing) in run_.output


def test_the_token_is_looked_for_where_rays_clients_look(tmp_path: Path, monkeypatch) -> None:
    given, from_path, home = tmp_path / "given", tmp_path / "path", tmp_path / "home"
    for path, token in ((given, "t-given"), (from_path, "t-path"), (home, "t-home")):
        path.write_text(f"{token}\n")
    monkeypatch.setattr("weather_client.repair.RAY_TOKEN_FILE", home)
    env = {"RAY_AUTH_TOKEN": "t-env", "RAY_AUTH_TOKEN_PATH": str(from_path)}
    assert find_token(str(given), env) == "t-given"
    assert find_token(None, env) == "t-env"
    assert find_token(None, {"RAY_AUTH_TOKEN_PATH": str(from_path)}) == "t-path"
    assert find_token(None, {}) == "t-home"
    home.unlink()
    with pytest.raises(RepairError, match="no token: give --token-file"):
        find_token(None, {})


async def test_a_stream_cut_before_the_report_is_an_error() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        progress = {"event": "progress", "source": "valkey", "target": "redis", "read": 1,
                    "missing": 1, "conflicts": 0}  # fmt: skip
        return httpx.Response(200, content=json.dumps(progress).encode() + b"\n")

    seen: list[dict[str, Any]] = []
    transport = httpx.MockTransport(answer)
    async with httpx.AsyncClient(base_url="http://p.test", transport=transport) as http:
        with pytest.raises(RepairError, match="stream ended before the report"):
            await run(http, TOKEN, {}, apply=True, on_progress=seen.append)
    assert seen and seen[0]["read"] == 1


async def test_a_server_that_cannot_reach_a_store_is_reported() -> None:
    stores = valkey_ahead()
    stores["redis"].down = True
    async with http_for(stores) as http:
        with pytest.raises(RepairError, match="HTTP 503: a store cannot be reached"):
            await run(http, TOKEN, {}, apply=False)


def test_progress_is_rewritten_on_a_terminal_and_sparse_in_a_log() -> None:
    shown: list[tuple[str, bool]] = []
    now = iter([0.0, 3.0, 12.0, 12.0])
    line = ProgressLine(
        lambda text, nl: shown.append((text, nl)), tty=False, clock=lambda: next(now)
    )
    event = {"source": "valkey", "target": "redis", "read": 1000, "missing": 7, "conflicts": 0}
    for _ in range(3):
        line(event)
    line.end()
    assert shown == [("valkey → redis: 1,000 markers read, 7 missing, 0 conflicts", True)] * 2
    shown.clear()
    terminal = ProgressLine(lambda text, nl: shown.append((text, nl)), tty=True)
    terminal(event)
    terminal.end()
    assert shown[0][0].startswith("\r") and shown[0][1] is False and shown[1] == ("", True)


def test_a_report_cut_short_says_to_run_again() -> None:
    direction = {"source": "valkey", "target": "redis", "read": 10, "agreeing": 8,
                 "missing": 2, "conflicts": 0, "conflict_ids": [], "near_expiry": 3,
                 "without_dimensions": 0, "by_country": {"GT": 2},
                 "by_weather": {"Lluvioso": 2}, "skip_ranges": 2, "skip_report_cleared": False,
                 "skip_report_kept_because": "the scan did not finish, 3 ids near expiry",
                 "complete": False}  # fmt: skip
    report = {"dry_run": False, "prefix": "", "min_ttl_s": 43200, "directions": [direction],
              "elapsed_s": 3600.2, "stopped_because": "the time budget of 3600 s was spent",
              "whole": False}  # fmt: skip
    text = render_report(report)
    assert "Redis lacks 2 (counted), has 8 already (scan not finished)" in text
    assert "left alone: 3 ids whose marker expires soon" in text
    assert "skip report of Redis (2 ranges): kept: the scan did not finish" in text
    assert "stopped early: the time budget of 3600 s was spent; run again to finish" in text
