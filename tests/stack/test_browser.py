"""The dashboard and the API docs in a real browser, against the real stack.

Headless Debian Chromium (``apt`` target of the Makefile) driven by Selenium through
Debian's own chromedriver, so the browser and driver versions always match and nothing is
downloaded. The test opens ``/dashboard/``, posts tweets through ``POST /input`` for
countries no other test sends, waits until the page shows exactly what ``GET /stats``
returns, takes a full-page screenshot and checks ``/docs`` lists ``POST /input``.

The screenshot goes to the test's own temporary folder: a test never writes tracked files.
``make screenshot`` runs this test with ``DASHBOARD_SCREENSHOT=docs/screenshot-dashboard.png``
to refresh the picture the docs show, on purpose.
"""

from __future__ import annotations

import base64
import os
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from selenium import webdriver
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from devstack.config import app_settings, stack_config

settings = app_settings()

ROOT = Path(__file__).resolve().parents[2]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
STORES = ("redis", "valkey")
# Only this test sends these (tests/support/counting.py's countries belong to the other tests).
COUNTRIES = ("PN", "SJ", "NF")
WAIT_S = 90.0
DESKTOP = (1440, 1000)

READ_NUMBERS_JS = """
return Object.fromEntries(
  [...document.querySelectorAll('[data-testid][data-value]')]
    .map((el) => [el.dataset.testid, Number(el.dataset.value)]));
"""


@contextmanager
def chromium(size: tuple[int, int] = DESKTOP) -> Iterator[WebDriver]:
    """Headless Chromium with a fresh profile, closed (and the profile removed) afterwards."""
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}"):
            options.add_argument(flag)
        options.add_argument(f"--window-size={size[0]},{size[1]}")
        driver = webdriver.Chrome(
            options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER)
        )
        try:
            yield driver
        finally:
            driver.quit()


def wait_for(driver: WebDriver, condition: Any, what: str, timeout: float = WAIT_S) -> Any:
    """Selenium's bounded wait with a message that says what never happened."""
    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.5).until(condition)
    except TimeoutException as exc:
        raise AssertionError(f"timed out after {timeout}s waiting for {what}") from exc


def make_requests(n: int) -> list[dict[str, str]]:
    """``n`` tweets over this test's countries and every weather, with unique ids."""
    run = uuid.uuid4().hex[:12]
    weathers = settings.weathers
    return [
        {
            "id": f"browser-{run}-{i}",
            "description": f"browser test {i} ☀",
            "country": COUNTRIES[i % len(COUNTRIES)],
            "weather": weathers[(i // len(COUNTRIES)) % len(weathers)],
        }
        for i in range(n)
    ]


def stats_view(stats: dict[str, Any]) -> dict[str, int]:
    """``GET /stats`` as the page's ``data-testid`` numbers: totals, every weather, and the
    per-country and country x weather counts of this test's countries (0 when absent)."""
    view: dict[str, int] = {}
    for store in STORES:
        s = stats[store]
        view[f"{store}-total"] = s["total"]
        for weather in settings.weathers:
            view[f"{store}-weather-{weather}"] = s["by_weather"].get(weather, 0)
        for country in COUNTRIES:
            view[f"{store}-country-{country}"] = s["by_country"].get(country, 0)
            for weather in settings.weathers:
                pair = f"{country}:{weather}"
                view[f"{store}-cw-{country}-{weather}"] = s["by_country_weather"].get(pair, 0)
    return view


def page_view(driver: WebDriver, keys: list[str]) -> dict[str, int]:
    """The same numbers read off the page (a missing row of the heatmap shows as 0)."""
    shown = driver.execute_script(READ_NUMBERS_JS)
    zero_if_missing = ("-country-", "-cw-", "-weather-")
    return {
        key: int(shown[key])
        if key in shown
        else (0 if any(z in key for z in zero_if_missing) else -1)
        for key in keys
    }


def save_full_page(driver: WebDriver, path: Path) -> None:
    """A screenshot of the whole page, through Chromium's DevTools protocol (no resize, so
    the charts are not re-laid out while the picture is taken)."""
    metrics = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})
    size = metrics["cssContentSize"]
    shot = driver.execute_cdp_cmd(
        "Page.captureScreenshot",
        {
            "format": "png",
            "captureBeyondViewport": True,
            "clip": {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1},
        },
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(base64.b64decode(shot["data"]))


def check_dashboard(driver: WebDriver, base: str, screenshot: Path, n: int = 30) -> None:
    """Open the dashboard, post tweets, and wait until the page equals ``GET /stats``."""
    with httpx.Client(base_url=base, timeout=30) as client:
        driver.get(f"{base}/dashboard/")
        wait_for(
            driver,
            lambda d: "redis-total" in d.execute_script(READ_NUMBERS_JS),
            "the first snapshot on the page",
        )
        before = stats_view(client.get("/stats").json())
        tweets = make_requests(n)
        response = client.post("/input", json=tweets)
        assert response.status_code == 202, response.text

        posted = {f"{store}-country-{c}": 0 for store in STORES for c in COUNTRIES}
        for tweet in tweets:
            for store in STORES:
                posted[f"{store}-country-{tweet['country']}"] += 1
        last: dict[str, Any] = {}

        def page_matches_stats(d: WebDriver) -> bool:
            stats = stats_view(client.get("/stats").json())
            counted = all(stats[k] - before[k] == v for k, v in posted.items())
            shown = page_view(d, list(stats))
            last.update(stats=stats, shown=shown)
            return counted and shown == stats

        try:
            wait_for(driver, page_matches_stats, "the page to show GET /stats with our tweets")
        except AssertionError:
            assert last.get("shown") == last.get("stats"), "page and GET /stats differ"
            raise
        assert last["shown"] == last["stats"]
        assert driver.find_elements(By.CSS_SELECTOR, '[data-testid="redis-latest"] li')
        save_full_page(driver, screenshot)


def check_docs(driver: WebDriver, base: str) -> None:
    """Swagger UI at /docs renders the OpenAPI document and lists POST /input."""
    driver.get(f"{base}/docs")
    operation = wait_for(
        driver,
        lambda d: d.find_elements(
            By.CSS_SELECTOR, '.opblock-post .opblock-summary-path[data-path="/input"]'
        ),
        "Swagger UI to list POST /input",
        timeout=30,
    )
    assert operation[0].text.replace("\u200b", "") == "/input"


@pytest.mark.usefixtures("devstack_serve")
def test_dashboard_shows_what_stats_returns_and_docs_list_the_api(tmp_path: Path) -> None:
    base = stack_config.serve_http_url
    screenshot = Path(os.environ.get("DASHBOARD_SCREENSHOT") or tmp_path / "dashboard.png")
    with chromium() as driver:
        check_dashboard(driver, base, screenshot)
        check_docs(driver, base)
    assert screenshot.read_bytes().startswith(PNG_SIGNATURE)
