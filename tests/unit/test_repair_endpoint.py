"""The dashboard's admin endpoint ``/api/repair`` on plain fake stores: only the cluster's
token gets in, GET is a dry run, POST applies, every batch streams a progress line and the
report comes last; a bad parameter is a 400 naming it, a store that cannot be reached a 503."""

from __future__ import annotations

import json
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.testclient import TestClient

from serve_app.dashboard.admin import plan_from_query, repair_routes
from serve_app.dashboard.core import DashboardCore, build_dashboard_app
from serve_app.model.exposure import TokenCheck
from tests.support.dashboard_fakes import FakeMonitor, FakeStore, fake_replicas
from tests.support.repair_fakes import FakeMarkers, both, marker_of

TOKEN = "a" * 64
AUTH = {"Authorization": f"Bearer {TOKEN}"}
RAIN = marker_of("Está lloviendo", "GT", "Lluvioso")


def cluster_token(header: str) -> bool:
    return header == f"Bearer {TOKEN}"


class Opened:
    """Hands out the same fakes each time and counts the openings."""

    def __init__(self, stores: dict[str, FakeMarkers]) -> None:
        self.stores = stores
        self.times = 0

    def __call__(self) -> dict[str, FakeMarkers]:
        self.times += 1
        return self.stores


def client_for(
    stores: dict[str, FakeMarkers], check: TokenCheck | None = cluster_token
) -> TestClient:
    return TestClient(Starlette(routes=repair_routes(Opened(stores), check)))


def lines(body: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in body.splitlines() if line.strip()]


def short_redis() -> dict[str, FakeMarkers]:
    stores = both()
    for i in range(5):
        stores["valkey"].count(f"t-{i}", RAIN)
    stores["redis"].count("t-0", RAIN)
    stores["redis"].skip("weather-tweets/2", 40, 44)
    return stores


@pytest.mark.parametrize(
    ("headers", "status", "says"),
    [
        ({}, 401, "Authorization: Bearer"),
        ({"Authorization": "Basic dXNlcjpwdw=="}, 401, "Authorization: Bearer"),
        ({"Authorization": "Bearer wrong"}, 403, "not the Ray cluster's token"),
    ],
)
def test_only_the_cluster_token_gets_in(headers: dict[str, str], status: int, says: str) -> None:
    stores = short_redis()
    with client_for(stores) as client:
        for method in ("GET", "POST"):
            response = client.request(method, "/api/repair", headers=headers)
            assert response.status_code == status and says in response.json()["error"]
    assert stores["redis"].total == 1 and stores["redis"].calls == []
    if status == 401:
        assert response.headers["www-authenticate"] == "Bearer"


def test_without_token_authentication_on_the_cluster_the_endpoint_is_closed() -> None:
    with client_for(short_redis(), check=None) as client:
        response = client.get("/api/repair", headers=AUTH)
    assert response.status_code == 403 and "RAY_AUTH_MODE=token" in response.json()["error"]


def test_get_is_a_dry_run_streaming_progress_then_the_report() -> None:
    stores = short_redis()
    before = stores["redis"].state()
    with client_for(stores) as client:
        response = client.get("/api/repair", params={"into": "redis", "batch": "2"}, headers=AUTH)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/x-ndjson")
    events = lines(response.text)
    assert [e["event"] for e in events] == ["progress"] * 3 + ["report"]
    report = events[-1]
    assert report["dry_run"] is True and report["whole"] is True
    [direction] = report["directions"]
    assert (direction["missing"], direction["by_country"]) == (4, {"GT": 4})
    assert stores["redis"].state() == before
    assert stores["redis"].closed and stores["valkey"].closed


def test_post_applies_and_clears_the_skip_report_it_repaired() -> None:
    stores = short_redis()
    with client_for(stores) as client:
        response = client.post("/api/repair", headers=AUTH)
    report = lines(response.text)[-1]
    assert report["dry_run"] is False
    assert [d["missing"] for d in report["directions"]] == [4, 0]
    assert report["directions"][0]["skip_report_cleared"] is True
    assert stores["redis"].counts() == stores["valkey"].counts()
    assert stores["redis"].ranges == {} and stores["redis"].skipped == {}


@pytest.mark.parametrize(
    ("params", "named"),
    [
        ({"into": "mongo"}, "into"),
        ({"batch": "many"}, "batch"),
        ({"min_ttl_s": "-5"}, "min_ttl_s"),
        ({"clear_skip_report": "maybe"}, "clear_skip_report"),
        ({"prefix": "a b"}, "prefix"),
        ({"dry_run": "false"}, "unknown parameter dry_run"),
    ],
)
def test_a_bad_parameter_is_a_400_naming_it(params: dict[str, str], named: str) -> None:
    stores = short_redis()
    with client_for(stores) as client:
        response = client.post("/api/repair", params=params, headers=AUTH)
    assert response.status_code == 400 and response.json()["error"].startswith(named)
    assert stores["redis"].total == 1


def test_a_store_that_cannot_be_reached_is_a_503_and_nothing_runs() -> None:
    stores = short_redis()
    stores["valkey"].down = True
    with client_for(stores) as client:
        response = client.post("/api/repair", headers=AUTH)
    assert response.status_code == 503 and "Connection refused" in response.json()["error"]
    assert response.headers["retry-after"] == "5"
    assert stores["redis"].total == 1 and stores["redis"].closed


def test_a_store_failing_mid_way_ends_the_stream_with_an_error_line() -> None:
    stores = short_redis()

    async def broken(ids: Any) -> Any:
        raise ConnectionError("Connection reset by peer")

    stores["redis"].values = broken  # type: ignore[method-assign]
    with client_for(stores) as client:
        response = client.post("/api/repair", headers=AUTH)
    [event] = lines(response.text)
    assert event["event"] == "error" and "Connection reset by peer" in event["error"]
    assert "run it again" in event["error"]


def test_the_plan_defaults_to_both_directions_as_a_dry_run() -> None:
    from starlette.datastructures import QueryParams

    plan = plan_from_query(QueryParams(""), apply=False)
    assert (plan.into, plan.apply, plan.prefix, plan.clear_skip_report) == (
        ("redis", "valkey"),
        False,
        "",
        False,
    )
    assert plan_from_query(QueryParams("into=valkey&clear_skip_report=true"), True).into == (
        "valkey",
    )


def test_the_dashboard_app_serves_the_admin_routes_it_is_given() -> None:
    core = DashboardCore(
        {"redis": FakeStore(), "valkey": FakeStore()},
        FakeMonitor(["redis", "valkey"]),
        fake_replicas,
    )
    stores = short_redis()
    app = build_dashboard_app(
        core,
        sample_in_background=False,
        admin_routes=repair_routes(Opened(stores), cluster_token),
    )
    with TestClient(app) as client:
        assert client.get("/api/repair").status_code == 401
        assert lines(client.get("/api/repair", headers=AUTH).text)[-1]["event"] == "report"
