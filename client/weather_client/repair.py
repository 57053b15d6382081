"""``weather repair``: re-count into a short store what the other store counted.

The pipeline's dashboard does the work (``GET /dashboard/api/repair`` a dry run, ``POST``
to apply; it streams one JSON line per batch, then the report); this module finds the
Ray cluster's token, reads the stream and says what the report means. Nothing here talks to
a store: the client needs no store address or password, only the pipeline's URL and the
token an operator already has for the Ray dashboard.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import httpx

from weather_client.errors import WeatherClientError

REPAIR_PATH = "/dashboard/api/repair"
RAY_TOKEN_FILE = Path.home() / ".ray" / "auth_token"
STORE_TITLES = {"redis": "Redis", "valkey": "Valkey"}
SHOWN_FIELDS = 12


class RepairError(WeatherClientError):
    """The repair could not run or stopped: the message says why."""


def find_token(token_file: str | None, environ: Mapping[str, str] = os.environ) -> str:
    """The Ray cluster's token, looked for where Ray's own clients look: ``token_file``,
    then ``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH``, ``~/.ray/auth_token``."""
    if token_file is None and environ.get("RAY_AUTH_TOKEN", "").strip():
        return environ["RAY_AUTH_TOKEN"].strip()
    candidates = [token_file] if token_file else [environ.get("RAY_AUTH_TOKEN_PATH"), None]
    for candidate in candidates:
        path = Path(candidate) if candidate else RAY_TOKEN_FILE
        try:
            token = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            if token_file or candidate:
                raise RepairError(f"cannot read the token file {path}: {exc.strerror}") from None
            continue
        if token:
            return token
    raise RepairError(
        "no token: give --token-file (the local stack's is .devstack/ray-auth/token) or set "
        "RAY_AUTH_TOKEN to the Ray cluster's token"
    )


def query(into: str, prefix: str, min_ttl_s: int | None, clear_skip_report: bool) -> dict[str, str]:
    params = {"into": into}
    if prefix:
        params["prefix"] = prefix
    if min_ttl_s is not None:
        params["min_ttl_s"] = str(min_ttl_s)
    if clear_skip_report:
        params["clear_skip_report"] = "true"
    return params


async def run(
    http: httpx.AsyncClient,
    token: str,
    params: Mapping[str, str],
    apply: bool,
    on_progress: Callable[[dict[str, Any]], None] = lambda _: None,
) -> dict[str, Any]:
    """One repair through the dashboard: the final report (progress lines go to
    ``on_progress``). A refusal or a repair that stopped is a :class:`RepairError`."""
    headers = {"Authorization": f"Bearer {token}"}
    method = "POST" if apply else "GET"
    try:
        async with http.stream(method, REPAIR_PATH, params=params, headers=headers,
                               timeout=httpx.Timeout(30, read=600)) as response:  # fmt: skip
            if response.status_code != 200:
                await response.aread()
                raise RepairError(_refusal(response))
            return await _read_stream(response.aiter_lines(), on_progress)
    except httpx.HTTPError as exc:
        raise RepairError(f"{http.base_url}: {type(exc).__name__}: {exc}") from None


async def _read_stream(lines: Any, on_progress: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    async for line in lines:
        if not line.strip():
            continue
        event = json.loads(line)
        kind = event.pop("event", None)
        if kind == "progress":
            on_progress(event)
        elif kind == "report":
            return event
        elif kind == "error":
            raise RepairError(str(event.get("error")))
    raise RepairError("the stream ended before the report (the server went away?); run again")


def _refusal(response: httpx.Response) -> str:
    try:
        detail = response.json().get("error")
    except ValueError:
        detail = response.text[:300].strip()
    return f"HTTP {response.status_code}: {detail or response.reason_phrase}"


def exit_code(report: Mapping[str, Any]) -> int:
    """0 when every direction finished with nothing left alone; 1 otherwise (conflicts,
    ids left alone, a scan cut short): the report says what."""
    return 0 if report.get("whole") else 1


class ProgressLine:
    """Progress on stderr: rewritten in place on a terminal, else one line every
    ``every_s`` (a log stays short however large the store)."""

    def __init__(
        self,
        echo: Callable[[str, bool], None],
        tty: bool,
        every_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.echo, self.tty, self.every_s, self.clock = echo, tty, every_s, clock
        self.shown_at: float | None = None

    def __call__(self, progress: Mapping[str, Any]) -> None:
        if self.tty:
            self.echo(f"\r{render_progress(progress)}", False)
            self.shown_at = self.clock()
        elif self.shown_at is None or self.clock() - self.shown_at >= self.every_s:
            self.echo(render_progress(progress), True)
            self.shown_at = self.clock()

    def end(self) -> None:
        """Ends the line a terminal was rewriting."""
        if self.tty and self.shown_at is not None:
            self.echo("", True)


def render_progress(progress: Mapping[str, Any]) -> str:
    return (
        f"{progress['source']} → {progress['target']}: {progress['read']:,} markers read, "
        f"{progress['missing']:,} missing, {progress['conflicts']:,} conflicts"
    )


def _breakdown(counts: Mapping[str, int]) -> str:
    shown = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:SHOWN_FIELDS]
    more = len(counts) - len(shown)
    return ", ".join(f"{k} {v:,}" for k, v in shown) + (f" (and {more} more)" if more > 0 else "")


def render_report(report: Mapping[str, Any]) -> str:
    """What a repair found or did, direction by direction, for a person."""
    dry = report["dry_run"]
    lines = [
        "dry run: nothing was changed; run again with --apply to count what is listed"
        if dry
        else "applied"
    ]
    scope = f"ids starting with {report['prefix']!r}" if report.get("prefix") else "every id"
    lines.append(f"scope: {scope}; markers expiring within {report['min_ttl_s']:,} s left alone")
    for direction in report["directions"]:
        lines += _render_direction(direction, dry)
    if report.get("stopped_because"):
        lines.append(f"stopped early: {report['stopped_because']}; run again to finish")
    lines.append(f"took {report['elapsed_s']:.1f} s")
    return "\n".join(lines)


def _render_direction(d: Mapping[str, Any], dry: bool) -> list[str]:
    target = STORE_TITLES.get(d["target"], d["target"])
    verb = "would count" if dry else "counted"
    lines = [
        f"{d['source']} → {d['target']}: {d['read']:,} markers read; {target} lacks "
        f"{d['missing']:,} ({verb}), has {d['agreeing']:,} already"
        + ("" if d["complete"] else " (scan not finished)")
    ]
    if d["missing"]:
        lines.append(f"  by country: {_breakdown(d['by_country'])}")
        lines.append(f"  by weather: {_breakdown(d['by_weather'])}")
    lines += _problems(d)
    lines += _skip_report(d, target, dry)
    return lines


def _problems(d: Mapping[str, Any]) -> Iterable[str]:
    if d["conflicts"]:
        shown = ", ".join(d["conflict_ids"])
        yield (
            f"  conflicts: {d['conflicts']:,} ids hold another tweet in {d['target']} "
            f"(left as they are): {shown}"
        )
    if d["near_expiry"]:
        yield (
            f"  left alone: {d['near_expiry']:,} ids whose marker expires soon "
            "(lower --min-ttl only if neither store ran behind the other by that long)"
        )
    if d["without_dimensions"]:
        yield (
            f"  left alone: {d['without_dimensions']:,} markers of an older release "
            "(no country and weather to count)"
        )


def _skip_report(d: Mapping[str, Any], target: str, dry: bool) -> Iterable[str]:
    ranges = d["skip_ranges"]
    if not ranges:
        return
    what = f"  skip report of {target} ({ranges:,} ranges)"
    if d["skip_report_cleared"]:
        yield f"{what}: cleared"
    elif d["skip_report_kept_because"]:
        yield f"{what}: {'would be ' if dry else ''}kept: {d['skip_report_kept_because']}"
    elif dry:
        yield f"{what}: would be cleared"
