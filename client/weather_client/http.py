"""``POST /input`` over httpx: one batch per request, always as a JSON array, so every
answer has the same shape (a 202 lists ``ids``; a 503 names the ids to retry with)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import httpx

from weather_client.delivery import Outcome, Retry, classify_answer
from weather_client.retry import parse_retry_after
from weather_client.tweets import SERVER_MAX_BATCH_TWEETS, Tweet

INPUT_PATH = "/input"


class RestTransport:
    """Sends batches to ``POST /input`` of ``base_url``."""

    def __init__(self, base_url: str, http: httpx.AsyncClient | None = None) -> None:
        self.http = http or httpx.AsyncClient(base_url=base_url)
        self._owned = http is None

    async def send(self, tweets: Sequence[Tweet], timeout_s: float) -> Outcome:
        body = json.dumps(list(tweets), ensure_ascii=False, separators=(",", ":")).encode()
        try:
            response = await self.http.post(
                INPUT_PATH,
                content=body,
                headers={"Content-Type": "application/json"},
                timeout=timeout_s,
            )
        except httpx.TransportError as exc:  # connection refused/reset, timeouts
            return Retry(type(exc).__name__, str(exc) or type(exc).__name__)
        retry_after = parse_retry_after(response.headers.get("retry-after"))
        return classify_answer(response.status_code, _json_or_text(response), retry_after)

    async def aclose(self) -> None:
        if self._owned:
            await self.http.aclose()


def _json_or_text(response: httpx.Response) -> Any:
    """The JSON body, or ``{"error": <text>}`` when a proxy answered with something else."""
    try:
        return response.json()
    except ValueError:
        return {"error": response.text[:300].strip() or f"HTTP {response.status_code}"}


async def server_batch_limit(http: httpx.AsyncClient, timeout_s: float = 5.0) -> int:
    """The array limit the server publishes in ``/openapi.json`` (``maxItems`` of the
    ``POST /input`` array); the pipeline's default when it cannot be read."""
    try:
        response = await http.get("/openapi.json", timeout=timeout_s)
        body = response.json()["paths"]["/input"]["post"]["requestBody"]
        variants = body["content"]["application/json"]["schema"]["oneOf"]
        return next(int(v["maxItems"]) for v in variants if v.get("type") == "array")
    except (httpx.HTTPError, ValueError, KeyError, TypeError, StopIteration):
        return SERVER_MAX_BATCH_TWEETS
