"""``weather``: send JSON-lines tweets, show the stats, verify the two stores agree.

    weather send tweets.jsonl [--via rest|ws|grpc] [--batch 500] [--deadline 120]
    weather stats [--json]
    weather verify [--wait 60]
    weather repair [--into redis|valkey|both] [--prefix ID] [--apply]

Exit codes: 0 all good; 1 some tweets not accepted (refused, or the deadline passed), the
stores differ, or a repair left something alone or could not run; 2 bad usage or an
unreadable input.
"""

from __future__ import annotations

import asyncio
import json
import sys
from contextlib import AbstractContextManager, nullcontext
from typing import IO, Any

import click
import httpx

from weather_client.client import DEFAULT_URL, VIAS, AsyncClient
from weather_client.errors import NotAccepted, TweetFileError, WeatherClientError
from weather_client.repair import ProgressLine, RepairError, exit_code, find_token, query
from weather_client.repair import render_report as render_repair
from weather_client.repair import run as run_repair
from weather_client.result import SendResult
from weather_client.retry import RetryPolicy
from weather_client.tweets import DEFAULT_BATCH_TWEETS, Tweet, read_json_lines
from weather_client.verify import Verdict, verify

SHOWN = 10
url_option = click.option(
    "--url", default=DEFAULT_URL, show_default=True, envvar="WEATHER_URL", help="Pipeline base URL"
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Client of the weather-tweet pipeline."""


@main.command()
@click.argument("source", type=click.File("r", encoding="utf-8"))
@url_option
@click.option("--via", type=click.Choice(VIAS), default="rest", show_default=True)
@click.option("--batch", type=click.IntRange(1), default=DEFAULT_BATCH_TWEETS, show_default=True,
              help="Tweets per request (at most the server's limit)")  # fmt: skip
@click.option("--deadline", type=click.FloatRange(0, min_open=True), default=120.0,
              show_default=True, help="Seconds to keep retrying before giving up")  # fmt: skip
@click.option("--concurrency", type=click.IntRange(1), default=4, show_default=True)
@click.option("--grpc-target", default=None, help="host:port of the gRPC proxy [127.0.0.1:9000]")
@click.option("--grpc-app", default=None, help="Serve application of the gRPC service [ingest]")
def send(source: IO[str], url: str, via: str, batch: int, deadline: float, concurrency: int,
         grpc_target: str | None, grpc_app: str | None) -> None:  # fmt: skip
    """Send the tweets of SOURCE (JSON lines, one tweet object per line; - for stdin).

    A tweet without an id is given one; every retry carries the same ids, so nothing is
    counted twice. Exits 0 only when every tweet was accepted."""
    name = "<stdin>" if source.name == "<stdin>" else source.name
    try:
        tweets = list(read_json_lines(source, name))  # every line checked before any is sent
    except TweetFileError as exc:
        raise click.UsageError(str(exc)) from None
    client = AsyncClient(url, via=via, batch=batch, concurrency=concurrency,  # type: ignore[arg-type]
                         policy=RetryPolicy(deadline_s=deadline), grpc_target=grpc_target,
                         grpc_application=grpc_app)  # fmt: skip
    result = asyncio.run(_send(client, tweets))
    click.echo(summary(result, len(tweets)))
    sys.exit(send_exit_code(result, len(tweets)))


def send_exit_code(result: SendResult, total: int) -> int:
    """0 only when every tweet of the input was accepted."""
    return 0 if result.ok and len(set(result.accepted)) == total else 1


def _progress(total: int) -> AbstractContextManager[Any]:
    if sys.stderr.isatty() and total:
        return click.progressbar(length=total, label="sending", file=sys.stderr)
    return nullcontext(None)


async def _send(client: AsyncClient, tweets: list[Tweet]) -> SendResult:
    with _progress(len(tweets)) as bar:

        def advance(done: SendResult) -> None:
            if bar is not None:
                bar.update(len(done.accepted) + len(done.refused) + len(done.not_accepted))

        async with client:
            try:
                return await client.send(tweets, on_batch=advance)
            except NotAccepted as exc:
                return exc.result


def summary(result: SendResult, total: int) -> str:
    """The end-of-run report: accepted, refused by reason, left over, retries by cause."""
    lines = [f"accepted: {len(result.accepted)} of {total}"]
    if result.refused:
        lines.append(f"refused: {len(result.refused)}")
        for reason, count in result.refusal_reasons().most_common(SHOWN):
            lines.append(f"  {count} × {reason}")
        lines += [f"  {r.id}: {r.status} {r.reason}" for r in result.refused[:SHOWN]]
    if result.not_accepted:
        shown = ", ".join(result.not_accepted[:SHOWN])
        more = len(result.not_accepted) - SHOWN
        lines.append(
            f"not accepted before the deadline: {len(result.not_accepted)} "
            f"(send again, same ids): {shown}{f' (and {more} more)' if more > 0 else ''}"
        )
    causes = ", ".join(f"{k} ×{v}" for k, v in result.retried_because.most_common())
    lines.append(
        f"requests: {result.requests}, retries: {result.retries}"
        + (f" ({causes})" if causes else "")
    )
    return "\n".join(lines)


@main.command()
@url_option
@click.option("--json", "as_json", is_flag=True, help="The raw JSON of GET /stats")
@click.option("--latest", type=click.IntRange(0, 1000), default=0, help="Also the latest N tweets")
def stats(url: str, as_json: bool, latest: int) -> None:
    """Both stores' counts (GET /stats)."""
    body = asyncio.run(_stats(url, latest))
    click.echo(json.dumps(body, ensure_ascii=False, indent=2) if as_json else render_stats(body))


async def _stats(url: str, latest: int) -> dict[str, Any]:
    async with AsyncClient(url) as client:
        try:
            return await client.stats(latest)
        except WeatherClientError as exc:
            raise click.ClickException(str(exc)) from None


def render_stats(body: dict[str, Any]) -> str:
    """The stores side by side: total, conflicts, then every breakdown."""
    names = [n for n in body if isinstance(body[n], dict)]
    lines = ["".ljust(24) + "".join(n.rjust(12) for n in names)]
    for name in names:
        if "error" in body[name]:
            lines.append(f"{name}: cannot be read: {body[name]['error']}")
    readable = [n for n in names if "error" not in body[n]]

    def row(label: str, values: list[Any]) -> str:
        return label[:24].ljust(24) + "".join(str(v).rjust(12) for v in values)

    for key in ("total", "conflicts", "parked_dead_letters"):
        lines.append(row(key, [body[n].get(key, 0) for n in readable]))
    for key in ("by_country", "by_weather", "by_country_weather", "skipped"):
        fields = sorted({f for n in readable for f in body[n].get(key, {})})
        if fields:
            lines.append(f"{key}:")
            lines += [
                row(f"  {f}", [body[n].get(key, {}).get(f, 0) for n in readable]) for f in fields
            ]
    for name in readable:
        for tweet in body[name].get("latest", []):
            lines.append(f"{name} latest: {json.dumps(tweet, ensure_ascii=False)}")
    return "\n".join(lines)


@main.command(name="verify")
@url_option
@click.option("--wait", type=click.FloatRange(0), default=60.0, show_default=True,
              help="Seconds to wait for the backlog to drain and the stores to agree")  # fmt: skip
@click.option("--json", "as_json", is_flag=True)
def verify_command(url: str, wait: float, as_json: bool) -> None:
    """Whether Redis and Valkey counted the same: waits (bounded) until the brokers'
    backlogs drained, then compares totals and every breakdown. Exits 1 naming each
    difference."""
    verdict = asyncio.run(_verify(url, wait))
    if as_json:
        report = {"ok": verdict.ok, "problems": verdict.problems(), "waited_s": verdict.waited_s}
        click.echo(json.dumps(report, indent=2))
    else:
        click.echo(render_verdict(verdict))
    sys.exit(0 if verdict.ok else 1)


async def _verify(url: str, wait: float) -> Verdict:
    async with AsyncClient(url) as client:
        return await verify(client, wait_s=wait)


def render_verdict(verdict: Verdict) -> str:
    if verdict.ok:
        total = verdict.stats.get("redis", {}).get("total")
        return (
            f"ok: both stores counted {total} tweets alike (checked after {verdict.waited_s:.1f} s)"
        )
    return "\n".join(["the stores do not agree:", *(f"  {p}" for p in verdict.problems())])


INTO_HELP = "The store that may be short (counted from the other)"
MIN_TTL_HELP = "Leave alone markers expiring within this many seconds [server: 43200]"
CLEAR_HELP = "With --prefix: the prefix covers every skipped tweet, so clear the skip report"
TOKEN_HELP = "The Ray cluster's token [RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token]"


@main.command()
@url_option
@click.option("--into", type=click.Choice(["redis", "valkey", "both"]), default="both",
              show_default=True, help=INTO_HELP)  # fmt: skip
@click.option("--prefix", default="", help="Only ids starting with this")
@click.option("--apply", is_flag=True, help="Count what the dry run lists (default: dry run)")
@click.option("--min-ttl", type=click.IntRange(0), default=None, help=MIN_TTL_HELP)
@click.option("--clear-skip-report", is_flag=True, help=CLEAR_HELP)
@click.option("--token-file", type=click.Path(dir_okay=False), default=None, help=TOKEN_HELP)
@click.option("--json", "as_json", is_flag=True, help="The report as JSON")
def repair(url: str, into: str, prefix: str, apply: bool, min_ttl: int | None,
           clear_skip_report: bool, token_file: str | None, as_json: bool) -> None:  # fmt: skip
    """Count into a short store the tweets the other store counted (by their id markers).

    A dry run unless --apply: it lists, per direction, the ids the target lacks and their
    counts by country and weather. Applying sets each missing marker and counts its tweet
    once (a second run changes nothing); an id holding another tweet is a conflict, named
    and left as it is. The skip report of a store made whole is cleared. Exits 1 when
    something was left alone."""
    try:
        token = find_token(token_file)
    except RepairError as exc:
        raise click.UsageError(str(exc)) from None
    params = query(into, prefix, min_ttl, clear_skip_report)
    report = asyncio.run(_repair(url, token, params, apply))
    text = json.dumps(report, ensure_ascii=False, indent=2) if as_json else render_repair(report)
    click.echo(text)
    sys.exit(exit_code(report))


def repair_http(url: str) -> httpx.AsyncClient:
    """The HTTP client of ``weather repair`` (the tests give theirs a fake transport)."""
    return httpx.AsyncClient(base_url=url.rstrip("/"))


async def _repair(url: str, token: str, params: dict[str, str], apply: bool) -> dict[str, Any]:
    progress = ProgressLine(lambda text, nl: click.echo(text, nl=nl, err=True), sys.stderr.isatty())
    async with repair_http(url) as http:
        try:
            return await run_repair(http, token, params, apply, on_progress=progress)
        except RepairError as exc:
            raise click.ClickException(str(exc)) from None
        finally:
            progress.end()
